"""Data-parallel training with 2 real CPU processes (gloo): torchrun, plain env:// launch, failures, resume.

The 2-process runs use ``train.batch_size=1`` and are compared with 1 process at ``batch_size=2``: the same
global batch of the same samples (per-sample seeding), so the loss curves agree to float rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support.processes import children_by_rank, free_port, launcher_env, wait_for

from medattn.config import save_config
from medattn.engine.checkpoint import load_checkpoint
from medattn.engine.distributed import DistContext, env_ranks, parse_shard, shard
from medattn.engine.trainer import read_log, train
from medattn.errors import ConfigError

SUPPORT = Path(__file__).parents[1] / "support"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SETTINGS = ("data.val_fraction=0.5", "train.scheduler=constant")  # 2 training + 2 validation cases


def _run(cmd: list[str], timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launcher_env(), **kw)


@pytest.fixture(scope="module")
def two_proc(synth3d, tmp_path_factory, tiny):
    """A 2-epoch run of 2 processes (batch 1 each) under torchrun, each process's writes audited."""
    root = tmp_path_factory.mktemp("ddp")
    config = root / "config.yaml"
    save_config(tiny(synth3d, root / "run", *SETTINGS, "train.batch_size=1"), config)
    proc = _run([*TORCHRUN, "--log-dir", str(root / "logs"), "--redirects", "3",
                 str(SUPPORT / "audited_cli.py"), str(root / "run"), str(root / "audit"), "train", str(config)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def one_proc(synth3d, tmp_path_factory, tiny):
    """The same data and global batch on 1 process (batch 2), for 3 epochs."""
    return train(tiny(synth3d, tmp_path_factory.mktemp("one") / "run", *SETTINGS, "train.epochs=3"), progress=False)


def test_two_processes_follow_the_one_process_loss_curve(two_proc, one_proc):
    two, one = read_log(two_proc / "run"), one_proc.history[:2]
    assert [r["epoch"] for r in two] == [1, 2]
    assert [r["train_loss"] for r in two] == pytest.approx([r["train_loss"] for r in one], rel=1e-5)
    # Validation: each rank predicts one of the 2 cases; the reduced mean equals the 1-process mean.
    assert [r["val_dice"] for r in two] == pytest.approx([r["val_dice"] for r in one], abs=1e-3)
    assert two[1]["train_loss"] != two[0]["train_loss"]


def test_only_rank_0_writes_and_draws_progress(two_proc):
    rank0 = json.loads((two_proc / "audit" / "rank0.json").read_text())
    rank1 = json.loads((two_proc / "audit" / "rank1.json").read_text())
    assert rank1 == []
    renamed = {Path(p).relative_to(two_proc / "run").as_posix() for e, p in rank0 if e == "os.rename"}
    assert renamed == {"config.yaml", "splits.json", "log.csv", "train_summary.json", "checkpoints/last.pt",
                       "checkpoints/best.pt"}
    logs = {int(p.parent.name): p.parent for p in (two_proc / "logs").rglob("stderr.log")}
    assert "epoch 1/2" in (logs[0] / "stderr.log").read_text()
    assert "run folder:" in (logs[0] / "stdout.log").read_text()
    assert (logs[1] / "stderr.log").read_text() == "" and (logs[1] / "stdout.log").read_text() == ""


def test_resume_with_one_process_continues_a_two_process_run(two_proc, one_proc, tmp_path, synth3d, tiny):
    shutil.copytree(two_proc / "run", tmp_path / "run")
    resumed = train(tiny(synth3d, tmp_path / "run", *SETTINGS, "train.epochs=3"), resume=True, progress=False)
    log = read_log(tmp_path / "run")
    assert [r["train_loss"] for r in log[:2]] == [r["train_loss"] for r in read_log(two_proc / "run")]
    assert log[2]["train_loss"] == pytest.approx(one_proc.history[2]["train_loss"], rel=1e-5)
    a, b = load_checkpoint(resumed.last_checkpoint), load_checkpoint(one_proc.last_checkpoint)
    assert a["train_state"]["epoch"] == 3 and not any(k.startswith("module.") for k in a["state_dict"])
    for k, v in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][k], v, rtol=1e-4, atol=1e-5)


def test_one_step_leaves_identical_parameters_on_every_rank(tmp_path):
    proc = _run([*TORCHRUN, str(SUPPORT / "ddp_one_step.py"), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["local_loss"] != r1["local_loss"]  # different data on each rank
    assert r0["mean_loss"] == r1["mean_loss"] == pytest.approx((r0["local_loss"] + r1["local_loss"]) / 2)
    for k in r0["after"]:
        assert torch.equal(r0["before"][k], r1["before"][k]), k  # rank 0's initial weights were broadcast
        assert torch.equal(r0["after"][k], r1["after"][k]), k
    assert any(not torch.equal(r0["before"][k], r0["after"][k]) for k in r0["after"])


def test_torchrun_infer_shards_by_rank(two_proc, synth3d, tmp_path):
    out = tmp_path / "pred"
    proc = _run([*TORCHRUN, "-m", "medattn", "infer", str(two_proc / "run" / "checkpoints" / "last.pt"),
                 str(synth3d.parent / "imagesTs"), "-o", str(out), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("1 predicted, 0 skipped") == 2  # 2 test cases, one per rank
    cases = sorted(p.stem for p in out.glob("*.json") if p.name != "infer_settings.json")
    assert len(cases) == 2 and all((out / f"{c}.nii.gz").is_file() for c in cases)


def _long_run(root: Path, synth3d: Path, tiny) -> Path:
    config = root / "config.yaml"
    save_config(tiny(synth3d, root / "run", *SETTINGS, "train.batch_size=1", "train.epochs=500",
                     "train.dist_timeout_s=10"), config)
    return config


def test_a_killed_rank_stops_torchrun_with_an_error(tmp_path, synth3d, tiny):
    config = _long_run(tmp_path, synth3d, tiny)
    proc = subprocess.Popen([*TORCHRUN, "-m", "medattn", "train", str(config), "--no-progress"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=launcher_env())
    try:
        wait_for(lambda: (tmp_path / "run" / "log.csv").exists() or proc.poll() is not None, 180, "epoch 1")
        ranks = children_by_rank(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode != 0 and time.monotonic() - t0 < 90
    assert "rank      : 1" in out and "SIGKILL" in out, out[-3000:]  # torchrun names the dead rank
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]["epoch"] >= 1


def test_a_hung_rank_times_out_with_a_one_line_error(tmp_path, synth3d, tiny):
    """Launched like srun would (env://, no torchrun): a stopped rank makes rank 0 fail after the timeout."""
    config = _long_run(tmp_path, synth3d, tiny)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "medattn", "train", str(config), "--no-progress"], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=launcher_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                               MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in (0, 1)]
    try:
        wait_for(lambda: (tmp_path / "run" / "log.csv").exists() or procs[0].poll() is not None, 180, "epoch 1")
        os.kill(procs[1].pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("medattn:")]
    assert len(lines) == 1 and "rank 0 of 2: stopped: another process did not answer within " \
        "train.dist_timeout_s=10 s" in lines[0] and "last.pt is kept" in lines[0], err[-3000:]
    assert 9 <= waited < 90


def test_rank_environment_and_shards():
    assert env_ranks({}) == (0, 1, 0)
    assert env_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert env_ranks({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == (0, 1, 0)  # no master
    assert env_ranks({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"}) == (5, 8, 1)
    with pytest.raises(ConfigError, match="RANK=4, WORLD_SIZE=4"):
        env_ranks({"RANK": "4", "WORLD_SIZE": "4"})
    assert shard(list(range(7)), 1, 3) == [1, 4]
    assert sorted(x for i in range(3) for x in shard(list(range(7)), i, 3)) == list(range(7))
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "a/b", "-1/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert DistContext(rank=1, world_size=2).describe() == "rank 1 of 2" and not DistContext(rank=1).is_main


def test_gradient_accumulation_equals_the_larger_batch(synth3d, tmp_path, tiny, one_proc):
    acc = train(tiny(synth3d, tmp_path / "acc", *SETTINGS, "train.epochs=2", "train.batch_size=1",
                     "train.grad_accumulation=2"), progress=False)
    assert [r["train_loss"] for r in acc.history] == pytest.approx(
        [r["train_loss"] for r in one_proc.history[:2]], rel=1e-6)


def test_sync_batchnorm_needs_cuda_with_several_processes():
    from medattn.engine.distributed import wrap_model
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        wrap_model(net, DistContext(rank=0, world_size=2), sync_batchnorm=True)
    assert wrap_model(net, DistContext(), sync_batchnorm=True) is net  # one process: nothing to synchronise
