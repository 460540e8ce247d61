"""Counterfactual engines: a bag model's outputs for many modified bags ("candidates").

Every counterfactual experiment asks the same question many times: what does the model output for
this bag with some patches removed, or with some patches added from another slide? The patches a
candidate may contain form a *pool* of P patches (the slide's own N patches, then any donor patches
for transplants), and a candidate is a boolean mask over the pool. An engine answers three queries,
all returning outputs (probabilities or risk, never raw logits) as float64 numpy arrays ``[M, K]``:

- :meth:`Engine.outputs_for_sets` (``sets [M, P]`` bool): arbitrary candidate bags;
- :meth:`Engine.outputs_after_removal` (``current [P]``, ``candidates [M]``): the current bag
  minus each candidate patch alone (one greedy round);
- :meth:`Engine.outputs_after_addition`: the current bag plus each candidate patch alone.

Three engines give the same answers (to float tolerance):

- ``loop`` (:class:`LoopEngine`): one forward pass per candidate, in a Python loop. The reference, and
  what HIPPO's public code does;
- ``generic`` (:class:`GenericEngine`): any bag model ``model(x [B, n, D], mask [B, n]) → {"logits"}``;
  candidates go through the model in padded, masked batches sized to a memory budget;
- ``exact`` (:class:`medattn.explain.exact.ExactEngine`): attention-pooling models, in closed form.

:func:`make_engine` picks ``exact`` when the model exposes attention pooling, else ``generic``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from medattn.errors import ConfigError, DataError

#: logits [M, C] → outputs [M, K] (``MilModel.outputs``: probabilities or risk)
OutputsFn = Callable[[Tensor], Tensor]
ENGINES = ("auto", "exact", "generic", "loop")


def model_logits(result: object) -> Tensor:
    """The logits of a bag model's forward result (a dict with ``"logits"``, or the tensor itself)."""
    if isinstance(result, dict):
        return result["logits"]
    if isinstance(result, Tensor):
        return result
    raise TypeError(f"a bag model must return a dict with 'logits' or a tensor, got {type(result).__name__}")


class Engine(ABC):
    """Outputs of a bag model for candidate bags drawn from a pool of P patches (see the module doc).

    Attributes:
        name: ``"exact"``, ``"generic"`` or ``"loop"``.
        n_pool: P, the number of patches candidates are drawn from.
        n_outputs: K, the width of every output row.
    """

    name: str = ""
    n_pool: int
    n_outputs: int

    @abstractmethod
    def outputs_for_sets(self, sets: np.ndarray) -> np.ndarray:
        """Outputs ``[M, K]`` float64 for the candidate bags ``sets [M, P]`` (bool, True = in the bag)."""

    def _check_removal(self, current: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A removal round's arguments, checked: every candidate in the bag, and the bag not emptied."""
        current, candidates = self._check_round(current, candidates)
        if not current[candidates].all():
            raise DataError("a removal candidate is not in the current bag")
        if current.sum() < 2:
            raise DataError("removing a patch would leave an empty bag")
        return current, candidates

    def outputs_after_removal(self, current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Outputs ``[M, K]`` of ``current [P]`` with each of ``candidates [M]`` (pool indices) removed alone."""
        current, candidates = self._check_removal(current, candidates)
        sets = np.repeat(current[None], len(candidates), axis=0)
        sets[np.arange(len(candidates)), candidates] = False
        return self.outputs_for_sets(sets)

    def outputs_after_addition(self, current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Outputs ``[M, K]`` of ``current [P]`` with each of ``candidates [M]`` (pool indices) added alone."""
        current, candidates = self._check_round(current, candidates)
        if current[candidates].any():
            raise DataError("an addition candidate is already in the current bag")
        sets = np.repeat(current[None], len(candidates), axis=0)
        sets[np.arange(len(candidates)), candidates] = True
        return self.outputs_for_sets(sets)

    def outputs_for_prefixes(self, base: np.ndarray, order: np.ndarray, counts: list[int],
                             add: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """Outputs ``[len(counts), K]`` of ``base [P]`` with the first c of ``order`` added (or removed), for
        each c in ``counts`` (increasing), and the patches each step moved (a cumulative curve)."""
        sets, moved, prev = [], [], 0
        for c in counts:
            s = np.asarray(base, dtype=bool).copy()
            s[order[:c]] = add
            sets.append(s)
            moved.append(order[prev:c])
            prev = c
        return self.outputs_for_sets(np.stack(sets)), moved

    def _check_round(self, current: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        current = np.asarray(current, dtype=bool)
        candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
        if current.shape != (self.n_pool,):
            raise ValueError(f"current must be a [{self.n_pool}] bool mask, got shape {current.shape}")
        check_indices(candidates, self.n_pool)
        return current, candidates

    def _check_sets(self, sets: np.ndarray) -> np.ndarray:
        sets = np.asarray(sets, dtype=bool)
        if sets.ndim != 2 or sets.shape[1] != self.n_pool:
            raise ValueError(f"sets must be [M, {self.n_pool}] bool, got shape {sets.shape}")
        if sets.shape[0] and not sets.any(axis=1).all():
            raise DataError("a counterfactual bag would be empty (every patch removed)")
        return sets


def check_indices(indices: np.ndarray, n: int, what: str = "patch index") -> np.ndarray:
    """``indices`` as int64, or a one-line DataError naming the first one outside ``[0, n)``."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = indices[(indices < 0) | (indices >= n)]
    if bad.size:
        raise DataError(f"{what} {int(bad[0])} is out of range: the bag has {n} patches (0..{n - 1})")
    return indices


class _ModelEngine(Engine):
    """Shared setup of the engines that call the model: the pool features on the model's device."""

    def __init__(self, model: nn.Module, features: Tensor | np.ndarray, outputs_fn: OutputsFn) -> None:
        self.model = model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        self.features = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
        self.features = self.features.to(device=device, dtype=dtype)
        if self.features.dim() != 2 or self.features.shape[0] == 0:
            raise DataError(f"features must be a non-empty [P, D] array, got shape {tuple(self.features.shape)}")
        self.outputs_fn = outputs_fn
        self.n_pool = int(self.features.shape[0])
        with torch.no_grad():  # a one-patch bag tells the output width
            probe = model_logits(self.model(self.features[:1][None]))
        self.n_outputs = int(self.outputs_fn(probe.double()).shape[1])

    def _outputs(self, logits: Tensor) -> np.ndarray:
        return self.outputs_fn(logits.double()).cpu().numpy().astype(np.float64)


class LoopEngine(_ModelEngine):
    """One forward pass per candidate bag, in a Python loop (the reference engine; slow by design)."""

    name = "loop"

    @torch.no_grad()
    def outputs_for_sets(self, sets: np.ndarray) -> np.ndarray:
        sets = self._check_sets(sets)
        out = np.empty((sets.shape[0], self.n_outputs))
        for m, row in enumerate(sets):
            idx = torch.as_tensor(np.flatnonzero(row), device=self.features.device)
            out[m] = self._outputs(model_logits(self.model(self.features[idx][None])))[0]
        return out


class GenericEngine(_ModelEngine):
    """Any bag model: candidate bags in padded, masked batches of at most ``memory_mb`` of activations.

    A batch of B candidates of at most n patches costs about ``B · n · (D + width) · 4`` bytes, where
    ``width`` (default 4·D, room for the model's per-patch activations) is a rough per-patch size.
    """

    name = "generic"

    def __init__(self, model: nn.Module, features: Tensor | np.ndarray, outputs_fn: OutputsFn,
                 memory_mb: float = 512.0, width: int | None = None) -> None:
        super().__init__(model, features, outputs_fn)
        if memory_mb <= 0:
            raise ConfigError(f"memory_mb must be > 0, got {memory_mb}")
        dim = int(self.features.shape[1])
        self.bytes_per_patch = 4 * (dim + (width if width is not None else 4 * dim))
        self.memory_bytes = memory_mb * 2**20

    def batch_size(self, n_max: int) -> int:
        """Candidates per forward pass for candidate bags of at most ``n_max`` patches (at least 1)."""
        return max(1, int(self.memory_bytes // (n_max * self.bytes_per_patch)))

    @torch.no_grad()
    def outputs_after_removal(self, current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """One round of removals: the current bag, shared by all candidates, with one patch masked out."""
        current, candidates = self._check_removal(current, candidates)
        members = np.flatnonzero(current)
        x = self.features[torch.as_tensor(members, device=self.features.device)]  # [n, D]
        position = np.searchsorted(members, candidates)  # each candidate's column in x
        out = np.empty((len(candidates), self.n_outputs))
        step = self.batch_size(len(members))
        for start in range(0, len(candidates), step):
            pos = torch.as_tensor(position[start:start + step], device=x.device)
            mask = torch.ones(len(pos), len(members), dtype=torch.bool, device=x.device)
            mask[torch.arange(len(pos), device=x.device), pos] = False
            out[start:start + step] = self._outputs(model_logits(self.model(x.expand(len(pos), -1, -1), mask)))
        return out

    @torch.no_grad()
    def outputs_for_sets(self, sets: np.ndarray) -> np.ndarray:
        sets = self._check_sets(sets)
        out = np.empty((sets.shape[0], self.n_outputs))
        if sets.shape[0] == 0:
            return out
        device = self.features.device
        sizes = sets.sum(axis=1)
        order = np.argsort(-sizes, kind="stable")  # similar sizes share a batch: little padding
        start = 0
        while start < len(order):
            n_max = int(sizes[order[start]])
            rows = order[start:start + self.batch_size(n_max)]
            start += len(rows)
            chunk = torch.as_tensor(sets[rows], device=device)  # [B, P]
            # stable sort puts each candidate's patches first, in pool order: [B, n_max] gather indices
            idx = torch.argsort((~chunk).to(torch.int8), dim=1, stable=True)[:, :n_max]
            mask = torch.gather(chunk, 1, idx)  # [B, n_max], True = real patch
            x = self.features[idx]  # [B, n_max, D]
            out[rows] = self._outputs(model_logits(self.model(x, mask)))
        return out


def has_attention_pooling(model: nn.Module) -> bool:
    """Whether ``model`` exposes ``embed``, ``attention_logits``, ``pool`` and a ``classifier`` module."""
    return (all(callable(getattr(model, name, None)) for name in ("embed", "attention_logits", "pool"))
            and isinstance(getattr(model, "classifier", None), nn.Module))


def make_engine(model: nn.Module, features: Tensor | np.ndarray, outputs_fn: OutputsFn, engine: str = "auto",
                memory_mb: float = 512.0, numpy_outputs: Callable[[np.ndarray], np.ndarray] | None = None) -> Engine:
    """Build the engine named ``engine`` (``auto``, ``exact``, ``generic`` or ``loop``) over ``features [P, D]``.

    ``auto`` gives ``exact`` when the model has attention pooling (:func:`has_attention_pooling`) and
    passes the exact engine's self-check against its own forward pass, else ``generic``. Forcing
    ``exact`` on a model without attention pooling is a ConfigError. ``numpy_outputs`` (used by the exact
    engine) is ``outputs_fn`` in numpy (:func:`medattn.explain.exact.numpy_outputs`), for speed.
    """
    from medattn.explain.exact import ExactEngine  # exact builds on this module

    if engine not in ENGINES:
        raise ConfigError(f"unknown counterfactual engine '{engine}' (choose from {', '.join(ENGINES)})")
    if engine == "loop":
        return LoopEngine(model, features, outputs_fn)
    if engine == "generic":
        return GenericEngine(model, features, outputs_fn, memory_mb=memory_mb)
    if not has_attention_pooling(model):
        if engine == "exact":
            raise ConfigError(f"the exact counterfactual engine needs an attention-pooling model (embed, "
                              f"attention_logits, pool, classifier); {type(model).__name__} has none: "
                              f"use engine 'generic'")
        return GenericEngine(model, features, outputs_fn, memory_mb=memory_mb)
    try:
        return ExactEngine(model, features, outputs_fn, numpy_outputs=numpy_outputs)
    except ConfigError:
        if engine == "exact":
            raise
        return GenericEngine(model, features, outputs_fn, memory_mb=memory_mb)
