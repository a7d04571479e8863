"""Label-distribution-aware margin loss and deferred re-weighting (Cao et al., NeurIPS 2019).

* ``ldam`` (Eq. 13): the cross-entropy with the label's logit lowered by a class margin before scaling,
  ``l_b = CE(s (z_b - Delta_{y_b} e_{y_b}), y_b)``, with ``Delta_c = C / n_c^{1/4}`` (Eq. 12) and C set so
  the largest margin (the rarest class's) is ``max_m`` = 0.5, s = 30 (kaidic/LDAM-DRW ``losses.py``).
  n_c are the training pool's class counts, handed over by the algorithm at build (:meth:`LDAMLoss.fit_counts`),
  since the margins follow how many examples of a class there are, not how often a sampler draws them; a
  class absent from the pool gets margin 0 (it is never a label). Class weights weigh each example as in
  every domgen loss. Deviation: Cao et al. put LDAM on a cosine classifier (normalised features and
  weights, logits in [-1, 1], so s = 30 is a temperature that makes them usable); domgen's heads are plain
  linear layers, so s multiplies unnormalised logits and the margins compete with their scale. The
  defaults are the paper's; ``loss.scale=1`` puts the margins on the raw logits instead.
* Deferred re-weighting (Sec. 3.2, Alg. 1), for any loss: the class weights are switched off (the loss is
  the unweighted mean) before epoch ``drw_epoch`` and on from it. Cao et al. re-weight with the
  effective-number weights (beta = 0.9999) from epoch 160 of 200: ``loss.class_weights=effective
  loss.drw_epoch=160`` (``domgen.losses.build_loss`` wraps the loss in :class:`DeferredReweighting`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.losses import LOSSES
from domgen.losses.ce import check_reduction, reduce_weighted


def ldam_margins(counts: np.ndarray, max_m: float = 0.5) -> np.ndarray:
    """[K] margins ``C / n_c^{1/4}`` with the largest equal to ``max_m``; 0 for a class with no example."""
    n = np.asarray(counts, dtype=np.float64)
    if not (n > 0).any():
        raise ValueError("LDAM needs at least one class with examples")
    raw = np.where(n > 0, 1.0 / np.sqrt(np.sqrt(np.where(n > 0, n, 1.0))), 0.0)
    return raw * (max_m / raw.max())


@LOSSES.register("ldam")
class LDAMLoss(nn.Module):
    """``w[y_b] CE(s (z_b - Delta_{y_b} e_{y_b}), y_b)`` reduced like the cross-entropy (module docstring)."""

    def __init__(self, reduction: str = "weighted_mean", max_m: float = 0.5, scale: float = 30.0):
        super().__init__()
        if not max_m > 0 or not scale > 0:
            raise ValueError(f"LDAM needs max_m > 0 and scale > 0, got max_m={max_m}, scale={scale}")
        self.reduction, self.max_m, self.scale = check_reduction(reduction), float(max_m), float(scale)
        self.margins: Tensor | None = None  # [K], from fit_counts

    def fit_counts(self, counts: np.ndarray) -> None:
        """The training pool's class counts [K] (``Algorithm.build`` calls this through ``fit_loss``)."""
        self.margins = torch.as_tensor(ldam_margins(counts, self.max_m), dtype=torch.float32)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        if self.margins is None:
            raise RuntimeError("LDAM's margins need the pool's class counts: call fit_counts (Algorithm.build does)")
        z = logits.float()  # [B, K]
        if self.margins.shape[0] != z.shape[1]:
            raise ValueError(f"LDAM has margins for {self.margins.shape[0]} classes, the logits have {z.shape[1]}")
        delta = self.margins.to(z.device)[y]  # [B] the label's margin
        z = z - F.one_hot(y, z.shape[1]).to(z.dtype) * delta[:, None]  # lower only the label's logit
        per = F.cross_entropy(self.scale * z, y, reduction="none")  # [B]
        return reduce_weighted(per, y, class_w, self.reduction)


class DeferredReweighting(nn.Module):
    """DRW around any classification loss: unweighted before epoch ``drw_epoch``, weighted from it on.

    The epoch comes from ``Algorithm.begin_epoch`` (through ``domgen.losses.loss_begin_epoch``), which the
    trainer calls before every epoch, a resumed one included, so no state needs saving."""

    def __init__(self, loss: nn.Module, drw_epoch: int):
        super().__init__()
        if drw_epoch < 0:
            raise ValueError(f"drw_epoch must be >= 0, got {drw_epoch}")
        self.loss, self.drw_epoch, self.epoch = loss, int(drw_epoch), 0
        self.reduction = getattr(loss, "reduction", None)  # what CCSA and describe() read off a criterion

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = int(epoch)

    @property
    def reweighting(self) -> bool:
        return self.epoch >= self.drw_epoch

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        return self.loss(logits, y, class_w if self.reweighting else None)
