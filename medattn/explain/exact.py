"""The exact incremental counterfactual engine for attention-pooling bag models (ABMIL and kin).

An attention-pooling model embeds each patch on its own, ``h_i = embed(x_i)`` ∈ R^L, scores it,
``s_i = attention_logits(h_i)``, and pools a bag S as ``z_S = Σ_{i∈S} a_i h_i`` with
``a = softmax(s_S)``; the head maps ``z_S`` to logits. h and s depend on the patch only, so they are
computed once for the whole pool. With an affine head ``logits = W z + b`` each patch's projection
``V_i = W h_i`` ∈ R^C is precomputed as well, and every candidate bag is a softmax-weighted mean:

    logits(S) = Σ_{i∈S} e^{s_i − m} V_i / Σ_{i∈S} e^{s_i − m} + b,      m = max_{i∈S} s_i.

One greedy round (the current bag minus each patch j, or plus each outside patch k) then costs O(N·C)
instead of N forward passes:

- removal: ``(A − w_j V_j) / (W − w_j)`` with ``A = Σ_S w_i V_i``, ``W = Σ_S w_i``, ``w_i = e^{s_i − m}``.
  Subtracting is exact to ~2ε relative unless ``w_j > W / 2``, i.e. unless patch j holds most of the
  softmax mass; that patch (there is at most one) gets its exclusive sums recomputed from scratch with
  its own maximum, so a dominant patch (a huge score) costs no accuracy;
- addition: ``(α A + β V_k) / (α W + β)`` with ``m_k = max(m, s_k)``, ``α = e^{m − m_k}``,
  ``β = e^{s_k − m_k}``: no subtraction at all, and no overflow for a score far above the bag's.

Sums are accumulated in float64. A head that is not affine works the same way in L dimensions
(``V_i = h_i``), then the head runs once per candidate on the pooled ``z`` (batched): O(N·L) a round.
The engine checks itself against the model's own forward pass when built (a structural mismatch is a
ConfigError), so it never silently computes something the model does not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from medattn.errors import ConfigError, DataError
from medattn.explain.engines import Engine, OutputsFn, has_attention_pooling, model_logits

NumpyOutputsFn = Callable[[np.ndarray], np.ndarray]

_CHECK_PATCHES = 256  # patches in the self-check forward pass
_SET_CHUNK_BYTES = 64 * 2**20  # float64 working memory per chunk of candidate sets


class ExactEngine(Engine):
    """Closed-form outputs for an attention-pooling model (see the module doc) over ``features [P, D]``."""

    name = "exact"

    @torch.no_grad()
    def __init__(self, model: nn.Module, features: Tensor | np.ndarray, outputs_fn: OutputsFn,
                 check: bool = True, numpy_outputs: NumpyOutputsFn | None = None) -> None:
        if not has_attention_pooling(model):
            raise ConfigError(f"the exact counterfactual engine needs an attention-pooling model (embed, "
                              f"attention_logits, pool, classifier); {type(model).__name__} has none")
        self.model = model.eval()
        param = next(model.parameters())
        self.device = param.device
        x = torch.as_tensor(features).to(device=self.device, dtype=param.dtype)
        if x.dim() != 2 or x.shape[0] == 0:
            raise DataError(f"features must be a non-empty [P, D] array, got shape {tuple(x.shape)}")
        self.outputs_fn = outputs_fn
        self.numpy_outputs = numpy_outputs  # the same map in numpy: no torch call per round
        self.n_pool = int(x.shape[0])
        h = model.embed(x[None])  # [1, P, L]
        self.h = h[0]
        # per-round work is O(P·C) on small arrays: numpy float64 (no thread start-up per tiny op)
        self.scores = model.attention_logits(h)[0].double().cpu().numpy()  # [P]
        self.head = model.classifier
        self.affine = isinstance(self.head, nn.Linear)
        if self.affine:  # V = W h [P, C], b [C]
            self.values = (self.h.double() @ self.head.weight.double().T).cpu().numpy()
            self.bias = (self.head.bias.double().cpu().numpy() if self.head.bias is not None
                         else np.zeros(self.values.shape[1]))
        else:  # pooled in L dimensions, the head runs on z
            self.values = self.h.double().cpu().numpy()
            self.bias = None
        # column-major copy: per-round arrays are [C, M], so row-wise maps (softmax) run along contiguous memory
        self._values_t = np.ascontiguousarray(self.values.T)
        self.n_outputs = int(self._outputs(self.values[:1].copy()).shape[1])
        if check:
            self._self_check(x)

    # -- closed forms -----------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self, pooled: np.ndarray) -> np.ndarray:
        """Pooled values [M, C or L] (float64) → outputs [M, K] float64."""
        if self.affine:
            if self.numpy_outputs is not None:
                return np.asarray(self.numpy_outputs(pooled + self.bias), dtype=np.float64)
            logits = torch.from_numpy(pooled + self.bias)
        else:
            z = torch.from_numpy(pooled).to(device=self.device, dtype=self.h.dtype)
            logits = model_logits(self.head(z)).double()
        return self.outputs_fn(logits).cpu().numpy().astype(np.float64)

    def pooled_for_sets(self, sets: np.ndarray) -> np.ndarray:
        """Candidate bags ``sets [M, P]`` bool (each non-empty) → pooled values [M, C or L] float64."""
        scores = np.where(sets, self.scores[None], -np.inf)  # [M, P]
        w = np.exp(scores - scores.max(axis=1, keepdims=True))  # 0 outside the set
        return ((self._values_t @ w.T) / w.sum(axis=1)).T

    def outputs_for_sets(self, sets: np.ndarray) -> np.ndarray:
        sets = self._check_sets(sets)
        out = np.empty((sets.shape[0], self.n_outputs))
        chunk = max(1, _SET_CHUNK_BYTES // (8 * self.n_pool * 2))
        for start in range(0, sets.shape[0], chunk):
            out[start:start + chunk] = self._outputs(self.pooled_for_sets(sets[start:start + chunk]))
        return out

    def outputs_after_removal(self, current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        current, candidates = self._check_removal(current, candidates)
        members = np.flatnonzero(current)
        s = self.scores[members]
        m = s.max()
        w_all = np.exp(s - m)
        total_w = w_all.sum()
        v_members = np.take(self._values_t, members, axis=1)  # [C, n]
        total_a = v_members @ w_all  # [C]
        if len(candidates) == len(members) and np.array_equal(candidates, members):  # a full greedy round
            w, v_cand = w_all, v_members
        else:
            w, v_cand = np.exp(self.scores[candidates] - m), np.take(self._values_t, candidates, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # the dominant patch is redone below
            pooled = ((total_a[:, None] - w * v_cand) / (total_w - w)).T  # [M, C]
        for row in np.flatnonzero(w > 0.5 * total_w):  # at most one patch holds most of the mass
            rest = current.copy()
            rest[candidates[row]] = False
            pooled[row] = self.pooled_for_sets(rest[None])[0]
        return self._outputs(pooled)

    def outputs_after_addition(self, current: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        current, candidates = self._check_round(current, candidates)
        if current[candidates].any():
            raise DataError("an addition candidate is already in the current bag")
        s_k = self.scores[candidates]  # [M]
        if current.any():
            members = np.flatnonzero(current)
            s = self.scores[members]
            m = s.max()
            w_all = np.exp(s - m)
            total_w, total_a = w_all.sum(), np.take(self._values_t, members, axis=1) @ w_all
            m_k = np.maximum(s_k, m)
            alpha, beta = np.exp(m - m_k), np.exp(s_k - m_k)
            v_cand = np.take(self._values_t, candidates, axis=1)
            pooled = ((alpha * total_a[:, None] + beta * v_cand) / (alpha * total_w + beta)).T
        else:  # a bag of one patch pools to that patch
            pooled = np.take(self._values_t, candidates, axis=1).T
        return self._outputs(pooled)

    def _mask(self, members: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n_pool, dtype=bool)
        mask[members] = True
        return mask

    # -- self-check against the model -------------------------------------------------------------
    def _self_check(self, x: Tensor) -> None:
        """ConfigError unless the closed form reproduces the model's forward pass and masked pooling."""
        rng = np.random.default_rng(0)
        subset = rng.permutation(self.n_pool)[:min(self.n_pool, _CHECK_PATCHES)]
        want = model_logits(self.model(x[torch.as_tensor(subset, device=self.device)][None])).double()[0]
        got = self._logits_for(self._mask(subset))
        # masked pooling of the full pool (catches a pool() that does not use a softmax over the mask)
        mask = rng.random(self.n_pool) < 0.5
        mask[0] = True
        scores = torch.as_tensor(self.scores, device=self.device, dtype=self.h.dtype)
        z = self.model.pool(self.h[None], scores[None], torch.as_tensor(mask, device=self.device)[None])
        want_masked = model_logits(self.head(z)).double()[0]
        got_masked = self._logits_for(mask)
        for a, b in ((want.cpu().numpy(), got), (want_masked.cpu().numpy(), got_masked)):
            tol = 1e-4 * (1.0 + float(np.abs(a).max()))
            if a.shape != b.shape or float(np.abs(a - b).max()) > tol:
                raise ConfigError(f"{type(self.model).__name__} is not an attention-pooling model with a "
                                  f"softmax-weighted mean (its outputs differ from the closed form): use "
                                  f"engine 'generic'")

    def _logits_for(self, mask: np.ndarray) -> np.ndarray:
        pooled = self.pooled_for_sets(mask[None])
        if self.affine:
            return (pooled + self.bias)[0]
        z = torch.from_numpy(pooled).to(device=self.device, dtype=self.h.dtype)
        return model_logits(self.head(z)).double()[0].cpu().numpy()


def numpy_outputs(task: str, survival_loss: str = "nll") -> NumpyOutputsFn:
    """The numpy float64 twin of :func:`medattn.models.mil_heads.outputs_from_logits` (tested equal).

    Logits ``[M, C]`` → probabilities ``[M, C]`` or risk ``[M, 1]``. The exact engine maps thousands of
    candidate logits a round; numpy does that without torch's per-call threading cost.
    """
    if task == "classification":
        def softmax(logits: np.ndarray) -> np.ndarray:
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return softmax
    if task != "survival" or survival_loss not in ("cox", "nll"):
        raise ConfigError(f"unknown task {task!r} / survival loss {survival_loss!r}")
    if survival_loss == "cox":
        return lambda logits: logits[:, :1].copy()

    def risk(logits: np.ndarray) -> np.ndarray:  # −Σ_k Π_{j≤k} (1 − sigmoid(l_j)); log(1 − σ(l)) = −log(1 + e^l)
        return -np.exp(np.cumsum(-np.logaddexp(0.0, logits), axis=1)).sum(axis=1, keepdims=True)
    return risk
