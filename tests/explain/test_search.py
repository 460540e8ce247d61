"""Greedy necessity/sufficiency search: same results on every engine, K per round, each stopping rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from medattn.errors import ConfigError
from medattn.explain.engines import GenericEngine, LoopEngine
from medattn.explain.exact import ExactEngine
from medattn.explain.search import greedy_search
from medattn.models.abmil import GatedABMIL
from medattn.models.mil_heads import outputs_from_logits


def probs(logits: Tensor) -> Tensor:
    return outputs_from_logits(logits, "classification")


def setup(seed: int, n: int = 40) -> tuple[GatedABMIL, np.ndarray]:
    torch.manual_seed(seed)
    model = GatedABMIL(in_dim=8, embed_dim=16, attention_dim=8, n_outputs=2, dropout=0.25).eval()
    return model, np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("mode", "objective"), [("necessity", "decrease"), ("necessity", "increase"),
                                                 ("necessity", "least"), ("sufficiency", "increase")])
def test_engines_give_the_same_order_and_outputs(seed: int, mode: str, objective: str) -> None:
    model, x = setup(seed)
    results = {name: greedy_search(cls(model, x, probs), 1, mode, objective, max_rounds=12)
               for name, cls in (("exact", ExactEngine), ("generic", GenericEngine), ("loop", LoopEngine))}
    for name in ("exact", "generic"):
        np.testing.assert_array_equal(results[name].order, results["loop"].order)
        np.testing.assert_allclose(results[name].outputs, results["loop"].outputs, rtol=1e-5, atol=1e-6,
                                   equal_nan=True)
    r = results["exact"]
    assert len(r.order) == 12 and len(set(r.order.tolist())) == 12 and r.stopped == "rounds"
    target = r.outputs[1:, 1]
    if mode == "necessity" and objective == "decrease":
        # each greedy step is the best single removal available: the first is the global best
        loop = LoopEngine(model, x, probs)
        singles = loop.outputs_after_removal(np.ones(40, dtype=bool), np.arange(40))[:, 1]
        assert r.order[0] == int(np.argmin(singles)) and target[0] == pytest.approx(singles.min(), abs=1e-6)
    if mode == "sufficiency":
        assert np.isnan(r.outputs[0]).all()  # the empty start has no output


def test_k_patches_per_round() -> None:
    model, x = setup(0)
    engine = ExactEngine(model, x, probs)
    r = greedy_search(engine, 1, per_round=3, max_rounds=4)
    assert [len(m) for m in r.moved] == [3, 3, 3, 3] and len(set(r.order.tolist())) == 12
    full = np.ones(40, dtype=bool)
    singles = engine.outputs_after_removal(full, np.arange(40))[:, 1]
    np.testing.assert_array_equal(r.moved[0], np.argsort(singles)[:3])  # the round's 3 best single removals
    for k in range(1, 5):  # each row: the bag with every patch moved so far removed
        kept = full.copy()
        kept[r.order[:3 * k]] = False
        np.testing.assert_allclose(r.outputs[k], LoopEngine(model, x, probs).outputs_for_sets(kept[None])[0],
                                   atol=1e-6)


def test_stopping_rules() -> None:
    model, x = setup(1)
    engine = ExactEngine(model, x, probs)
    base = engine.outputs_for_sets(np.ones((1, 40), dtype=bool))[0]
    r = greedy_search(engine, 1, max_fraction=0.25)
    assert r.stopped == "fraction" and len(r.order) == 10
    r = greedy_search(engine, 1, max_rounds=3, max_fraction=0.25)
    assert r.stopped == "rounds" and len(r.order) == 3
    free = greedy_search(engine, 1)  # no limit: down to one patch
    assert free.stopped == "exhausted" and len(free.order) == 39
    curve = free.outputs[:, 1]
    threshold = float(base[1] - 0.6 * (base[1] - curve.min()))
    crossing = int(np.flatnonzero(curve < threshold)[0])
    r = greedy_search(engine, 1, threshold=threshold)
    assert r.stopped == "threshold" and r.threshold_round == crossing and len(r.order) == crossing
    assert r.outputs[-1, 1] < threshold <= r.outputs[-2, 1]
    # "until the prediction flips": stop at the first round whose predicted class differs
    flips = np.flatnonzero(np.argmax(free.outputs, axis=1) != np.argmax(base))
    assert flips.size, "this model's bag must flip within the search"
    r = greedy_search(engine, int(np.argmax(base)), stop_on_flip=True)
    assert r.stopped == "flip" and r.flip_round == len(r.order)
    assert np.argmax(r.outputs[-1]) != np.argmax(base) and (np.argmax(r.outputs[:-1], axis=1) == np.argmax(base)).all()
    suff = greedy_search(engine, int(np.argmax(base)), "sufficiency", stop_on_flip=True)
    assert suff.stopped == "flip" and np.argmax(suff.outputs[-1]) == np.argmax(base)


def test_patch_subset_and_bad_requests() -> None:
    model, x = setup(2)
    engine = ExactEngine(model, x, probs)
    r = greedy_search(engine, 0, patches=np.arange(10, 20), max_rounds=20)
    assert set(r.order.tolist()) <= set(range(10, 20)) and len(r.order) == 9 and r.stopped == "exhausted"
    with pytest.raises(ConfigError, match="target output 2 is out of range"):
        greedy_search(engine, 2)
    with pytest.raises(ConfigError, match="per_round must be >= 1"):
        greedy_search(engine, 0, per_round=0)
    with pytest.raises(ConfigError, match="unknown search objective 'most'"):
        greedy_search(engine, 0, objective="most")
    with pytest.raises(ConfigError, match="max_fraction"):
        greedy_search(engine, 0, max_fraction=1.5)
