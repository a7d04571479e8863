"""Distribution matching between training domains: Deep CORAL and MMD, as DomainBed's ``AbstractMMD``.

Both add to the classification loss a penalty on the features z [B, D] that compares every pair of
domains present in the batch, averaged over the pairs, weighted by ``mmd_gamma``::

    loss = criterion(logits, y, class_w) + mmd_gamma * mean_{i<j} div(z_i, z_j)

* ``coral``: Deep CORAL (Sun & Saenko, ECCV-W 2016, eq. 1) as DomainBed's ``CORAL`` (``AbstractMMD`` with
  ``gaussian=False``): ``div = mean_d (mu_x - mu_y)_d^2 + mean_{d,e} (C_x - C_y)_{de}^2`` with the unbiased
  covariances ``C = (z - mu)^T (z - mu) / (n - 1)``; that is ``||mu_x - mu_y||^2 / D + ||C_x - C_y||_F^2 / D^2``.
  Sun & Saenko's eq. 1 is ``||C_S - C_T||_F^2 / (4 D^2)`` alone; DomainBed adds the means' term and drops
  the 1/4, and domgen follows DomainBed so that its searched ``mmd_gamma`` means the same.
* ``mmd``: the maximum mean discrepancy (Gretton et al., JMLR 2012, the biased estimate MMD_b) with
  DomainBed's kernel, a sum of Gaussians over bandwidths ``gamma`` in 1e-3 .. 1e3:
  ``k(x, y) = sum_g exp(-g ||x - y||^2)``; ``div = mean K_xx + mean K_yy - 2 mean K_xy`` (Li et al.,
  CVPR 2018, MMD-AAE, is DomainBed's citation).

Deviations from DomainBed, and why:
* The classification term is the run's criterion on the whole batch (class weights included, as for every
  domgen method) rather than the mean of per-domain cross-entropies; with the default sampler the
  domains are equally represented in expectation, so the two agree in expectation up to class weights.
* DomainBed draws one equal minibatch per domain; domgen's default sampler here is ``domain_balanced``
  (each draw picks a domain uniformly, then an image), so a batch holds each domain about equally often
  but not exactly. A domain with fewer than two images in the batch is left out of the pairs (its
  covariance's 1/(n - 1) is undefined; for MMD the same rule keeps the two methods' pairs alike); with
  fewer than two such domains the penalty is 0.
* The penalty is computed in float32 with autocast off: under bf16 a covariance or a squared distance of
  nearby features loses most of its digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig

# DomainBed's AbstractMMD.gaussian_kernel bandwidths: exp(-g ||x - y||^2) summed over these g.
MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
MIN_IMAGES = 2  # a domain needs this many images in the batch to enter the pairs (covariance / (n - 1))


def _mmd_gamma():
    """DomainBed's ``mmd_gamma``: default 1, searched log-uniformly in [0.1, 10]."""
    return hparam(1.0, lambda r: float(10 ** r.uniform(-1.0, 1.0)))


def coral_divergence(x: Tensor, y: Tensor) -> Tensor:
    """DomainBed's mean-and-covariance distance of features x [n, D] and y [m, D] (n, m >= 2): the mean
    squared difference of the means plus that of the unbiased covariances [D, D]."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)  # [1, D]
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = cent_x.t() @ cent_x / (len(x) - 1)  # [D, D]
    cova_y = cent_y.t() @ cent_y / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """[n, m] ||x_i - y_j||^2, clamped at 1e-30 as DomainBed's ``my_cdist`` (cancellation can go below 0)."""
    xx, yy = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)  # [n, 1], [m, 1]
    return (xx + yy.t() - 2 * x @ y.t()).clamp_min(1e-30)


def gaussian_kernel(x: Tensor, y: Tensor, gammas: tuple[float, ...] = MMD_GAMMAS) -> Tensor:
    """[n, m] sum over g of exp(-g ||x_i - y_j||^2)."""
    d = squared_distances(x, y)
    return sum(torch.exp(-g * d) for g in gammas)


def mmd_divergence(x: Tensor, y: Tensor) -> Tensor:
    """The biased estimate of MMD^2 between features x [n, D] and y [m, D] under :func:`gaussian_kernel`."""
    return gaussian_kernel(x, x).mean() + gaussian_kernel(y, y).mean() - 2 * gaussian_kernel(x, y).mean()


def pairwise_penalty(z: Tensor, domain: Tensor, divergence: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """The mean of ``divergence`` over every pair of domains with at least :data:`MIN_IMAGES` images in
    the batch (features z [B, D], domain [B]); 0 when fewer than two domains qualify. Float32, no autocast."""
    ids, counts = torch.unique(domain, return_counts=True)
    kept = ids[counts >= MIN_IMAGES].tolist()  # one host sync per step: which domains take part
    if len(kept) < 2:  # a zero that stays in the graph: the engine differentiates each term w.r.t. z
        return z.float().mul(0.0).sum()
    with torch.autocast(z.device.type, enabled=False):
        zf = z.float()
        groups = [zf[domain == d] for d in kept]
        terms = [divergence(groups[i], groups[j]) for i in range(len(groups)) for j in range(i + 1, len(groups))]
        return torch.stack(terms).mean()


@dataclass(frozen=True)
class CORALHparams(AlgorithmConfig):
    name: str = "coral"
    sampler: str = "domain_balanced"  # DomainBed draws equal minibatches per domain
    mmd_gamma: float = _mmd_gamma()  # weight of the pairwise penalty (DomainBed's name, shared with MMD)


@dataclass(frozen=True)
class MMDHparams(AlgorithmConfig):
    name: str = "mmd"
    sampler: str = "domain_balanced"  # DomainBed draws equal minibatches per domain
    mmd_gamma: float = _mmd_gamma()


class PairwiseMatching(Algorithm):
    """Classification plus ``mmd_gamma`` times the mean pairwise divergence between the batch's domains."""

    divergence: ClassVar[Callable[[Tensor, Tensor], Tensor]]
    shapes_features = True  # it aligns the features: the projector shows them by domain and class

    @classmethod
    def problems(cls, hp):
        yield from super().problems(hp)
        if not hp.mmd_gamma >= 0:
            yield "mmd_gamma", hp.mmd_gamma, "must be >= 0"

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)  # [B, K], [B, D]
        cls = self.criterion(logits, batch.y, self.class_w)
        penalty = pairwise_penalty(z, batch.domain, type(self).divergence)
        weighted = self.hparams.mmd_gamma * penalty
        return Step(cls + weighted, {"cls": cls, "penalty": penalty}, {"cls": cls, "penalty": weighted}, z)


@ALGORITHMS.register("coral")
class CORAL(PairwiseMatching):
    """Deep CORAL: match every pair of domains' feature means and covariances."""

    Hparams = CORALHparams
    divergence = staticmethod(coral_divergence)
    reference = "Sun & Saenko, ECCV-W 2016 (eq. 1) + mean term; DomainBed algorithms.py CORAL (AbstractMMD)"


@ALGORITHMS.register("mmd")
class MMD(PairwiseMatching):
    """MMD: match every pair of domains' feature distributions under a sum of Gaussian kernels."""

    Hparams = MMDHparams
    divergence = staticmethod(mmd_divergence)
    reference = "Gretton et al., JMLR 2012 (MMD_b); Li et al., CVPR 2018; DomainBed algorithms.py MMD (AbstractMMD)"
