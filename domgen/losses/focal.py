"""Losses that focus on hard examples: focal loss and asymmetric loss.

* ``focal``: Lin et al., "Focal loss for dense object detection", ICCV 2017, Eq. 5, in its softmax form
  for single-label classification: ``FL_b = -alpha_{y_b} (1 - p_b)^gamma log p_b`` with p_b the softmax
  probability of the label. The class weights play alpha (Eq. 3-4) and the batch reduces like every domgen
  loss (``domgen.losses.ce.reduce_weighted``). gamma = 0 is the (weighted) cross-entropy; gamma = 2 is
  the paper's choice.
* ``asymmetric``: Ridnik et al., "Asymmetric loss for multi-label classification", ICCV 2021, Eqs. 3-7,
  in its one-vs-rest sigmoid form: each of the K classes is a binary problem (p_k = sigmoid(z_k); the
  label is the one positive, the other K - 1 are negatives), and per example

      L_b = -(1 - p_y)^gamma_pos log p_y - sum_{k != y} p_m,k^gamma_neg log(1 - p_m,k),
      p_m,k = max(p_k - clip, 0)                                   (the probability margin, Eq. 6)

  weighted by ``class_w[y_b]`` and reduced as above. Why this form: it is the loss as the paper defines
  it, and the only one in which all three hyperparameters act. The authors' single-label softmax variant
  (``ASLSingleLabel`` in Alibaba-MIIL/ASL) has no probability margin, and without its built-in label
  smoothing the negatives contribute nothing, so it reduces to focal loss with gamma_pos. The cost is
  that it trains sigmoid scores while the model is evaluated with a softmax; the argmax, and the ranking
  of one class's score across images (AUC), are what the sigmoid scores order as well. With gamma_pos =
  gamma_neg = gamma and clip = 0 it is ``torchvision.ops.sigmoid_focal_loss(alpha=-1)`` summed over the
  classes; its value equals timm's ``AsymmetricLossMultiLabel`` on one-hot targets (tested). The focusing
  weights keep their gradient (timm's default; the authors' repository can detach them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.losses import LOSSES
from domgen.losses.ce import check_reduction, reduce_weighted


def focusing(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for base in [0, 1], with a finite gradient where base is 0 and 0 < gamma < 1.

    The clamp to the smallest normal number changes no value that matters (tiny^gamma is 0 or below
    1e-19 for gamma >= 0.5) and its zero gradient below the clamp keeps ``0 * inf`` out of the backward pass.
    """
    if gamma == 0.0:
        return torch.ones_like(base)
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(gamma)


def _check_gamma(name: str, gamma: float) -> float:
    if not gamma >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {gamma}")
    return float(gamma)


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Softmax focal loss, ``w[y_b] (1 - p_b)^gamma CE_b`` reduced like the cross-entropy (module docstring)."""

    def __init__(self, reduction: str = "weighted_mean", gamma: float = 2.0):
        super().__init__()
        self.reduction, self.gamma = check_reduction(reduction), _check_gamma("focal gamma", gamma)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        ce = F.cross_entropy(logits.float(), y, reduction="none")  # [B] -log p_b
        # 1 - p_b = -expm1(-CE_b): exact where p_b is close to 1 (the easy examples focal loss discounts)
        per = focusing(-torch.expm1(-ce), self.gamma) * ce  # [B]
        return reduce_weighted(per, y, class_w, self.reduction)


@LOSSES.register("asymmetric")
class AsymmetricLoss(nn.Module):
    """One-vs-rest asymmetric loss (ASL), ``w[y_b] L_b`` reduced like the cross-entropy (module docstring).

    Defaults are the paper's (Sec. 4, MS-COCO): gamma_pos = 0, gamma_neg = 4, clip m = 0.05.
    """

    def __init__(self, reduction: str = "weighted_mean", gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                 clip: float = 0.05):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.gamma_pos = _check_gamma("asymmetric gamma_pos", gamma_pos)
        self.gamma_neg = _check_gamma("asymmetric gamma_neg", gamma_neg)
        if not 0.0 <= clip < 1.0:
            raise ValueError(f"asymmetric clip (probability margin) must lie in [0, 1), got {clip}")
        self.clip = float(clip)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        z = logits.float()  # [B, K]
        pos = F.one_hot(y, z.shape[1]).bool()  # [B, K] the label's column
        p = torch.sigmoid(z)
        # positives: -(1 - p)^gamma_pos log p, with log p = logsigmoid(z) and 1 - p = sigmoid(-z)
        l_pos = -focusing(torch.sigmoid(-z), self.gamma_pos) * F.logsigmoid(z)
        # negatives: -p_m^gamma_neg log(1 - p_m); 1 - p_m = min(1 - p + m, 1) >= m keeps the log finite
        if self.clip > 0:
            p_m = (p - self.clip).clamp_min(0.0)
            log_not = torch.log((torch.sigmoid(-z) + self.clip).clamp_max(1.0))
        else:
            p_m, log_not = p, F.logsigmoid(-z)
        l_neg = -focusing(p_m, self.gamma_neg) * log_not
        per = torch.where(pos, l_pos, l_neg).sum(dim=1)  # [B] summed over the K binary problems
        return reduce_weighted(per, y, class_w, self.reduction)
