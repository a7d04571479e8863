"""Methods that mix samples across domains: inter-domain Mixup and MixStyle.

**Mixup** (Yan et al., "Improve unsupervised domain adaptation with mixup training", arXiv 2001.00677,
2020; Wang et al., arXiv 1912.01805; Zhang et al., ICLR 2018, eq. 1; DomainBed ``algorithms.py``
``Mixup``): each image x_i is mixed with a partner x_j drawn from ANOTHER domain of the batch,
``x~ = lam x_i + (1 - lam) x_j`` with lam ~ Beta(alpha, alpha), and the loss is
``lam L(f(x~), y_i) + (1 - lam) L(f(x~), y_j)`` with the run's class-weighted criterion L.

Deviations from DomainBed, and why: DomainBed pairs whole per-domain minibatches (domain d with the next
domain of a random cyclic order, truncated to the shorter) and draws one lam per pair of domains. domgen's
batches mix domains (``domain_balanced`` draws each image's domain at random), so each image gets its own
partner, uniform among the batch's images of other domains (torch's global RNG), and one lam per batch.
A batch that holds a single domain has no other domain to mix with: its images are paired WITHIN the
batch (each with another image, uniformly), i.e. plain within-batch mixup (Zhang et al.), so the
regulariser never silently switches off. Default sampler ``domain_balanced`` (DomainBed draws equal
per-domain minibatches, so every batch mixes domains); alpha 0.2 and its search 10^U(-1, 1) are
DomainBed's ``mixup_alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig


def other_domain_partners(domain: Tensor) -> Tensor:
    """[B] int64: each image's partner, uniform among the batch's images of another domain (torch's global
    RNG on ``domain``'s device). A batch of one domain pairs each image with another image of the batch;
    a batch of one image pairs it with itself."""
    b = domain.shape[0]
    other = domain[:, None] != domain[None, :]  # [B, B] j is of another domain than i
    if not bool(other.any()):  # one domain in the batch: every row is empty, pair within the batch
        other = ~torch.eye(b, dtype=torch.bool, device=domain.device) if b > 1 else torch.ones_like(other)
    return torch.multinomial(other.float(), 1).squeeze(1)  # [B]


def beta_sample(alpha: float, shape: tuple[int, ...] = ()) -> Tensor:
    """Beta(alpha, alpha) draws on the CPU from torch's global RNG (float32, ``shape``)."""
    a = torch.tensor(float(alpha))
    return torch.distributions.Beta(a, a).sample(shape)


@dataclass(frozen=True)
class MixupHparams(AlgorithmConfig):
    name: str = "mixup"
    sampler: str = "domain_balanced"  # DomainBed's per-domain minibatches: batches hold several domains
    alpha: float = hparam(0.2, lambda r: float(10 ** r.uniform(-1.0, 1.0)))  # lam ~ Beta(alpha, alpha)


@ALGORITHMS.register("mixup")
class Mixup(Algorithm):
    """Inter-domain Mixup: images mixed with partners of other domains, the loss mixed with the same lam."""

    Hparams = MixupHparams
    reference = "Yan et al., arXiv 2001.00677 2020 (inter-domain mixup; Zhang et al. ICLR 2018 eq. 1); DomainBed algorithms.py Mixup"

    @classmethod
    def problems(cls, hp: MixupHparams):
        yield from super().problems(hp)
        if not hp.alpha > 0:
            yield "alpha", hp.alpha, "the Beta distribution's parameter: must be > 0"

    def draw(self, domain: Tensor) -> tuple[float, Tensor]:
        """lam ~ Beta(alpha, alpha) and the partners [B] (torch's global RNG, lam first)."""
        lam = float(beta_sample(self.hparams.alpha))
        return lam, other_domain_partners(domain)

    def loss(self, model, batch: Batch) -> Step:
        lam, j = self.draw(batch.domain)
        x = lam * batch.x + (1.0 - lam) * batch.x[j]  # [B, 3, s, s]
        logits = model(x)  # [B, K]
        own = self.criterion(logits, batch.y, self.class_w)
        partner = self.criterion(logits, batch.y[j], self.class_w)
        loss = lam * own + (1.0 - lam) * partner
        return Step(loss, {"lam": torch.tensor(lam, device=logits.device), "cross_domain": (batch.domain != batch.domain[j]).float().mean()})
