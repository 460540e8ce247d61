"""Losses for slide-level MIL training: survival (Cox, discrete-time NLL), attention entropy, class weights.

- :func:`cox_loss`: negative Cox partial log-likelihood with Breslow's handling of tied times,
  averaged over the events of the batch (a batch without events gives 0, still differentiable).
- :func:`nll_survival_loss`: discrete-time negative log-likelihood (Zadeh & Schmid 2020, as used by
  Chen et al. in Patch-GCN/MCAT/PORPOISE) with censoring; bins come from :func:`survival_bin_edges`.
- :func:`attention_entropy`: the AEM regulariser (attention entropy maximisation). The training
  loss is ``task_loss − λ · mean_b H_b`` (:func:`with_attention_entropy`), so minimising it spreads
  attention over more patches; ``normalize`` divides H by log N so that bags of any size weigh alike.
- :func:`class_weights`: inverse class frequency for weighted cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def cox_loss(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), mean over events.

    For each event i: ``−(r_i − log Σ_{j: t_j ≥ t_i} exp(r_j))``; tied times share one risk set.

    Args:
        risk: [B] predicted log hazard ratios (any shape that flattens to B).
        time: [B] follow-up times.
        event: [B] 1 = event observed, 0 = censored.

    Returns:
        scalar loss; ``0 · Σ risk`` (zero with a gradient graph) when the batch has no event.
    """
    risk = risk.reshape(-1)
    time = time.reshape(-1).to(risk.device, risk.dtype)
    event = event.reshape(-1).to(risk.device).bool()
    if not bool(event.any()):
        return (risk * 0.0).sum()
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j is in the risk set of i
    log_denominator = torch.logsumexp(risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    return -(risk - log_denominator)[event].mean()


def nll_survival_loss(logits: Tensor, bins: Tensor, event: Tensor, alpha: float = 0.0) -> Tensor:
    """Discrete-time survival negative log-likelihood with censoring.

    With hazards h_k = sigmoid(logit_k) and survival S_k = Π_{j≤k} (1 − h_j), S_{−1} = 1, a patient in
    bin y contributes ``−log S_{y−1} − log h_y`` if the event was observed and ``−log S_y`` if censored
    (it survived its bin). ``alpha`` up-weights the uncensored part as in Chen et al.:
    ``(1 − α) · L + α · L_uncensored``. Computed in log space (``logsigmoid``) for stability.

    Args:
        logits: [B, K] hazard logits.
        bins: [B] int bin index in [0, K).
        event: [B] 1 = event, 0 = censored.

    Returns:
        scalar: mean over the batch.
    """
    bins = bins.reshape(-1, 1).to(logits.device).long()
    event = event.reshape(-1).to(logits.device, logits.dtype)
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_1mh, dim=1)  # log S_k
    log_s_padded = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)  # index k → log S_{k−1}
    before = log_s_padded.gather(1, bins).squeeze(1)  # log S_{y−1}
    through = log_s_padded.gather(1, bins + 1).squeeze(1)  # log S_y
    uncensored = -event * (before + log_h.gather(1, bins).squeeze(1))
    censored = -(1.0 - event) * through
    loss = (1.0 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def survival_bin_edges(times: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` edges at the quantiles of the uncensored times (all times when none is uncensored).

    The first and last edges are widened to the smallest and largest time of all patients, so every
    time falls in a bin. Returns float64 [n_bins + 1], non-decreasing.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    events = np.asarray(events).reshape(-1).astype(bool)
    if times.size == 0:
        raise ValueError("survival_bin_edges: no times given")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    source = times[events] if events.any() else times
    edges = np.quantile(source, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0] = min(edges[0], times.min())
    edges[-1] = max(edges[-1], times.max())
    return edges


def time_to_bin(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index [N] int64 in [0, len(edges) − 2] of each time: bin k holds edges[k] ≤ t < edges[k+1];
    times outside the edges go to the first or last bin."""
    edges = np.asarray(edges, dtype=np.float64)
    inner = edges[1:-1]
    idx = np.searchsorted(inner, np.asarray(times, dtype=np.float64).reshape(-1), side="right")
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64)


def attention_entropy(scores: Tensor, mask: Tensor | None = None, normalize: bool = True) -> Tensor:
    """Entropy H_b = −Σ_n a_n log a_n of a = softmax(scores) over the real patches of each bag.

    Args:
        scores: [B, N] raw attention scores (−inf allowed where masked).
        mask: [B, N] bool, True = real patch (None: all real).
        normalize: divide by log N_b (so H ∈ [0, 1]); a bag of one patch has H = 0.

    Returns:
        [B] entropies.
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    mask = mask.to(scores.device).bool()
    logp = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    h = -(logp.exp() * logp).sum(dim=-1)
    if normalize:
        n = mask.sum(dim=-1).to(scores.dtype)
        h = torch.where(n > 1, h / torch.log(n.clamp(min=2.0)), torch.zeros_like(h))
    return h


def with_attention_entropy(loss: Tensor, scores: Tensor, mask: Tensor | None, lam: float,
                           normalize: bool = True) -> Tensor:
    """AEM: ``loss − lam · mean_b attention_entropy(scores, mask, normalize)`` (``loss`` when lam = 0)."""
    if lam == 0:
        return loss
    return loss - lam * attention_entropy(scores, mask, normalize).mean()


def class_weights(labels: np.ndarray | list[int] | Tensor, n_classes: int) -> Tensor:
    """Inverse-frequency class weights [C] float32: ``w_c = n / (C · n_c)`` (1 for balanced classes).

    A class absent from ``labels`` gets weight 0 (it contributes no loss terms anyway).
    """
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got {y.min()}..{y.max()}")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, y.size / (n_classes * np.maximum(counts, 1.0)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


__all__ = ["attention_entropy", "class_weights", "cox_loss", "nll_survival_loss", "survival_bin_edges",
           "time_to_bin", "with_attention_entropy"]
