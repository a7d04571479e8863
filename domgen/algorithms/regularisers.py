"""Regularisers of what the classifier relies on: Spectral Decoupling and Representation Self-Challenging.

**SD** (Pezeshki et al., "Gradient Starvation: A Learning Proclivity in Neural Networks", NeurIPS 2021,
eq. 25 of arXiv 2011.09468; DomainBed ``algorithms.py`` ``SD``): ``L + sd_reg * mean(logits^2)``, the
mean over every logit of the batch ([B, K]); penalising the logits' size keeps the dominant features from
starving the others of gradient. sd_reg 0.1 and its search 10^U(-5, -1) are DomainBed's.

**RSC** (Huang, Wang, Xing & Huang, "Self-Challenging Improves Cross-Domain Generalization", ECCV 2020,
eqs. 1-5 and Sec. 3.3; DomainBed ``algorithms.py`` ``RSC``): on features z = g(x) [B, D],

    G      = d (sum_b logits[b, y_b]) / d z                         (eq. 1: the true-class logit's gradient)
    m_f    = 1[G < q_{1-f}(G_b)]  per sample                          (eq. 2: drop the top-f features by G)
    change = softmax(h(z))[y] - softmax(h(z * m_f))[y]              (Sec. 3.3: the confidence the drop costs)
    mute b = change_b >= q_{1-bf}(change)                           (the top-bf samples by change)
    loss   = L(h(z * m), y),   m_b = m_f,b if b is muted else 1     (eqs. 3-5)

with f = ``f_drop_factor`` and bf = ``b_drop_factor`` (1/3 each, searched in U(0, 0.5), DomainBed's), the
quantiles interpolated linearly as ``np.percentile`` does, L the run's class-weighted criterion. The
masks are constants (no gradient through the choice); the gradient flows through the kept features.
RSC draws nothing at random. For a linear head G_b is the head's row of class y_b, so every sample of a
class drops the same features, as in DomainBed.

Both default to the ``uniform`` sampler (they compare nothing across domains; DomainBed's concatenated
per-domain minibatches only fix the batch's domain mix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig


@dataclass(frozen=True)
class SDHparams(AlgorithmConfig):
    name: str = "sd"
    sampler: str = "uniform"
    sd_reg: float = hparam(0.1, lambda r: float(10 ** r.uniform(-5.0, -1.0)))  # weight of mean(logits^2)


@ALGORITHMS.register("sd")
class SD(Algorithm):
    """Spectral Decoupling: classification + sd_reg x the mean squared logit."""

    Hparams = SDHparams
    reference = "Pezeshki et al., NeurIPS 2021 (eq. 25 of arXiv 2011.09468); DomainBed algorithms.py SD"

    @classmethod
    def problems(cls, hp: SDHparams):
        yield from super().problems(hp)
        if not hp.sd_reg >= 0:
            yield "sd_reg", hp.sd_reg, "must be >= 0"

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)  # [B, K], [B, D]
        cls = self.criterion(logits, batch.y, self.class_w)
        penalty = logits.float().pow(2).mean()
        sd = self.hparams.sd_reg * penalty
        return Step(cls + sd, {"cls": cls, "penalty": penalty}, {"cls": cls, "sd": sd}, z)


@dataclass(frozen=True)
class RSCHparams(AlgorithmConfig):
    name: str = "rsc"
    sampler: str = "uniform"
    f_drop_factor: float = hparam(1 / 3, lambda r: float(r.uniform(0.0, 0.5)))  # features muted per sample
    b_drop_factor: float = hparam(1 / 3, lambda r: float(r.uniform(0.0, 0.5)))  # samples muted per batch


def top_feature_mask(grad: Tensor, f_drop: float) -> Tensor:
    """[B, D] float: 1 for features whose gradient lies below the row's (1 - f_drop) quantile, 0 for the
    top ``f_drop`` share (DomainBed: ``g < np.percentile(g, (1 - f) * 100, axis=1)``)."""
    g = grad.float()
    q = torch.quantile(g, 1.0 - f_drop, dim=1, keepdim=True)  # [B, 1], linear interpolation
    return (g < q).float()


@ALGORITHMS.register("rsc")
class RSC(Algorithm):
    """RSC: mute the features with the top true-class gradients on the samples whose confidence drops most."""

    Hparams = RSCHparams
    reference = "Huang et al., ECCV 2020 (eq. 1-5, Sec. 3.3); DomainBed algorithms.py RSC"

    @classmethod
    def problems(cls, hp: RSCHparams):
        yield from super().problems(hp)
        for key in ("f_drop_factor", "b_drop_factor"):
            if not 0 <= getattr(hp, key) <= 1:
                yield key, getattr(hp, key), "a share: must be in [0, 1]"

    def mask(self, model, z: Tensor, y: Tensor) -> Tensor:
        """[B, D] float mask of eqs. 2-4 and Sec. 3.3 (1 keeps a feature) for features ``z`` and labels ``y``.

        The gradient of eq. 1 is taken through the head alone, at a detached copy of z: it is the same
        gradient (logits = h(z)), needs no retained backbone graph, and exists when the backbone is frozen."""
        hp = self.hparams
        with torch.enable_grad():
            zd = z.detach().requires_grad_(True)
            logits = model.h(zd)  # [B, K]
            (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), zd)  # [B, D] eq. 1
        mask_f = top_feature_mask(grad, hp.f_drop_factor)  # [B, D] eq. 2
        with torch.no_grad():
            p = torch.softmax(logits.float(), dim=1).gather(1, y[:, None])  # [B, 1] true-class confidence
            p_muted = torch.softmax(model.h(zd * mask_f.to(zd.dtype)).float(), dim=1).gather(1, y[:, None])
            change = (p - p_muted).squeeze(1)  # [B]
            keep = change < torch.quantile(change, 1.0 - hp.b_drop_factor)  # [B] samples left whole
        return torch.maximum(mask_f, keep.float()[:, None])  # DomainBed's logical_or

    def loss(self, model, batch: Batch) -> Step:
        z = model.g(batch.x)  # [B, D]
        m = self.mask(model, z, batch.y)
        loss = self.criterion(model.h(z * m.to(z.dtype)), batch.y, self.class_w)
        muted = (m < 1).any(dim=1).float()  # [B] samples with features dropped
        return Step(loss, {"muted_frac": muted.mean(), "dropped_frac": 1.0 - m.mean()})
