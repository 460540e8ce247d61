"""In-memory bag datasets: padded, masked batches; seeded patch subsampling; bags read from HDF5 once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medattn.data.bag_dataset import BagDataset, collate_bags, load_bag_features
from medattn.data.bags import write_bag
from medattn.errors import DataError
from medattn.models.abmil import GatedABMIL


def _bags(sizes=(5, 3, 8), dim=4):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def test_collate_pads_to_the_largest_bag_with_a_mask():
    feats = _bags()
    ds = BagDataset(feats, {"label": np.array([1, 0, 1]), "time": np.array([2.0, 3.0, 4.0])}, indices=[2, 1])
    batch = collate_bags([ds[0], ds[1]])
    assert batch["features"].shape == (2, 8, 4) and batch["mask"].shape == (2, 8)
    assert batch["mask"].sum(1).tolist() == [8, 3]
    assert torch.equal(batch["features"][1, :3], feats[1]) and batch["features"][1, 3:].abs().sum() == 0
    assert batch["index"].tolist() == [2, 1] and batch["label"].tolist() == [1, 0]
    assert batch["time"].tolist() == [4.0, 3.0] and batch["event"].tolist() == [0.0, 0.0]  # missing → zeros


def test_a_padded_batch_gives_each_bag_the_logits_it_gets_alone():
    feats = _bags()
    model = GatedABMIL(in_dim=4, embed_dim=8, attention_dim=4, dropout=0.0).eval()
    ds = BagDataset(feats)
    batch = collate_bags([ds[i] for i in range(3)])
    with torch.no_grad():
        together = model(batch["features"], batch["mask"])["logits"]
        alone = torch.cat([model(f.unsqueeze(0))["logits"] for f in feats])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_max_patches_draws_are_seeded_by_seed_epoch_and_bag_not_by_position():
    feats = _bags((50, 50, 4))
    a = BagDataset(feats, max_patches=10, seed=3)
    b = BagDataset(feats, indices=[1, 0], max_patches=10, seed=3)
    assert a[0]["features"].shape == (10, 4) and a[2]["features"].shape == (4, 4)  # small bags stay whole
    assert torch.equal(a[1]["features"], b[0]["features"])  # same bag, same draw wherever it sits
    first = a[0]["features"]
    a.set_epoch(1)
    assert not torch.equal(a[0]["features"], first)
    a.set_epoch(0)
    assert torch.equal(a[0]["features"], first)
    rows = {tuple(r.tolist()) for r in feats[0]}
    assert all(tuple(r.tolist()) in rows for r in first)  # real patches, no duplicates
    assert len({tuple(r.tolist()) for r in first}) == 10


def test_load_bag_features_reads_float32_and_rejects_mixed_dimensions(tmp_path):
    coords = np.zeros((6, 2), np.int64)
    write_bag(tmp_path / "a.h5", np.ones((6, 3), np.float64), coords, {"encoder": "handcrafted"})
    write_bag(tmp_path / "b.h5", np.ones((6, 5), np.float32), coords, {})
    feats, attrs = load_bag_features([str(tmp_path / "a.h5")])
    assert feats[0].dtype == torch.float32 and feats[0].shape == (6, 3) and attrs[0]["encoder"] == "handcrafted"
    with pytest.raises(DataError, match=r"b\.h5: features have 5 dimensions, but .*a\.h5 has 3"):
        load_bag_features([str(tmp_path / "a.h5"), str(tmp_path / "b.h5")])
    with pytest.raises(DataError, match="missing"):
        load_bag_features([str(tmp_path / "missing.h5")])
