"""Weighted classification and contrastive semantic alignment (CCSA) loss.

Motiian et al., "Unified deep supervised domain adaptation and generalization", ICCV 2017 (the CCSA
loss and its pairwise L_SA, L_S), with the class-probability weighting of Yoon, Hamarneh & Garbi, MICCAI
2019 (eqs. 1-8; the probabilities come from ``domgen.data.pair_sampler``). For a batch of B pairs
(x1, x2) with features z = g(x) and logits h(g(x)):

    L = L_C1 + L_C2 + L_SA + L_S
    L_Ck = 1/B sum_b w_k[yk_b] CE(logits_k_b, yk_b)                        k = 1, 2
    L_SA = 1/B sum_b W[y1_b, y2_b] 1[y1_b == y2_b] ||z1_b - z2_b||^2
    L_S  = 1/B sum_b W[y1_b, y2_b] 1[y1_b != y2_b] max(0, m - ||z1_b - z2_b||)^2

Conventions, chosen to match the reference implementation of Motiian et al. (Keras: categorical
cross-entropy plus a contrastive loss ``mean(y d^2 + (1 - y) max(m - d, 0)^2)``, without the 1/2 the
paper puts in d and k):

* Classification and alignment are balanced equally: this is ``(1 - alpha) L_C + alpha (L_SA + L_S)``
  with alpha = 0.5, times 2 (a factor the learning rate absorbs).
* Every term is averaged over all B pairs (not over the same- or different-class pairs alone, and not
  divided by the sum of the weights as ``F.cross_entropy(weight=...)`` does). With weights normalised to
  mean 1 under the sampler (``PairSampler.class_weights`` / ``pair_weights``), each weighted term is then
  an unbiased estimate of the class-balanced loss and its scale does not move when weighting is on.
* Weights are indexed by class: ``class_w1[y1]``, ``class_w2[y2]``, ``pair_w[y1, y2]``; None = all ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.losses import LOSSES


def _gather(weights: Tensor | None, ref: Tensor, *index: Tensor) -> Tensor | None:
    """``weights[index]`` on ``ref``'s device and dtype, or None when unweighted."""
    if weights is None:
        return None
    return torch.as_tensor(weights, device=ref.device, dtype=ref.dtype)[index]


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Per-sample weighted cross-entropy, ``mean_b(w[y_b] CE_b)``; w = None is plain cross-entropy."""

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")  # [B]
        w = _gather(class_w, ce, y)
        return (ce if w is None else w * ce).mean()


@LOSSES.register("ccsa")
class CCSALoss(nn.Module):
    """CCSA on pairs, weighted by class probabilities; see the module docstring for the exact formula.

    Args:
        margin: separation margin m (50 for 512-d ResNet features, as in Yoon et al. 2019).
        cls_loss: name in ``LOSSES`` of the per-stream classification loss, called as
            ``loss(logits, y, class_w)``; "ce" is the weighted cross-entropy of Yoon et al.
    """

    def __init__(self, margin: float = 50.0, cls_loss: str = "ce"):
        super().__init__()
        self.margin = float(margin)
        self.cls_loss = LOSSES.get(cls_loss)()

    def forward(
        self,
        logits1: Tensor,  # [B, K]
        logits2: Tensor,  # [B, K]
        z1: Tensor,  # [B, D]
        z2: Tensor,  # [B, D]
        y1: Tensor,  # [B]
        y2: Tensor,  # [B]
        class_w1: Tensor | None = None,  # [K]
        class_w2: Tensor | None = None,  # [K]
        pair_w: Tensor | None = None,  # [K, K]
    ) -> dict[str, Tensor]:
        """Returns loss (total, differentiable), cls (L_C1 + L_C2), align (L_SA), sep (L_S), pos_frac."""
        cls = self.cls_loss(logits1, y1, class_w1) + self.cls_loss(logits2, y2, class_w2)
        same = y1 == y2  # [B]
        diff = z1 - z2  # [B, D]
        # vector_norm's gradient is 0 (not NaN) at a zero distance, so coincident features are safe.
        dist = torch.linalg.vector_norm(diff, dim=1)  # [B]
        sa = diff.pow(2).sum(dim=1)  # [B] squared distance, smooth everywhere
        s = (self.margin - dist).clamp(min=0).pow(2)  # [B] zero once the pair is m apart
        w = _gather(pair_w, sa, y1, y2)
        if w is not None:
            sa, s = w * sa, w * s
        zero = torch.zeros_like(sa)
        align = torch.where(same, sa, zero).mean()
        sep = torch.where(same, zero, s).mean()
        return {
            "loss": cls + align + sep,
            "cls": cls,
            "align": align,
            "sep": sep,
            "pos_frac": same.float().mean(),
        }
