"""Gated attention-based multiple-instance learning (ABMIL; Ilse, Tomczak & Welling, ICML 2018).

A slide is a bag of N patch feature vectors x ∈ R^{N×D}. The model

1. embeds each patch: ``h_n = dropout(ReLU(W_e x_n + b_e))`` ∈ R^L,
2. scores each patch (gated attention): ``s_n = w^T (tanh(V h_n) ⊙ sigmoid(U h_n)) + b_w``
   (ungated: ``w^T tanh(V h_n) + b_w``), a raw score before the softmax,
3. pools: ``a = softmax(s)`` over the real patches of the bag, ``z = Σ_n a_n h_n`` ∈ R^L,
4. classifies: ``logits = W_c z + b_c`` (an affine head; the exact counterfactual engine relies on it).

Bags of different sizes are batched by padding to ``N_max`` with a boolean mask (True = real patch);
padded patches get score ``-inf`` and weight 0, so a padded bag gives exactly what it gives alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medattn.models.registry import register_model


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax of ``scores`` [B, N] over N, ignoring positions where ``mask`` [B, N] is False.

    Returns [B, N] weights that sum to 1 over the real patches (all zeros for a bag with none).
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0) if mask is not None else weights


@register_model("abmil")
class GatedABMIL(nn.Module):
    """Gated ABMIL bag classifier / survival model.

    Args:
        in_dim: patch feature dimension D.
        embed_dim: embedding dimension L.
        attention_dim: hidden dimension A of the attention network.
        n_outputs: output logits C (classes; 1 for Cox; the number of time bins for discrete-time NLL).
        dropout: dropout probability after the embedding (0 disables it).
        gated: gated attention (tanh ⊙ sigmoid) or plain tanh attention.

    ``forward(x [B, N, D], mask [B, N] | None)`` returns ``{"logits": [B, C], "attention": [B, N] raw
    scores (-inf where masked), "embedding": [B, L]}``. A 2-D input [N, D] is treated as one bag (B = 1).

    Features are standardised inside :meth:`embed` with the buffers ``feature_mean`` and
    ``feature_scale`` (``[D]``; identity until :meth:`set_feature_normalization` is called). The
    trainer sets them from the training bags, so they travel in the state dict: inference and the
    exact counterfactual engine see exactly what training saw, whatever the encoder's scale.
    """

    def __init__(self, in_dim: int = 1024, embed_dim: int = 512, attention_dim: int = 256,
                 n_outputs: int = 2, dropout: float = 0.25, gated: bool = True) -> None:
        super().__init__()
        if min(in_dim, embed_dim, attention_dim, n_outputs) < 1:
            raise ValueError(f"in_dim, embed_dim, attention_dim and n_outputs must be >= 1, got "
                             f"{in_dim}, {embed_dim}, {attention_dim}, {n_outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        #: constructor arguments, stored in MIL checkpoints to rebuild the model through the registry
        self.init_kwargs = {"in_dim": in_dim, "embed_dim": embed_dim, "attention_dim": attention_dim,
                            "n_outputs": n_outputs, "dropout": dropout, "gated": gated}
        self.gated = gated
        self.fc = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(embed_dim, attention_dim)
        self.attention_u = nn.Linear(embed_dim, attention_dim) if gated else None
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(embed_dim, n_outputs)
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_scale", torch.ones(in_dim))

    @torch.no_grad()
    def set_feature_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Standardise features as (x − mean) / std ([D] each; std ≤ 1e-6 counts as 1)."""
        std = torch.as_tensor(std, dtype=torch.float32)
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_scale.copy_(torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.ones_like(std)))

    def embed(self, x: Tensor) -> Tensor:
        """Patch features x [B, N, D] → embeddings h [B, N, L] (standardised first, see the class notes)."""
        return self.fc((x - self.feature_mean) * self.feature_scale)

    def attention_logits(self, h: Tensor) -> Tensor:
        """Embeddings h [B, N, L] → raw attention scores s [B, N] (before the softmax)."""
        a = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            a = a * torch.sigmoid(self.attention_u(h))
        return self.attention_w(a).squeeze(-1)

    def pool(self, h: Tensor, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention pooling: h [B, N, L], raw scores [B, N], mask [B, N] → bag embedding z [B, L]."""
        weights = masked_softmax(scores, mask)
        return torch.einsum("bn,bnl->bl", weights, h)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """x [B, N, D] (or [N, D]), mask [B, N] bool (True = real patch) → logits, attention, embedding."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        if x.dim() != 3:
            raise ValueError(f"expected features [B, N, D], got shape {tuple(x.shape)}")
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
        h = self.embed(x)
        scores = self.attention_logits(h)
        z = self.pool(h, scores, mask)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return {"logits": self.classifier(z), "attention": scores, "embedding": z}
