"""explain_bag on planted-signal bags, where the necessary patches are known; CSV/summary layout; errors."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medattn.config.mil_schema import MilConfig, MilDataConfig
from medattn.data.bag_synth import PATCH_SIZE, planted_bags, write_planted_bags
from medattn.data.bags import Bag, read_bag
from medattn.engine.mil_checkpoint import MilModel, load_mil_checkpoint, save_mil_checkpoint
from medattn.errors import ConfigError, DataError
from medattn.explain.experiments import EXPERIMENTS, CounterfactualSpec, explain_bag
from medattn.models.abmil import GatedABMIL

DIM = 16


def planted_model(direction: np.ndarray) -> GatedABMIL:
    """A gated ABMIL whose weights are set by hand: a patch's evidence is h_0 = ReLU(u·x − 3.75) along the
    planted direction u (positives sit 7.5σ out, negatives at 0, so h_0 ≈ 3.75 vs 0); attention
    s = 8·tanh(h_0), so positives hold the softmax mass; logit_positive − logit_negative = 3·z_0 − 4.5."""
    torch.manual_seed(0)
    m = GatedABMIL(in_dim=DIM, embed_dim=8, attention_dim=4, n_outputs=2, dropout=0.0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.fc[0].weight[0] = torch.as_tensor(direction)
        m.fc[0].bias[0] = -3.75
        m.fc[0].weight[1:] = 0.1 * torch.randn(7, DIM)  # harmless noise dimensions
        m.attention_v.weight[0, 0] = 1.0
        m.attention_u.bias[0] = 10.0  # the gate stays open
        m.attention_w.weight[0, 0] = 8.0
        m.classifier.weight[1, 0] = 3.0
        m.classifier.bias[1] = -4.5
    return m.eval()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    bags = planted_bags(n_bags=4, n_patches=(150, 220), dim=DIM, witness_rate=(0.06, 0.1), signal=2.5, seed=0)
    write_planted_bags(root / "data", bags)
    cfg = MilConfig(data=MilDataConfig(classes=["negative", "positive"]))
    ckpt = save_mil_checkpoint(root / "model.pt", planted_model(bags.direction), cfg,
                               {"type": "classification", "classes": ["negative", "positive"]},
                               {"name": "planted", "dim": DIM})
    mil = load_mil_checkpoint(ckpt)
    pos, neg = int(np.flatnonzero(bags.labels == 1)[0]), int(np.flatnonzero(bags.labels == 0)[0])
    read = {i: read_bag(root / "data" / "bags" / f"{bags.slide_ids[i]}.h5") for i in (pos, neg)}
    return {"mil": mil, "pos": read[pos], "neg": read[neg], "pos_labels": bags.instance_labels[pos],
            "root": root}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def squares(coords: np.ndarray) -> dict:
    return {"type": "MultiPolygon", "coordinates": [
        [[[x, y], [x + PATCH_SIZE, y], [x + PATCH_SIZE, y + PATCH_SIZE], [x, y + PATCH_SIZE], [x, y]]]
        for x, y in coords.tolist()]}


def test_csvs_and_summary_follow_the_contract(planted: dict, tmp_path: Path) -> None:
    mil, bag, truth = planted["mil"], planted["pos"], planted["pos_labels"]
    n = len(bag.features)
    spec = CounterfactualSpec(random_seeds=[0, 1], percentages=[5, 10, 50], region=squares(bag.coords[truth]),
                              donor=planted["neg"], transplant_counts=[1, 10])
    summary = explain_bag(mil, bag, tmp_path, spec)
    folder = tmp_path / "counterfactuals"
    assert sorted(p.stem for p in folder.glob("*.csv")) == sorted(EXPERIMENTS)
    assert summary.engine == "exact" and summary.target == "p_positive" and summary.prediction == "positive"
    base = summary.baseline["p_positive"]
    assert base > 0.95 and summary.output_names == ["p_negative", "p_positive"]
    for name in EXPERIMENTS:
        header, rows = read_csv(folder / f"{name}.csv")
        assert header == ["experiment", "round", "patch_index", "x", "y", "p_negative", "p_positive", "delta"] + \
            (["seed"] if name == "random_removal" else [])
        assert rows[0]["round"] == "0" and rows[0]["patch_index"] == "-1" and float(rows[0]["delta"]) == 0.0
        assert float(rows[0]["p_positive"]) == pytest.approx(base, abs=1e-9)
        assert all(r["experiment"] == name for r in rows)
        for r in rows:
            assert float(r["delta"]) == pytest.approx(float(r["p_positive"]) - base, abs=1e-8)
            assert float(r["p_negative"]) + float(r["p_positive"]) == pytest.approx(1.0, abs=1e-8)
    _, single = read_csv(folder / "single_removal.csv")
    assert len(single) == n + 1 and sorted(int(r["patch_index"]) for r in single[1:]) == list(range(n))
    j = 17
    assert (int(single[j + 1]["x"]), int(single[j + 1]["y"])) == tuple(bag.coords[j])
    _, random_rows = read_csv(folder / "random_removal.csv")
    assert {r["seed"] for r in random_rows} == {"0", "1"}
    _, ranked = read_csv(folder / "ranked_removal.csv")
    counts = [round(p / 100 * n) for p in (5, 10, 50)]
    assert [sum(1 for r in ranked if r["round"] == str(k)) for k in (1, 2, 3)] == \
        [counts[0], counts[1] - counts[0], counts[2] - counts[1]]
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["engine"] == "exact" and saved["target"] == "p_positive" and saved["n_patches"] == n
    assert saved["baseline"]["p_positive"] == pytest.approx(base)
    assert set(saved["experiments"]) == set(EXPERIMENTS) and set(saved["timings"]) >= set(EXPERIMENTS)
    assert saved["experiments"]["ranked_removal"]["counts"] == counts
    assert saved["experiments"]["greedy_necessity"]["stopped"] in ("fraction", "exhausted")


def test_necessity_search_removes_the_planted_positives_first(planted: dict, tmp_path: Path) -> None:
    bag, truth = planted["pos"], planted["pos_labels"]
    k = int(truth.sum())
    spec = CounterfactualSpec(experiments=["greedy_necessity", "ranked_removal"], max_fraction=None,
                              max_rounds=k + 3, percentages=[100 * k / len(truth)])
    summary = explain_bag(planted["mil"], bag, tmp_path, spec)
    _, rows = read_csv(tmp_path / "counterfactuals" / "greedy_necessity.csv")
    order = [int(r["patch_index"]) for r in rows[1:]]
    assert set(order[:k]) == set(np.flatnonzero(truth).tolist())  # every positive before any negative
    # the prediction flips on the way (the last, weakest positives no longer carry the bag)
    flip = summary.experiments["greedy_necessity"]["flip_round"]
    assert flip is not None and flip <= k and float(rows[k]["p_positive"]) < 0.5
    # the top-attention patches are the positives too
    _, ranked = read_csv(tmp_path / "counterfactuals" / "ranked_removal.csv")
    assert {int(r["patch_index"]) for r in ranked[1:]} == set(np.flatnonzero(truth).tolist())


def test_transplanting_planted_positives_flips_a_negative_bag(planted: dict, tmp_path: Path) -> None:
    donor, truth = planted["pos"], planted["pos_labels"]
    spec = CounterfactualSpec(experiments=["transplant"], donor=donor, donor_patches=np.flatnonzero(truth).tolist(),
                              transplant_counts=[1, 3, int(truth.sum())])
    summary = explain_bag(planted["mil"], planted["neg"], tmp_path, spec)
    assert summary.prediction == "negative" and summary.target == "p_negative"
    assert summary.experiments["transplant"]["flip_round"] == 1
    _, rows = read_csv(tmp_path / "counterfactuals" / "transplant.csv")
    assert float(rows[0]["p_positive"]) < 0.05 and all(float(r["p_positive"]) > 0.9 for r in rows[1:])
    added = [int(r["patch_index"]) for r in rows[1:]]
    assert added == np.flatnonzero(truth).tolist()  # donor indices, in the order given
    first = added[0]
    assert (int(rows[1]["x"]), int(rows[1]["y"])) == tuple(donor.coords[first])
    # transplanting negative patches does not flip it
    spec.donor_patches = np.flatnonzero(~truth)[:20].tolist()
    spec.transplant_counts = [20]
    assert explain_bag(planted["mil"], planted["neg"], tmp_path / "b", spec).experiments["transplant"][
        "flip_round"] is None


def test_region_removal_of_the_planted_region_flips_a_random_region_does_not(planted: dict,
                                                                               tmp_path: Path) -> None:
    mil, bag, truth = planted["mil"], planted["pos"], planted["pos_labels"]
    spec = CounterfactualSpec(experiments=["region_remove", "region_keep"], region=squares(bag.coords[truth]))
    summary = explain_bag(mil, bag, tmp_path / "tumour", spec)
    assert summary.experiments["region_remove"]["n_region_patches"] == int(truth.sum())
    assert summary.experiments["region_remove"]["flip_round"] == 1  # without the tumour: negative
    assert summary.experiments["region_keep"]["flip_round"] is None  # the tumour alone: still positive
    rng = np.random.default_rng(5)
    for trial in range(3):  # random regions of the same size, elsewhere on the slide
        cells = rng.choice(np.flatnonzero(~truth), size=int(truth.sum()), replace=False)
        spec.region = squares(bag.coords[cells])
        summary = explain_bag(mil, bag, tmp_path / f"random{trial}", spec)
        assert summary.experiments["region_remove"]["flip_round"] is None
        _, rows = read_csv(tmp_path / f"random{trial}" / "counterfactuals" / "region_remove.csv")
        assert float(rows[1]["p_positive"]) > 0.9


def test_engines_write_the_same_results(planted: dict, tmp_path: Path) -> None:
    """A random model (continuous outputs, no ties): exact, generic and loop write the same files."""
    bag = planted["pos"]
    small = Bag(bag.features[:50], bag.coords[:50], dict(bag.attrs))
    torch.manual_seed(1)
    cfg = MilConfig(data=MilDataConfig(classes=["negative", "positive"]))
    mil = load_mil_checkpoint(save_mil_checkpoint(
        tmp_path / "random.pt", GatedABMIL(in_dim=DIM, embed_dim=16, attention_dim=8, dropout=0.25), cfg,
        {"type": "classification"}, {"name": "planted", "dim": DIM}))
    spec = CounterfactualSpec(experiments=["single_removal", "single_patch", "greedy_necessity",
                                           "greedy_sufficiency", "random_removal"], max_fraction=0.2,
                              random_seeds=[0])
    tables = {}
    for engine in ("exact", "generic", "loop"):
        spec.engine = engine
        assert explain_bag(mil, small, tmp_path / engine, spec).engine == engine
        tables[engine] = {name: read_csv(tmp_path / engine / "counterfactuals" / f"{name}.csv")[1]
                          for name in spec.experiments}
    for engine in ("exact", "generic"):
        for name, rows in tables[engine].items():
            ref = tables["loop"][name]
            assert [r["patch_index"] for r in rows] == [r["patch_index"] for r in ref]
            np.testing.assert_allclose([float(r["p_positive"]) for r in rows],
                                       [float(r["p_positive"]) for r in ref], atol=1e-6)


class MeanPool(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(DIM, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"logits": self.head(x.mean(dim=1))}


def test_bad_requests_give_one_line_errors(planted: dict, tmp_path: Path) -> None:
    mil, bag = planted["mil"], planted["pos"]
    bad = len(planted["neg"].features) + 5
    with pytest.raises(DataError, match=f"donor patch index {bad} is out of range: the bag has"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["transplant"], donor=planted["neg"],
                                                           donor_patches=[0, bad]))
    far = {"type": "Polygon", "coordinates": [[[1e6, 1e6], [1e6 + 500, 1e6], [1e6, 1e6 + 500], [1e6, 1e6]]]}
    with pytest.raises(DataError, match="lies outside the slide"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["region_remove"], region=far))
    everything = squares(bag.coords)
    with pytest.raises(DataError, match="would leave an empty bag"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["region_remove"], region=everything))
    no_attention = MilModel(model=MeanPool().eval(), task=mil.task, classes=mil.classes,
                            output_names=mil.output_names, encoder=mil.encoder, slide=mil.slide, tissue=mil.tissue,
                            patch=mil.patch, infer=mil.infer, config=mil.config, path=None, sha256="")
    with pytest.raises(ConfigError, match="exact counterfactual engine needs an attention-pooling model"):
        explain_bag(no_attention, bag, tmp_path, CounterfactualSpec(experiments=["single_removal"], engine="exact"))
    assert explain_bag(no_attention, bag, tmp_path, CounterfactualSpec(
        experiments=["single_removal"])).engine == "generic"
    with pytest.raises(ConfigError, match="unknown counterfactual experiment 'shapley'"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["shapley"]))
    with pytest.raises(ConfigError, match="region experiments need a region"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["region_keep"]))
    with pytest.raises(ConfigError, match="unknown target output 'tumour'"):
        explain_bag(mil, bag, tmp_path, CounterfactualSpec(experiments=["single_removal"], target="tumour"))
    wide = Bag(np.zeros((5, DIM + 1), np.float32), bag.coords[:5], dict(bag.attrs), path=Path("wide.h5"))
    with pytest.raises(DataError, match=rf"wide\.h5: bag features have dimension {DIM + 1}, the model expects {DIM}"):
        explain_bag(mil, wide, tmp_path, CounterfactualSpec(experiments=["single_removal"]))
    with pytest.raises(DataError, match="removing its only patch would leave the bag empty"):
        one = Bag(bag.features[:1], bag.coords[:1], dict(bag.attrs))
        explain_bag(mil, one, tmp_path, CounterfactualSpec(experiments=["single_removal"]))


def test_survival_risk_is_explained_the_same_way(planted: dict, tmp_path: Path) -> None:
    torch.manual_seed(2)
    cfg = MilConfig()
    model = GatedABMIL(in_dim=DIM, embed_dim=16, attention_dim=8, n_outputs=4, dropout=0.0)
    mil = load_mil_checkpoint(save_mil_checkpoint(tmp_path / "surv.pt", model, cfg,
                                                  {"type": "survival", "survival_loss": "nll", "n_bins": 4},
                                                  {"name": "planted", "dim": DIM}))
    bag = planted["pos"]
    small = Bag(bag.features[:40], bag.coords[:40], dict(bag.attrs))
    spec = CounterfactualSpec(experiments=["single_removal", "greedy_necessity"], max_rounds=5, max_fraction=None)
    results = {}
    for engine in ("exact", "loop"):
        spec.engine = engine
        summary = explain_bag(mil, small, tmp_path / engine, spec)
        assert summary.output_names == ["risk"] and summary.target == "risk" and summary.prediction is None
        header, rows = read_csv(tmp_path / engine / "counterfactuals" / "greedy_necessity.csv")
        assert header == ["experiment", "round", "patch_index", "x", "y", "risk", "delta"]
        results[engine] = rows
    assert [r["patch_index"] for r in results["exact"]] == [r["patch_index"] for r in results["loop"]]
    risks = [float(r["risk"]) for r in results["exact"]]
    np.testing.assert_allclose(risks, [float(r["risk"]) for r in results["loop"]], atol=1e-6)
    assert all(b < a for a, b in itertools.pairwise(risks))  # each removal lowers the risk
