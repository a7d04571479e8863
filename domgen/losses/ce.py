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


def check_reduction(reduction: str) -> str:
    if reduction not in CLS_REDUCTIONS:
        raise ValueError(f"classification reduction must be one of {', '.join(CLS_REDUCTIONS)}, got {reduction!r}")
    return reduction


def reduce_weighted(per_sample: Tensor, y: Tensor, class_w: Tensor | None, reduction: str) -> Tensor:
    """The batch loss from per-sample losses [B], each weighted by its class's weight ``class_w[y_b]``.

    ``weighted_mean`` (``nn.CrossEntropyLoss(weight=w)``, the authors' code): ``sum_b w[y_b] l_b /
    sum_b w[y_b]``, invariant to the scale of w. ``mean`` (domgen 0.1): ``mean_b(w[y_b] l_b)``, whose scale
    follows the weights' normalisation. Unweighted (w None): ``mean_b l_b``. Every classification loss of
    domgen reduces this way, so its class weights mean the same thing whichever loss a run chooses.
    """
    w = gather_weights(class_w, per_sample, y)
    if w is None:
        return per_sample.mean()
    if reduction == "weighted_mean":
        return (w * per_sample).sum() / w.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)
    return (w * per_sample).mean()


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Class-weighted cross-entropy; w = None is plain cross-entropy.

    ``weighted_mean`` (default; ``nn.CrossEntropyLoss(weight=w)``, the authors' code):
    ``sum_b w[y_b] CE_b / sum_b w[y_b]``, invariant to the scale of w. ``mean`` (domgen 0.1):
    ``mean_b(w[y_b] CE_b)``, whose scale follows the weights' normalisation.
    """

    def __init__(self, reduction: str = "weighted_mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")  # [B]
        return reduce_weighted(ce, y, class_w, self.reduction)


@LOSSES.register("label_smoothing")
class LabelSmoothing(CrossEntropy):
    """Cross-entropy against smoothed targets (Szegedy et al., CVPR 2016, Sec. 7): the target puts
    1 - smoothing on the label and smoothing / K on every class (the label included), as
    ``F.cross_entropy(label_smoothing=...)`` does: ``l_b = (1 - e) CE_b + e / K sum_k -log p_bk``.

    Class weights weigh each example's whole loss (``w[y_b] l_b``, reduced like every domgen loss), the
    importance weight of the example's class. torch's ``weight=`` instead weighs the smoothing term's
    k-th part by ``w_k``; the two agree when the weights are all equal.
    """

    def __init__(self, reduction: str = "weighted_mean", smoothing: float = 0.1):
        super().__init__(reduction)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must lie in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        per = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.smoothing)  # [B]
        return reduce_weighted(per, y, class_w, self.reduction)
