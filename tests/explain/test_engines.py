"""The counterfactual engines agree with each other and with one forward pass per candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medattn.errors import ConfigError, DataError
from medattn.explain.engines import GenericEngine, LoopEngine, has_attention_pooling, make_engine
from medattn.explain.exact import ExactEngine
from medattn.models.abmil import GatedABMIL
from medattn.models.mil_heads import outputs_from_logits


def probs(logits: Tensor) -> Tensor:
    return outputs_from_logits(logits, "classification")


def nll_risk(logits: Tensor) -> Tensor:
    return outputs_from_logits(logits, "survival", "nll")


class MeanPoolMIL(nn.Module):
    """A bag model without attention pooling: mean of embedded patches, then a linear head."""

    def __init__(self, dim: int = 8, n_outputs: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 16)
        self.head = nn.Linear(16, n_outputs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        h = torch.relu(self.fc(x))
        m = torch.ones(x.shape[:2], dtype=h.dtype) if mask is None else mask.to(h.dtype)
        return {"logits": self.head((h * m[..., None]).sum(1) / m.sum(1, keepdim=True))}


class MaxPoolABMIL(GatedABMIL):
    """Has the attention-pooling interface, but pools by max: the exact engine must refuse it."""

    def pool(self, h: Tensor, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            h = h.masked_fill(~mask[..., None], float("-inf"))
        return h.max(dim=1).values


def abmil(seed: int, dim: int = 8, n_outputs: int = 2, dropout: float = 0.25) -> GatedABMIL:
    torch.manual_seed(seed)
    return GatedABMIL(in_dim=dim, embed_dim=16, attention_dim=8, n_outputs=n_outputs, dropout=dropout).eval()


def bag(seed: int, n: int = 40, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def all_engines(model: nn.Module, x: np.ndarray, fn=probs, memory_mb: float = 512.0) -> dict:
    return {"exact": ExactEngine(model, x, fn), "generic": GenericEngine(model, x, fn, memory_mb=memory_mb),
            "loop": LoopEngine(model, x, fn)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", ["classification", "survival"])
def test_three_engines_agree_on_sets_removals_and_additions(seed: int, task: str) -> None:
    model = abmil(seed, n_outputs=2 if task == "classification" else 4)  # dropout 0.25, eval mode
    fn = probs if task == "classification" else nll_risk
    x = bag(seed)
    engines = all_engines(model, x, fn)
    rng = np.random.default_rng(seed + 10)
    sets = rng.random((25, 40)) < 0.5
    sets[:, 0] = True
    current = rng.random(40) < 0.6
    inside, outside = np.flatnonzero(current), np.flatnonzero(~current)
    results = {name: (e.outputs_for_sets(sets), e.outputs_after_removal(current, inside),
                      e.outputs_after_addition(current, outside)) for name, e in engines.items()}
    # the loop is the reference: the model's own forward pass on each candidate bag alone
    with torch.no_grad():
        ref = fn(model(torch.as_tensor(x[sets[3]])[None])["logits"].double()).numpy()[0]
    np.testing.assert_allclose(results["loop"][0][3], ref, rtol=0, atol=1e-7)
    assert results["loop"][0].shape == (25, 2 if task == "classification" else 1)
    for name in ("exact", "generic"):
        for got, want in zip(results[name], results["loop"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a candidate actually changes the output (so agreement is not trivial)
    assert np.ptp(results["exact"][1][:, 0]) > 1e-4


def test_generic_batches_candidates_under_the_memory_budget() -> None:
    model, x = abmil(0), bag(0, n=60)
    calls: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    full = np.ones(60, dtype=bool)
    roomy = GenericEngine(model, x, probs)
    calls.clear()
    want = roomy.outputs_after_removal(full, np.arange(60))
    assert calls == [(60, 60, 8)]  # all 60 candidates in one masked forward pass
    tight = GenericEngine(model, x, probs, memory_mb=0.05)
    calls.clear()
    got = tight.outputs_after_removal(full, np.arange(60))
    batch = tight.batch_size(60)
    assert 1 < batch < 60 and len(calls) == -(-60 // batch) and max(c[0] for c in calls) == batch
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # candidate bags of different sizes share a batch through padding and the mask
    sets = np.zeros((3, 60), dtype=bool)
    sets[0, :5], sets[1, 10:40], sets[2, [3, 50]] = True, True, True
    np.testing.assert_allclose(roomy.outputs_for_sets(sets), LoopEngine(model, x, probs).outputs_for_sets(sets),
                               rtol=0, atol=1e-6)


def test_auto_choice_forcing_and_errors() -> None:
    x = bag(0)
    assert has_attention_pooling(abmil(0)) and not has_attention_pooling(MeanPoolMIL())
    assert make_engine(abmil(0), x, probs).name == "exact"
    assert make_engine(abmil(0), x, probs, "generic").name == "generic"
    assert make_engine(abmil(0), x, probs, "loop").name == "loop"
    assert make_engine(MeanPoolMIL(), x, probs).name == "generic"
    with pytest.raises(ConfigError, match=r"exact counterfactual engine needs an attention-pooling model.*MeanPoolMIL"):
        make_engine(MeanPoolMIL(), x, probs, "exact")
    torch.manual_seed(0)
    maxpool = MaxPoolABMIL(in_dim=8, embed_dim=16, attention_dim=8, dropout=0.0).eval()
    assert make_engine(maxpool, x, probs).name == "generic"  # the self-check rejects exact, auto falls back
    with pytest.raises(ConfigError, match="MaxPoolABMIL is not an attention-pooling model"):
        make_engine(maxpool, x, probs, "exact")
    with pytest.raises(ConfigError, match="unknown counterfactual engine 'fast'"):
        make_engine(abmil(0), x, probs, "fast")


@pytest.mark.parametrize("name", ["exact", "generic", "loop"])
def test_bad_candidates_give_one_line_errors(name: str) -> None:
    engine = make_engine(abmil(0), bag(0), probs, name)
    full = np.ones(40, dtype=bool)
    with pytest.raises(DataError, match=r"patch index 40 is out of range: the bag has 40 patches \(0..39\)"):
        engine.outputs_after_removal(full, np.array([3, 40]))
    with pytest.raises(DataError, match="patch index -1 is out of range"):
        engine.outputs_after_addition(np.zeros(40, dtype=bool), np.array([-1]))
    one = np.zeros(40, dtype=bool)
    one[7] = True
    with pytest.raises(DataError, match="empty bag"):
        engine.outputs_after_removal(one, np.array([7]))
    with pytest.raises(DataError, match="would be empty"):
        engine.outputs_for_sets(np.zeros((2, 40), dtype=bool))
    with pytest.raises(DataError, match="not in the current bag"):
        engine.outputs_after_removal(one, np.array([8]))
