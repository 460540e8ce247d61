"""What a MIL model's logits mean, per task: class probabilities or a survival risk.

=======================  ==========  ==================================================================
task                     n_outputs   outputs
=======================  ==========  ==================================================================
classification           C classes   softmax probabilities ``p_<class>`` [B, C]
survival, ``cox``        1           ``risk`` [B, 1] = the logit (log hazard ratio)
survival, ``nll``        K bins      ``risk`` [B, 1] = −Σ_k S_k with S_k = Π_{j≤k} (1 − sigmoid(logit_j)):
                                     minus the expected survival over the K discrete-time bins
=======================  ==========  ==================================================================

Higher risk always means shorter expected survival, so the C-index can be computed on ``risk`` alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TASKS = ("classification", "survival")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def n_outputs_for(task: str, n_classes: int = 2, survival_loss: str = "nll", n_bins: int = 4) -> int:
    """Number of logits the model needs: C classes, 1 (Cox) or ``n_bins`` (discrete-time NLL)."""
    _check_task(task)
    if task == "classification":
        return n_classes
    return 1 if survival_loss == "cox" else n_bins


def survival_curve(logits: Tensor) -> Tensor:
    """Discrete-time hazard logits [B, K] → survival S [B, K], S_k = Π_{j≤k} (1 − sigmoid(logit_j))."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=-1))


def outputs_from_logits(logits: Tensor, task: str, survival_loss: str = "nll") -> Tensor:
    """Model logits [B, C] → outputs: probabilities [B, C] (classification) or risk [B, 1] (survival)."""
    _check_task(task)
    if task == "classification":
        return torch.softmax(logits, dim=-1)
    if survival_loss == "cox":
        return logits[:, :1]
    if survival_loss != "nll":
        raise ValueError(f"survival_loss must be 'cox' or 'nll', got {survival_loss!r}")
    return -survival_curve(logits).sum(dim=-1, keepdim=True)


def output_names(task: str, classes: list[str]) -> list[str]:
    """Column names of the outputs: ``["p_<class>", ...]`` (classification) or ``["risk"]`` (survival)."""
    _check_task(task)
    return [f"p_{c}" for c in classes] if task == "classification" else ["risk"]
