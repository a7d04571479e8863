"""Class-weighted cross-entropy, the classification loss of every experiment in Yoon et al. (2019).

Table 2's "w" in the Cl column: the cross-entropy weighted by the inverse probability of each class in
what the sampler draws (the pool for the baselines A-E, each stream of pairs for CCSA, F-V). The weights
themselves come from ``domgen.losses.weights.inverse_probability_weights``; the reduction follows the
authors' code by default (``nn.CrossEntropyLoss(weight=w)``, chrisjmyoon/iccsa ``graphs/loss.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.losses import LOSSES

CLS_REDUCTIONS = ("weighted_mean", "mean")


def gather_weights(weights: Tensor | None, ref: Tensor, *index: Tensor) -> Tensor | None:
    """``weights[index]`` on ``ref``'s device and dtype, or None when unweighted."""
    if weights is None:
        return None
    return torch.as_tensor(weights, device=ref.device, dtype=ref.dtype)[index]


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Class-weighted cross-entropy; w = None is plain cross-entropy.

    ``weighted_mean`` (default; ``nn.CrossEntropyLoss(weight=w)``, the authors' code):
    ``sum_b w[y_b] CE_b / sum_b w[y_b]``, invariant to the scale of w. ``mean`` (domgen 0.1):
    ``mean_b(w[y_b] CE_b)``, whose scale follows the weights' normalisation.
    """

    def __init__(self, reduction: str = "weighted_mean"):
        super().__init__()
        if reduction not in CLS_REDUCTIONS:
            raise ValueError(f"cross-entropy reduction must be one of {', '.join(CLS_REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")  # [B]
        w = gather_weights(class_w, ce, y)
        if w is None:
            return ce.mean()
        if self.reduction == "weighted_mean":
            return (w * ce).sum() / w.sum().clamp_min(torch.finfo(ce.dtype).tiny)
        return (w * ce).mean()
