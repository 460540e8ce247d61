"""The exact incremental engine: closed forms, a dominant patch, far-out additions, large bags, any head."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from medattn.explain.engines import GenericEngine, LoopEngine
from medattn.explain.exact import ExactEngine, numpy_outputs
from medattn.explain.search import greedy_search
from medattn.models.abmil import GatedABMIL
from medattn.models.mil_heads import outputs_from_logits


def probs(logits: Tensor) -> Tensor:
    return outputs_from_logits(logits, "classification")


def abmil(seed: int, dim: int = 8, embed: int = 16, n_outputs: int = 2) -> GatedABMIL:
    torch.manual_seed(seed)
    return GatedABMIL(in_dim=dim, embed_dim=embed, attention_dim=8, n_outputs=n_outputs, dropout=0.0).eval()


def test_precomputed_projections_and_scores_match_the_model() -> None:
    model = abmil(0)
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    engine = ExactEngine(model, x, probs)
    with torch.no_grad():
        out = model(torch.as_tensor(x)[None])
        projections = (model.embed(torch.as_tensor(x)[None])[0] @ model.classifier.weight.T).double().numpy()
    np.testing.assert_allclose(engine.scores, out["attention"][0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(engine.values, projections, rtol=1e-5, atol=1e-6)
    assert engine.affine and engine.values.shape == (30, 2) and engine.values.dtype == np.float64
    full = engine.outputs_for_sets(np.ones((1, 30), dtype=bool))
    np.testing.assert_allclose(full[0], probs(out["logits"].double()).numpy()[0], atol=1e-6)


def test_dominant_patch_removal_is_accurate() -> None:
    """One patch holds essentially all the softmax mass: W − w_j cancels catastrophically if done naively."""
    model = abmil(1)
    with torch.no_grad():
        model.attention_w.weight.mul_(4000.0)  # scores spread over thousands: one patch dominates
    x = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    exact, loop = ExactEngine(model, x, probs), LoopEngine(model, x, probs)
    s = exact.scores
    top = int(np.argmax(s))
    w = np.exp(s - s.max())
    assert w.sum() - 1.0 < 1e-12  # every other patch is below float64 resolution next to the top one
    full = np.ones(50, dtype=bool)
    got = exact.outputs_after_removal(full, np.arange(50))
    want = loop.outputs_after_removal(full, np.arange(50))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the removal of the dominant patch really changes the output, and the naive formula gets it wrong
    assert abs(got[top, 1] - exact.outputs_for_sets(full[None])[0, 1]) > 1e-3
    v = exact.values
    with np.errstate(invalid="ignore", divide="ignore"):
        naive = ((w @ v) - w[top] * v[top]) / (w.sum() - w[top])
    naive_logits = naive + exact.bias
    want_logits = np.log(want[top] / want[top, 0])  # logits up to a shift (2 classes)
    assert not np.isfinite(naive_logits).all() or abs((naive_logits[1] - naive_logits[0])
                                                      - (want_logits[1] - want_logits[0])) > 1e-3
    # a greedy search through the dominant patch stays equal to the loop's
    r_exact = greedy_search(exact, 1, max_rounds=4)
    r_loop = greedy_search(loop, 1, max_rounds=4)
    np.testing.assert_array_equal(r_exact.order, r_loop.order)
    np.testing.assert_allclose(r_exact.outputs, r_loop.outputs, atol=1e-6)


def test_adding_a_patch_far_above_the_bag_does_not_overflow() -> None:
    model = abmil(2)
    with torch.no_grad():
        model.attention_w.weight.mul_(400.0)
    x = np.random.default_rng(2).normal(size=(40, 8)).astype(np.float32)
    exact, loop = ExactEngine(model, x, probs), LoopEngine(model, x, probs)
    s = exact.scores
    order = np.argsort(s)
    current = np.zeros(40, dtype=bool)
    current[order[:20]] = True  # the low-scoring half; candidates include scores hundreds above it
    cand = order[20:]
    got = exact.outputs_after_addition(current, cand)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, loop.outputs_after_addition(current, cand), rtol=0, atol=1e-6)
    # from an empty bag, adding one patch gives that patch alone
    single = exact.outputs_after_addition(np.zeros(40, dtype=bool), np.arange(40))
    np.testing.assert_allclose(single, loop.outputs_after_addition(np.zeros(40, dtype=bool), np.arange(40)),
                               atol=1e-6)


def test_exact_matches_generic_on_a_2000_patch_bag() -> None:
    model = abmil(3, dim=16, embed=32)
    x = np.random.default_rng(3).normal(size=(2000, 16)).astype(np.float32)
    exact, generic = ExactEngine(model, x, probs), GenericEngine(model, x, probs)
    full = np.ones(2000, dtype=bool)
    got = exact.outputs_after_removal(full, np.arange(2000))
    want = generic.outputs_after_removal(full, np.arange(2000))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    r_exact, r_generic = greedy_search(exact, 1, max_rounds=2), greedy_search(generic, 1, max_rounds=2)
    np.testing.assert_array_equal(r_exact.order, r_generic.order)
    np.testing.assert_allclose(r_exact.outputs, r_generic.outputs, atol=2e-6)


class MlpHeadABMIL(GatedABMIL):
    """ABMIL with a non-affine head: the exact engine pools in L dimensions, then runs the head."""

    def __init__(self) -> None:
        super().__init__(in_dim=8, embed_dim=16, attention_dim=8, n_outputs=3, dropout=0.0)
        self.classifier = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def test_non_affine_head_uses_pooled_embeddings() -> None:
    torch.manual_seed(4)
    model = MlpHeadABMIL().eval()
    x = np.random.default_rng(4).normal(size=(35, 8)).astype(np.float32)
    exact, loop = ExactEngine(model, x, probs), LoopEngine(model, x, probs)
    assert not exact.affine and exact.values.shape == (35, 16)
    full = np.ones(35, dtype=bool)
    np.testing.assert_allclose(exact.outputs_after_removal(full, np.arange(35)),
                               loop.outputs_after_removal(full, np.arange(35)), atol=1e-6)
    np.testing.assert_array_equal(greedy_search(exact, 2, max_rounds=5).order,
                                  greedy_search(loop, 2, max_rounds=5).order)


def test_numpy_outputs_match_the_model_heads() -> None:
    logits = torch.randn(64, 4, dtype=torch.float64) * 5
    for task, loss, cols in (("classification", "nll", slice(None)), ("survival", "cox", slice(0, 1)),
                             ("survival", "nll", slice(None))):
        want = outputs_from_logits(logits[:, cols] if task == "classification" else logits, task, loss).numpy()
        got = numpy_outputs(task, loss)(np.asfortranarray(logits.numpy()[:, cols] if task == "classification"
                                                          else logits.numpy()))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    model = abmil(5, n_outputs=4)
    x = np.random.default_rng(5).normal(size=(30, 8)).astype(np.float32)

    def risk(t: Tensor) -> Tensor:
        return outputs_from_logits(t, "survival", "nll")

    fast = ExactEngine(model, x, risk, numpy_outputs=numpy_outputs("survival", "nll"))
    plain = ExactEngine(model, x, risk)
    full = np.ones(30, dtype=bool)
    np.testing.assert_allclose(fast.outputs_after_removal(full, np.arange(30)),
                               plain.outputs_after_removal(full, np.arange(30)), rtol=1e-12, atol=1e-12)
