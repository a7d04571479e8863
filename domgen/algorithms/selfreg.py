"""SelfReg: self-supervised contrastive regularisation on same-class pairs, without negatives.

Kim, Yoo, Park, Kim & Lee, "SelfReg: Self-supervised Contrastive Regularization for Domain
Generalization", ICCV 2021 (Sec. 3: individualized in-batch dissimilarity loss, eq. 1-2; heterogeneous
in-batch dissimilarity loss with Mixup, eq. 3-4; the class-specific domain perturbation layer "CDPL";
eq. 5-6), as DomainBed ``algorithms.py`` ``SelfReg`` computes it. On a batch with features z = g(x),
logits o = h(z) and the projection p = cdpl(z):

    j, k  = two random permutations within each class of the batch (same-class partners)
    lam   ~ Beta(0.5, 0.5)                                         (one draw per batch)
    o~    = lam o[j] + (1 - lam) o[k],      p~ = lam p[j] + (1 - lam) p[k]
    L_ind = MSE(o, o[j]) + 0.3 MSE(z, p[j])                        (individualized, logit + feature)
    L_hdl = MSE(o, o~)   + 0.3 MSE(z, p~)                          (heterogeneous: the mixed partner)
    C     = min(L_cls, 1)                                          (a constant: no gradient flows into it)
    loss  = L_cls + C (lam L_ind + (1 - lam) L_hdl)

MSE is the mean over every element (``nn.MSELoss``). The weight C anneals the regulariser with the
classification loss: while L_cls > 1 (early training) the full regulariser applies, and it shrinks as the
classifier fits. The CDPL is DomainBed's: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN, hidden width D for
D = 2048 and 2D otherwise; it lives in ``self.nets["cdpl"]`` and trains in the same optimiser.

Deviations from DomainBed, and why: L_cls is the run's class-weighted criterion (every domgen method keeps
the class weights); DomainBed draws lam with NumPy, domgen with torch's global RNG (saved and restored with
the run); DomainBed sorts the batch by class before the forward pass, domgen pairs within classes without
reordering (every term is a mean over the batch and BatchNorm's statistics ignore order, so the loss has
the same distribution). A class with one image in the batch is its own partner (zero distance), as in
DomainBed. Default sampler ``domain_balanced`` (DomainBed's per-domain minibatches, so same-class partners
come from several domains).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step
from domgen.algorithms.mixing import beta_sample
from domgen.config import AlgorithmConfig

MIX_ALPHA = 0.5  # lam ~ Beta(0.5, 0.5) (DomainBed)
FEAT_WEIGHT = 0.3  # weight of the feature-level distances against the logit-level ones (DomainBed)


def cdpl(d: int) -> nn.Sequential:
    """DomainBed's class-specific domain perturbation layer on D features: [B, D] -> [B, D]."""
    hidden = d if d == 2048 else 2 * d
    return nn.Sequential(
        nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, d), nn.BatchNorm1d(d),
    )


def class_shuffles(y: Tensor) -> tuple[Tensor, Tensor]:
    """Two partner indices [B] (int64, on ``y``'s device): within each class, a random permutation of its
    images. Classes in ascending order, two ``randperm`` per class from torch's global CPU RNG, as DomainBed
    draws them."""
    j, k = torch.empty_like(y), torch.empty_like(y)
    for c in torch.unique(y).tolist():  # sorted
        idx = (y == c).nonzero().squeeze(1)  # [n_c]
        n = idx.shape[0]
        j[idx] = idx[torch.randperm(n).to(y.device)]
        k[idx] = idx[torch.randperm(n).to(y.device)]
    return j, k


@dataclass(frozen=True)
class SelfRegHparams(AlgorithmConfig):
    name: str = "selfreg"
    sampler: str = "domain_balanced"  # DomainBed's per-domain minibatches


@ALGORITHMS.register("selfreg")
class SelfReg(Algorithm):
    """SelfReg: classification + same-class logit/feature distances to (mixed) partners, x min(L_cls, 1)."""

    Hparams = SelfRegHparams
    reference = "Kim et al., ICCV 2021 (eq. 1-6); DomainBed algorithms.py SelfReg"

    def attach(self, model: nn.Module) -> None:
        self.nets["cdpl"] = cdpl(model.h.in_features).to(self.device)

    def draw(self, y: Tensor) -> tuple[float, Tensor, Tensor]:
        """lam ~ Beta(0.5, 0.5), then the two within-class partner indices (torch's global RNG)."""
        lam = float(beta_sample(MIX_ALPHA))
        return (lam, *class_shuffles(y))

    def loss(self, model, batch: Batch) -> Step:
        lam, j, k = self.draw(batch.y)
        logits, z = model.forward_both(batch.x)  # [B, K], [B, D]
        proj = self.nets["cdpl"](z)  # [B, D]
        o, zf, p = logits.float(), z.float(), proj.float()
        o_mix = lam * o[j] + (1 - lam) * o[k]  # [B, K]
        p_mix = lam * p[j] + (1 - lam) * p[k]  # [B, D]
        ind = F.mse_loss(o, o[j]) + FEAT_WEIGHT * F.mse_loss(zf, p[j])
        hdl = F.mse_loss(o, o_mix) + FEAT_WEIGHT * F.mse_loss(zf, p_mix)
        cls = self.criterion(logits, batch.y, self.class_w)
        scale = cls.detach().clamp(max=1.0)  # C = min(L_cls, 1), a constant as DomainBed's .item()
        reg = scale * (lam * ind + (1 - lam) * hdl)
        logs = {"cls": cls, "ind": ind, "hdl": hdl, "c_scale": scale}
        return Step(cls + reg, logs, {"cls": cls, "selfreg": reg}, z)
