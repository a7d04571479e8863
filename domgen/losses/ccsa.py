"""Weighted classification and contrastive semantic alignment (CCSA) loss.

Motiian et al., "Unified deep supervised domain adaptation and generalization", ICCV 2017 (the CCSA
loss and its pairwise L_SA, L_S), with the class-probability weighting of Yoon, Hamarneh & Garbi, MICCAI
2019 (eqs. 1-8; the probabilities come from ``domgen.data.pair_sampler``). For a batch of B pairs
(x1, x2) with features z = g(x), logits h(g(x)) and pair labels pos_b (positive or negative pair):

    L    = (1 - alpha) (L_C1 + L_C2) + alpha (L_SA + L_S)
    L_Ck = sum_b w_k[yk_b] CE(logits_k_b, yk_b) / sum_b w_k[yk_b]           k = 1, 2  (weighted mean)
    L_SA = 1/B sum_b W[y1_b, y2_b] pos_b ||z1_b - z2_b||^2
    L_S  = 1/B sum_b W[y1_b, y2_b] (1 - pos_b) max(0, m - ||z1_b - z2_b||)^2

Two conventions, both supported (``algorithm.alpha``, ``loss.reduction`` and ``loss.weight_norm``, which
normalises the sampler's weights):

* **The authors' code** (chrisjmyoon/iccsa ``agents/toy.py``, ``graphs/loss.py``; the default):
  alpha = 0.1; weights ``cb = sum / count`` divided by their maximum (the rarest class or class pair has
  weight 1, ``inverse_probability_weights(norm="max")``); ``nn.CrossEntropyLoss(weight=...)``, a weighted
  mean that divides by the sum of the weights in the batch; the alignment term ``sum_b W / B * l_b``.
* **The paper's text** says classification and alignment are "balanced equally": alpha = 0.5. domgen 0.1
  used weights normalised to mean 1 under the sampler (``norm="mean"``) with ``mean_b(w CE_b)``
  (``cls_reduction="mean"``) and ``L_C1 + L_C2 + L_SA + L_S``, i.e. alpha = 0.5 times 2.

With max-normalised weights the weighted alignment term is small (the pair weights average about 3e-3
under the sampler at nsec = a on Table 1's counts), which is why the authors' balance and the paper's
text differ by orders of magnitude; turning weighting off (Table 2 rows L-N) makes alignment stronger.
Weights are indexed by class: ``class_w1[y1]``, ``class_w2[y2]``, ``pair_w[y1, y2]``; None = all ones.
The pair label is the sampler's (``Pairs.positive``: y1 == y2, or its branch flag in the authors'
``branch`` mode); without one, pairs are labelled by class equality.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from domgen.losses import LOSSES
from domgen.losses.ce import gather_weights


class CCSALoss(nn.Module):
    """CCSA on pairs, weighted by class probabilities; see the module docstring for the exact formula.

    Args:
        margin: separation margin m (50 for 512-d ResNet features, as in Yoon et al. 2019's code).
        alpha: weight of the alignment terms; 1 - alpha weighs classification (0.1 in the authors' code).
        cls_reduction: reduction of the weighted cross-entropy, ``weighted_mean`` or ``mean``.
        cls_loss: the per-stream classification loss, called as ``loss(logits, y, class_w)``: a module
            (the run's ``loss.*`` choice) or a name in ``LOSSES`` built with ``cls_reduction``.
    """

    def __init__(self, margin: float = 50.0, alpha: float = 0.1, cls_reduction: str = "weighted_mean",
                 cls_loss: str | nn.Module = "ce"):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.margin, self.alpha = float(margin), float(alpha)
        self.cls_loss = LOSSES.get(cls_loss)(reduction=cls_reduction) if isinstance(cls_loss, str) else cls_loss

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
        positive: Tensor | None = None,  # [B] bool pair labels; None = y1 == y2
    ) -> dict[str, Tensor]:
        """Returns loss (total, differentiable), cls (L_C1 + L_C2), align (L_SA), sep (L_S), pos_frac."""
        cls = self.cls_loss(logits1, y1, class_w1) + self.cls_loss(logits2, y2, class_w2)
        pos = (y1 == y2) if positive is None else positive.bool()  # [B]
        diff = z1 - z2  # [B, D]
        # vector_norm's gradient is 0 (not NaN) at a zero distance, so coincident features are safe.
        dist = torch.linalg.vector_norm(diff, dim=1)  # [B]
        sa = diff.pow(2).sum(dim=1)  # [B] squared distance, smooth everywhere
        s = (self.margin - dist).clamp(min=0).pow(2)  # [B] zero once the pair is m apart
        w = gather_weights(pair_w, sa, y1, y2)
        if w is not None:
            sa, s = w * sa, w * s
        zero = torch.zeros_like(sa)
        align = torch.where(pos, sa, zero).mean()
        sep = torch.where(pos, zero, s).mean()
        return {
            "loss": (1.0 - self.alpha) * cls + self.alpha * (align + sep),
            "cls": cls,
            "align": align,
            "sep": sep,
            "pos_frac": pos.float().mean(),
        }
