"""Multi-process runs on PyTorch's own distributed engine: process groups, ranks, wrapping, reduction.

Nothing here is specific to segmentation; any training loop (segmentation, MIL) becomes distributed by

1. running inside :func:`distributed_context` (joins the process group that ``torchrun`` or ``srun``
   describes through environment variables; a single process needs no group and no variables),
2. wrapping its model with :func:`wrap_model` and saving :func:`unwrap` ``(model).state_dict()``,
3. drawing its batches from a ``DistributedSampler`` (each rank a disjoint shard of one permutation),
4. averaging what it logs with :func:`all_mean` / :func:`all_sum`, and writing only where
   :attr:`DistContext.is_main`,
5. running its steps under :func:`communication_errors`, which turns a dead or hung peer into a
   one-line :class:`~medattn.errors.TrainingError`.

Environment (set by ``torchrun``; by hand or from SLURM otherwise): ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. Under ``srun`` without torchrun, ``SLURM_PROCID``,
``SLURM_NTASKS`` and ``SLURM_LOCALID`` stand in for the first three when ``MASTER_ADDR`` is set.
Backends: NCCL for CUDA devices, gloo for CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medattn.errors import ConfigError, TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = 1800.0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and draws progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    def describe(self) -> str:
        """``"rank 1 of 4"`` (for messages)."""
        return f"rank {self.rank} of {self.world_size}"


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}={env[key]!r} is not an integer") from None


def env_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables, else SLURM's, else ``(0, 1, 0)``.

    SLURM variables count only when ``MASTER_ADDR`` is set too: an ``srun`` of several independent
    single-process jobs must not turn into one distributed run by accident.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        world = _int_env(env, "WORLD_SIZE")
        rank = _int_env(env, "RANK") if "RANK" in env else 0
        local = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    elif "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        world, rank = _int_env(env, "SLURM_NTASKS"), _int_env(env, "SLURM_PROCID")
        local = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    else:
        return 0, 1, 0
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent process ranks in the environment: RANK={rank}, WORLD_SIZE={world}, "
                          f"LOCAL_RANK={local}")
    return rank, world, local


def device_for(setting: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device of this process: ``"auto"``/``"cuda"`` → ``cuda:LOCAL_RANK`` (when CUDA exists), else CPU.

    An explicit index (``"cuda:1"``) is kept for a single process; with several processes each
    takes the GPU of its local rank, so an explicit index is refused (set ``CUDA_VISIBLE_DEVICES``).
    """
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(setting)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: '{setting}' requested but CUDA is not available")
        if dev.index is not None and world_size > 1:
            raise ConfigError(f"train.device: '{setting}' names one GPU, but {world_size} processes run; use "
                              "'cuda' (each process takes the GPU of its LOCAL_RANK)")
        if dev.index is None:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    return dev


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_context(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Join the process group described by the environment (if any) for the duration of the block.

    A single process (no launcher variables) gets a :class:`DistContext` of world size 1 and no
    group. A group that is already initialised (by the caller) is used and left open; one created
    here is destroyed on exit. ``timeout_s`` bounds every collective: a peer that dies or hangs makes
    the others fail after at most this long instead of waiting forever.
    """
    rank, world, local = env_ranks()
    dev = device_for(device, local, world)
    ctx = DistContext(rank, world, local, dev, float(timeout_s))
    if world == 1:
        yield ctx
        return
    if dist.is_initialized():
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ConfigError(f"the open process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                              f"does not match the environment ({ctx.describe()})")
        yield ctx
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend_for(dev), init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise TrainingError(f"{ctx.describe()}: cannot join the process group at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {_first_line(e)}") from e
    try:
        yield ctx
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, sync_batchnorm: bool = False,
               find_unused_parameters: bool = False) -> nn.Module:
    """``model`` on ``ctx.device``, wrapped in DistributedDataParallel when several processes run.

    DDP broadcasts rank 0's parameters and buffers at construction and averages gradients during
    ``backward``, so every rank holds identical parameters after every step. ``sync_batchnorm``
    converts BatchNorm layers to SyncBatchNorm (batch statistics over all ranks; CUDA only).
    """
    if sync_batchnorm and ctx.distributed:
        if ctx.device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: SyncBatchNorm runs on CUDA devices only (this run uses "
                              f"{ctx.device}); set train.sync_batchnorm=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (what checkpoints store, so any world size can load them)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync()`` (skip the gradient all-reduce of a non-final accumulation step), else a no-op."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()


def all_sum(values: torch.Tensor | Sequence[float], ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks of a float tensor or sequence (float64 on CPU, any shape)."""
    t = torch.as_tensor(values, dtype=torch.float64).detach().clone()
    if not ctx.distributed:
        return t
    # NCCL reduces CUDA tensors only; gloo CPU ones.
    work = t.to(ctx.device) if ctx.device.type == "cuda" else t
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.cpu()


def all_mean(value: float | torch.Tensor, ctx: DistContext) -> float:
    """Mean over ranks of one number (e.g. each rank's mean loss over equal-sized shards)."""
    return float(all_sum([float(value)], ctx)[0]) / ctx.world_size


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Every ``count``-th item starting at ``index``: ``count`` disjoint shards covering ``items``."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    return list(items[index::count])


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → ``(i, n)`` with ``0 <= i < n`` (the ``--shard`` option; shards are numbered from 0)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: {text!r} is not of the form i/n (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard: {text!r} needs n >= 1 and 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def placement(shard_spec: str | tuple[int, int] | None, device: str = "auto",
              env: Mapping[str, str] | None = None) -> tuple[tuple[int, int] | None, str]:
    """Which shard of the cases this process predicts, and on which device (for ``medattn infer``).

    An explicit ``shard_spec`` (``"i/n"`` or ``(i, n)``) wins; otherwise, under a launcher with several
    processes, the shard is ``(RANK, WORLD_SIZE)`` and ``"auto"``/``"cuda"`` become ``cuda:LOCAL_RANK``.
    A single process without ``shard_spec`` predicts everything (``None``).
    """
    rank, world, local = env_ranks(env)
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    if isinstance(shard_spec, str):
        return parse_shard(shard_spec), device
    if shard_spec is not None:
        return parse_shard(f"{shard_spec[0]}/{shard_spec[1]}"), device
    return ((rank, world) if world > 1 else None), device


_MARKERS = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "watchdog",
            "broken pipe", "socket")


def is_communication_error(exc: BaseException) -> bool:
    """True for an error raised by a collective because a peer died, hung or became unreachable."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MARKERS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def communication_errors(ctx: DistContext, kept: Path | None = None) -> Iterator[None]:
    """Turn a failed collective (dead or hung peer) into a one-line :class:`TrainingError`.

    ``kept``: the checkpoint that survives (named in the message, so the user knows where to resume).
    """
    try:
        yield
    except Exception as e:
        if not ctx.distributed or not is_communication_error(e):
            raise
        timed_out = "timed out" in str(e).lower() or "timeout" in str(e).lower()
        why = (f"another process did not answer within train.dist_timeout_s={ctx.timeout_s:g} s (hung or dead)"
               if timed_out else "another process of the run died or became unreachable")
        keep = f"; {kept} is kept, continue with --resume" if kept is not None and kept.exists() else ""
        raise TrainingError(f"{ctx.describe()}: stopped: {why}{keep} [{_first_line(e)}]") from e
