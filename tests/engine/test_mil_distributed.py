"""MIL training with 2 real CPU processes (torchrun, gloo): same loss curve as 1 process, one writer, synced weights.

2 processes × ``batch_size=4`` are compared with 1 process × ``batch_size=8``: the same global batches of
the same bags (the epoch permutation depends only on the seed and epoch; every fold has an even number
of training and validation bags), and a per-bag mean loss, so the curves agree to float rounding.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.processes import launcher_env

from medattn.data.bag_synth import planted_bags, write_planted_bags

SUPPORT = Path(__file__).parents[1] / "support"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

ONE_STEP = '''
import sys
from pathlib import Path
import torch
from medattn.data.bag_dataset import BagDataset, collate_bags
from medattn.engine.distributed import distributed_context, unwrap, wrap_model
from medattn.engine.mil_epoch import MilObjective
from medattn.engine.mil_losses import class_weights
from medattn.engine.step import Stepper
from medattn.models.abmil import GatedABMIL

with distributed_context("cpu", timeout_s=60) as ctx:
    torch.manual_seed(ctx.rank)  # different initial weights on purpose: DDP must broadcast rank 0's
    net = GatedABMIL(in_dim=16, embed_dim=8, attention_dim=4, dropout=0.0)
    model = wrap_model(net, ctx)
    before = {k: v.clone() for k, v in unwrap(model).state_dict().items()}
    g = torch.Generator().manual_seed(100 + ctx.rank)
    feats = [torch.randn(n, 16, generator=g) for n in (7, 12)]
    ds = BagDataset(feats, {"label": [ctx.rank, 1]})
    objective = MilObjective("classification", weights=class_weights([0, 1, 1], 2), aem_lambda=0.1)
    local = []

    def loss_of(batch):
        loss = objective(model(batch["features"], batch["mask"]), batch)
        local.append(float(loss))
        return loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stepper = Stepper(model, opt, torch.amp.GradScaler("cpu", enabled=False), ctx)
    mean = stepper.epoch([collate_bags([ds[0], ds[1]])], 1, loss_of, lambda loss, step: RuntimeError(loss))
    torch.save({"before": before, "after": unwrap(model).state_dict(), "local": local[0], "mean": mean[0]},
               Path(sys.argv[1]) / f"rank{ctx.rank}.pt")
'''


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=launcher_env())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The demo config on 40 planted bags: 2 processes (batch 4 each) under torchrun, and 1 process (batch 8)."""
    root = tmp_path_factory.mktemp("mil_ddp")
    data = write_planted_bags(root / "data", planted_bags(40, (60, 120), 16, seed=2))
    common = ["--set", f"data.slides_csv={data}", "--set", f"data.bags_dir={data.parent / 'bags'}",
              "--set", "train.folds=2", "--set", "train.epochs=3", "--set", "train.val_fraction=0.2",
              "--set", "train.max_patches=50", "--no-progress"]
    two = _run([*TORCHRUN, "--log-dir", str(root / "logs"), "--redirects", "3", str(SUPPORT / "audited_cli.py"),
                str(root / "two"), str(root / "audit"), "train", "mil_demo", *common,
                "--set", f"output_dir={root / 'two'}", "--set", "train.batch_size=4"])
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = _run([sys.executable, "-m", "medattn", "train", "mil_demo", *common, "--set", f"output_dir={root / 'one'}",
                "--set", "train.batch_size=8"])
    assert one.returncode == 0, one.stderr[-3000:]
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_two_processes_follow_the_one_process_curves_and_predictions(runs):
    splits = json.loads((runs / "one" / "splits.json").read_text())["folds"]
    assert all(len(f["train"]) % 2 == 0 and len(f["val"]) % 2 == 0 for f in splits)  # the premise above
    assert (runs / "two" / "splits.json").read_text() == (runs / "one" / "splits.json").read_text()
    for fold in (0, 1):
        two, one = (_rows(runs / r / f"fold_{fold}" / "seed_0" / "log.csv") for r in ("two", "one"))
        assert len(two) == len(one) == 3
        for key in ("train_loss", "val_loss", "val_score"):
            assert [float(r[key]) for r in two] == pytest.approx([float(r[key]) for r in one], rel=1e-4, abs=1e-6)
        assert float(two[2]["train_loss"]) != float(two[0]["train_loss"])
    two, one = _rows(runs / "two" / "predictions.csv"), _rows(runs / "one" / "predictions.csv")
    assert [r["slide_id"] for r in two] == [r["slide_id"] for r in one] and len(two) == 40
    assert [float(r["p_positive"]) for r in two] == pytest.approx([float(r["p_positive"]) for r in one], abs=1e-4)


def test_only_rank_0_writes_and_reports(runs):
    assert json.loads((runs / "audit" / "rank1.json").read_text()) == []
    renamed = {Path(p).relative_to(runs / "two").as_posix()
               for e, p in json.loads((runs / "audit" / "rank0.json").read_text()) if e == "os.rename"}
    assert {"config.yaml", "splits.json", "predictions.csv", "metrics.csv", "summary.json",
            "fold_1/seed_0/best.pt", "fold_1/seed_0/last.pt", "fold_1/seed_0/log.csv"} <= renamed
    logs = {int(p.parent.name): p.parent for p in (runs / "logs").rglob("stdout.log")}
    assert "mean ± std" in (logs[0] / "stdout.log").read_text()
    assert (logs[1] / "stdout.log").read_text() == "" and (logs[1] / "stderr.log").read_text() == ""


def test_one_step_leaves_identical_parameters_on_every_rank(tmp_path):
    script = tmp_path / "one_step.py"
    script.write_text(ONE_STEP)
    proc = _run([*TORCHRUN, str(script), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["local"] != r1["local"]  # different bags on each rank
    assert r0["mean"] == r1["mean"] == pytest.approx((r0["local"] + r1["local"]) / 2)
    for k in r0["after"]:
        assert torch.equal(r0["before"][k], r1["before"][k]), k
        assert torch.equal(r0["after"][k], r1["after"][k]), k
    assert any(not torch.equal(r0["before"][k], r0["after"][k]) for k in r0["after"])
