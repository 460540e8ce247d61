"""Planted-signal bags: shapes, labels from the planted instances, witness rates, separable positives,
survival tied to the positives, determinism, real HDF5 bags on disk and ``medattn synth --kind bags``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from medattn.data.bag_synth import PATCH_SIZE, SIGNAL_SCALE, planted_bags, signal_direction, write_planted_bags
from medattn.data.bags import read_bag
from medattn.data.slide_table import read_slide_table
from medattn.errors import ConfigError, DataError


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: over pairs where the earlier time is an event, how often the earlier one has higher risk."""
    concordant = comparable = 0.0
    for i in np.flatnonzero(event):
        later = time > time[i]
        comparable += later.sum()
        concordant += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    return concordant / comparable


@pytest.fixture(scope="module")
def bags():
    return planted_bags(n_bags=120, n_patches=(60, 200), dim=16, positive_fraction=0.5,
                        witness_rate=(0.05, 0.2), signal=1.0, seed=2)


def test_shapes_and_dtypes(bags):
    assert len(bags) == 120 and bags.labels.shape == bags.times.shape == bags.events.shape == (120,)
    assert bags.slide_ids[:2] == ["slide_000", "slide_001"] and len(set(bags.patient_ids)) == 120
    for feats, xy, inst in zip(bags.features, bags.coords, bags.instance_labels, strict=True):
        n = len(feats)
        assert 60 <= n <= 200
        assert feats.shape == (n, 16) and feats.dtype == np.float32
        assert xy.shape == (n, 2) and xy.dtype == np.int64 and inst.shape == (n,) and inst.dtype == bool
        assert (xy % PATCH_SIZE == 0).all() and len(np.unique(xy, axis=0)) == n  # distinct grid cells
    assert len({len(f) for f in bags.features}) > 20  # bag sizes vary


def test_labels_follow_the_planted_instances_and_witness_rates_are_in_range(bags):
    has_positives = np.array([inst.any() for inst in bags.instance_labels])
    np.testing.assert_array_equal(bags.labels, has_positives.astype(int))
    assert bags.labels.sum() == 60  # round(0.5 * 120)
    rates = bags.witness_fractions
    assert ((rates[bags.labels == 1] >= 0.05) & (rates[bags.labels == 1] <= 0.2)).all()
    assert (rates[bags.labels == 0] == 0).all()
    assert rates[bags.labels == 1].max() - rates[bags.labels == 1].min() > 0.1  # spread over the range


def test_positives_are_separable_along_the_signal_direction(bags):
    u = signal_direction(16, seed=2)
    np.testing.assert_allclose(bags.direction, u)
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-6)
    proj = np.concatenate([f @ u for f in bags.features])
    positive = np.concatenate(bags.instance_labels)
    assert proj[positive].mean() == pytest.approx(SIGNAL_SCALE, abs=0.2)
    assert proj[~positive].mean() == pytest.approx(0.0, abs=0.05)
    assert auc(proj, positive) > 0.95  # Φ(3/√2) ≈ 0.98
    noise = planted_bags(n_bags=40, dim=16, signal=0.0, seed=2)
    proj0 = np.concatenate([f @ u for f in noise.features])
    assert 0.45 < auc(proj0, np.concatenate(noise.instance_labels)) < 0.55


def test_positives_form_a_spatial_cluster(bags):
    def mean_pair_distance(xy: np.ndarray) -> float:
        return float(np.linalg.norm(xy[:, None] - xy[None], axis=2).mean())

    ratios = [mean_pair_distance(xy[inst]) / mean_pair_distance(xy)
              for xy, inst in zip(bags.coords, bags.instance_labels, strict=True) if inst.sum() >= 5]
    assert len(ratios) > 30 and np.median(ratios) < 0.5


def test_survival_times_track_the_positives(bags):
    c = harrell_c(bags.times, bags.events, bags.witness_fractions)
    assert c > 0.7
    assert 0.12 < 1 - bags.events.mean() < 0.38  # about 25 % censored
    assert (bags.times > 0).all()
    pos, neg = bags.labels == 1, bags.labels == 0
    assert np.median(bags.times[pos]) < np.median(bags.times[neg])


def test_same_seed_same_bags_and_other_seed_other_bags():
    a, b = planted_bags(n_bags=10, seed=5), planted_bags(n_bags=10, seed=5)
    c = planted_bags(n_bags=10, seed=6)
    for x, y in zip(a.features + a.instance_labels, b.features + b.instance_labels, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.times, b.times)
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.features, c.features, strict=True))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match="witness_rate must be"):
        planted_bags(witness_rate=(0.3, 0.1))
    with pytest.raises(ConfigError, match="n_patches must be"):
        planted_bags(n_patches=(0, 10))
    with pytest.raises(ConfigError, match="positive_fraction must be in"):
        planted_bags(positive_fraction=1.5)


def test_write_planted_bags_writes_real_hdf5_bags_and_tables(tmp_path):
    bags = planted_bags(n_bags=6, n_patches=(20, 40), dim=8, seed=1)
    csv_path = write_planted_bags(tmp_path / "planted", bags)
    out = csv_path.parent
    assert csv_path == out / "slides.csv"
    for i, sid in enumerate(bags.slide_ids):
        bag = read_bag(out / "bags" / f"{sid}.h5")
        np.testing.assert_array_equal(bag.features, bags.features[i])
        np.testing.assert_array_equal(bag.coords, bags.coords[i])
        assert bag.attrs["slide_id"] == sid and bag.attrs["patch_size"] == PATCH_SIZE
        assert bag.attrs["encoder"] == "planted" and bag.attrs["mpp"] == 0.5
    table = read_slide_table(csv_path)
    assert table.classes == ["negative", "positive"]
    assert [r.label for r in table.records] == bags.labels.tolist()
    survival = read_slide_table(csv_path, task="survival")
    np.testing.assert_allclose([r.time for r in survival.records], bags.times)
    assert [r.event for r in survival.records] == bags.events.tolist()
    with open(out / "instances.csv", newline="") as fh:
        inst = list(csv.DictReader(fh))
    assert len(inst) == sum(len(f) for f in bags.features)
    for i, sid in enumerate(bags.slide_ids):
        mine = [r for r in inst if r["slide_id"] == sid]
        assert [int(r["patch_index"]) for r in mine] == list(range(len(bags.features[i])))
        assert [r["positive"] == "1" for r in mine] == bags.instance_labels[i].tolist()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.h5").write_bytes(b"")
    with pytest.raises(DataError, match="other: folder is not empty"):
        write_planted_bags(tmp_path / "other", bags)


def test_cli_synth_kind_bags(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "medattn", "synth", str(out), "--kind", "bags", "--n-bags", "8",
                           "--n-patches", "10", "20", "--dim", "4", "--witness-rate", "0.1", "0.3", "--signal", "2",
                           "--positive-fraction", "0.25", "--seed", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    expected = planted_bags(n_bags=8, n_patches=(10, 20), dim=4, positive_fraction=0.25, witness_rate=(0.1, 0.3),
                            signal=2.0, seed=3)
    assert sorted(p.name for p in (out / "bags").iterdir()) == [f"{s}.h5" for s in expected.slide_ids]
    np.testing.assert_array_equal(read_bag(out / "bags" / "slide_007.h5").features, expected.features[7])
    with open(out / "slides.csv", newline="") as fh:
        assert sum(r["label"] == "positive" for r in csv.DictReader(fh)) == 2
    bad = subprocess.run([sys.executable, "-m", "medattn", "synth", str(tmp_path / "bad"), "--kind", "bags",
                          "--witness-rate", "0", "0.5"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("medattn: error: witness_rate must be (low, high) with 0 < low")
