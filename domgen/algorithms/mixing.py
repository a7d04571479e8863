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

**MixStyle** (Zhou, Yang, Qiao & Xiang, "Domain Generalization with MixStyle", ICLR 2021, eqs. 1-5; the
authors' ``mixstyle-release`` ``MixStyle`` module; DomainBed has no MixStyle): after each named backbone
stage (``stages``, children of ``model.g``: ResNet's layer1..layer4; default layer1,layer2, the authors'
``ms_l12`` ResNet variant), with probability p per stage and batch, each sample's per-channel statistics
are mixed with a partner's:

    mu, sig = mean and sqrt(var + eps) over H, W of x [B, C, H, W]     (detached, as the authors' code)
    x'      = (x - mu) / sig * (lam sig + (1 - lam) sig[perm]) + lam mu + (1 - lam) mu[perm]
    lam     ~ Beta(alpha, alpha) per sample

``mode`` "random": perm is a random permutation of the batch; "crossdomain": each sample's partner is
drawn from another domain of the batch (``other_domain_partners``, as Mixup's; the authors' code instead
swaps the two halves of a batch built from two domains). The statistics are mixed in the forward hooks
registered by ``attach`` and act only while the stage is in training mode (evaluation sees the model
unchanged); the loss is the run's classification loss. p 0.5, alpha 0.1, eps 1e-6 are the authors'
defaults (the searches of p and alpha are domgen's). Default mode "crossdomain" with the
``domain_balanced`` sampler, so partners come from other domains (the paper's "domain label" variant;
its random shuffle is ``mode=random``). All draws use torch's global RNG (saved and restored with the run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig
from domgen.errors import ConfigError

MIX_MODES = ("crossdomain", "random")


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
    """Mixup across domains: images mixed with partners of other domains, the loss mixed with the same lam."""

    Hparams = MixupHparams
    reference = "Yan et al., arXiv 2001.00677 2020 (Zhang et al., ICLR 2018 eq. 1); DomainBed algorithms.py Mixup"
    needs_backbone = "mixes the images before the backbone (g of a mixed image is not the mix of their g)"

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
        cross = (batch.domain != batch.domain[j]).float().mean()  # share of images mixed across domains
        return Step(loss, {"lam": torch.tensor(lam, device=logits.device), "cross_domain": cross})


def mix_style(x: Tensor, lam: Tensor, perm: Tensor, eps: float) -> Tensor:
    """MixStyle of feature maps x [B, C, H, W] with weights lam [B] and partners perm [B] (eqs. 1-5),
    computed in at least float32 and returned in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    mu = xf.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    sig = (xf.var(dim=(2, 3), keepdim=True) + eps).sqrt()  # unbiased variance, as the authors' code
    mu, sig = mu.detach(), sig.detach()  # the statistics are not trained through (authors' code)
    lam = lam.to(xf).view(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return ((xf - mu) / sig * sig_mix + mu_mix).to(x.dtype)


def stage_names(stages: str) -> list[str]:
    return [s.strip() for s in stages.split(",") if s.strip()]


@dataclass(frozen=True)
class MixStyleHparams(AlgorithmConfig):
    name: str = "mixstyle"
    sampler: str = "domain_balanced"  # crossdomain partners need several domains per batch
    stages: str = "layer1,layer2"  # comma-separated children of model.g after which styles are mixed
    p: float = hparam(0.5, lambda r: float(r.uniform(0.1, 0.9)))  # probability of mixing, per stage and batch
    alpha: float = hparam(0.1, lambda r: float(r.choice([0.1, 0.2, 0.3, 0.4])))  # lam ~ Beta(alpha, alpha)
    eps: float = 1e-6  # added to the variance
    mode: str = "crossdomain"  # crossdomain | random


@ALGORITHMS.register("mixstyle")
class MixStyle(Algorithm):
    """MixStyle: named backbone stages mix per-sample channel statistics with a partner's while training."""

    Hparams = MixStyleHparams
    reference = "Zhou et al., ICLR 2021 (eq. 1-5); authors' mixstyle-release MixStyle (not in DomainBed)"
    # (a probe's g in evaluation mode already mutes its hooks: under lp, with or without precompute, it is ERM)
    needs_backbone = "mixes feature statistics inside the backbone's stages"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._domain: Tensor | None = None  # the batch's domains while loss() runs the forward pass
        self._handles: list = []

    @classmethod
    def problems(cls, hp: MixStyleHparams):
        yield from super().problems(hp)
        if not stage_names(hp.stages):
            yield "stages", hp.stages, "names of backbone stages (children of model.g), e.g. layer1,layer2"
        if not 0 <= hp.p <= 1:
            yield "p", hp.p, "a probability: must be in [0, 1]"
        for key in ("alpha", "eps"):
            if not getattr(hp, key) > 0:
                yield key, getattr(hp, key), "must be > 0"
        if hp.mode not in MIX_MODES:
            yield "mode", hp.mode, " | ".join(MIX_MODES)

    def attach(self, model: nn.Module) -> None:
        """A forward hook after each named stage of ``model.g``; an unknown name fails listing the stages."""
        children = dict(model.g.named_children())
        names = stage_names(self.hparams.stages)
        unknown = [n for n in names if n not in children]
        if unknown:
            raise ConfigError(f"algorithm.stages: {', '.join(unknown)} not a stage of this backbone; "
                              f"its stages (children of model.g): {', '.join(children) or 'none'}")
        for handle in self._handles:  # attached again (a new model): the old hooks go
            handle.remove()
        self._handles = [children[n].register_forward_hook(self._hook) for n in names]

    def draw(self, b: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """None (no mixing, probability 1 - p), else lam [B] ~ Beta(alpha, alpha) and the partners [B]."""
        hp = self.hparams
        if float(torch.rand(())) >= hp.p:
            return None
        lam = beta_sample(hp.alpha, (b,)).to(device)
        if hp.mode == "crossdomain" and self._domain is not None:
            return lam, other_domain_partners(self._domain)
        return lam, torch.randperm(b).to(device)

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> Tensor | None:
        if not module.training:  # evaluation: the stage's output unchanged
            return None
        if output.dim() != 4:
            raise ValueError(f"MixStyle needs [B, C, H, W] feature maps after its stages, got {tuple(output.shape)}")
        drawn = self.draw(output.shape[0], output.device)
        return None if drawn is None else mix_style(output, *drawn, self.hparams.eps)

    def loss(self, model, batch: Batch) -> Step:
        self._domain = batch.domain
        try:
            logits = model(batch.x)  # [B, K], the hooks mixing styles on the way
        finally:
            self._domain = None
        return Step(self.criterion(logits, batch.y, self.class_w))
