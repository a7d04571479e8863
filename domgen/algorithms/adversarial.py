"""Domain-adversarial training: DANN (Ganin et al., JMLR 2016) and CDANN (Li et al., ECCV 2018).

A discriminator MLP (DomainBed's ``networks.MLP``: ``mlp_width``, ``mlp_depth`` layers, ``mlp_dropout``)
reads the features z [B, D] and predicts each image's training domain; the features learn to defeat it.
CDANN conditions the discriminator on the class: it reads ``z + E[y]``, a learnt class embedding E [K, D]
that trains with the discriminator (DomainBed's ``class_embeddings``), so it is P(domain | z, y) the
features are made uninformative about, not P(domain | z).

domgen trains with one optimiser and one backward per step, so the min-max game is played with a gradient
reversal layer (Ganin et al., sec. 4.2): identity forward, ``-lambda_p`` times the gradient
backward. The step loss is ``criterion(logits, y, class_w) + L_d``: the discriminator (and E) descend
``L_d`` while the backbone receives ``-lambda_p dL_d/dz``, the generator step of DomainBed's
``cls - lambda L_d`` at every step. ``lambda_p = lambda_max (2 / (1 + exp(-10 p)) - 1)`` (Ganin et al.,
sec. 5.2.2) with p the training progress in [0, 1] (epoch from ``begin_epoch`` plus the fraction of the
epoch's steps taken, a counter kept in the state); ``schedule=constant`` keeps ``lambda_max`` throughout,
as DomainBed does.

The discriminator's loss ``L_d`` is a weighted cross-entropy whose weights sum to 1 over the batch:
* DANN: every domain present in the batch weighs the same, ``w_i = 1 / (M n_{d_i})`` (M domains present,
  n_d images of domain d), so a discriminator that guesses the majority domain gains nothing. With
  DomainBed's equal per-domain minibatches this is its plain mean cross-entropy.
* CDANN: every class present in at least two domains of the batch weighs the same and, within it, every
  domain holding it: ``w_i = 1 / (C' M_{y_i} n_{y_i, d_i})``. DomainBed weights by the class alone
  (``1 / (n_y K)``, summed) and relies on equal per-domain minibatches for the domains; domgen's weights
  balance the domains within each class under any sampler. A class seen in only one domain of the batch
  gets weight 0: there the label alone names the domain (skin datasets lack classes), so the features have
  nothing to hide, and a reversed gradient would only push them against the label's prior.
With fewer than two domains present (DANN) or no class in two domains (CDANN), ``L_d = 0``.

Deviations from DomainBed, and why:
* No alternation of ``d_steps_per_g_step`` discriminator steps per generator step, no separate Adam
  (``lr_d``, ``lr_g``, ``beta1``, ``weight_decay_d``/``_g``): the discriminator's parameters are a second
  group of the run's optimiser (``Algorithm.param_groups``) and both players move every step.
* No gradient penalty on the discriminator's input (DomainBed's ``grad_penalty``, default 0): it needs a
  double backward the one-backward engine does not take.
* Ganin's schedule of lambda by default (DomainBed keeps lambda constant: ``schedule=constant``).
* The default sampler is ``domain_balanced`` (DomainBed draws an equal minibatch per domain): each draw
  picks a domain uniformly, then an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig

SCHEDULES = ("ganin", "constant")


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-lam`` (Ganin et al., sec. 4.2)."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * -ctx.lam, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """``x`` in the forward pass; ``-lam`` times the gradient in the backward pass."""
    return GradReverse.apply(x, lam)


def ganin_lambda(p: float, lambda_max: float = 1.0) -> float:
    """Ganin et al.'s adaptation factor ``lambda_max (2 / (1 + exp(-10 p)) - 1)`` at progress p in [0, 1]:
    0 at the start (the discriminator is random noise), close to ``lambda_max`` from p ~ 0.5."""
    p = min(max(p, 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


def discriminator(n_in: int, n_out: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """DomainBed's ``networks.MLP``: Linear-Dropout-ReLU, ``depth - 2`` hidden Linear-Dropout-ReLU, Linear."""
    layers: list[nn.Module] = [nn.Linear(n_in, width), nn.Dropout(dropout), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(width, width), nn.Dropout(dropout), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out))


def balanced_weights(domain: Tensor, group: Tensor, n_groups: int, n_domains: int) -> Tensor:
    """[B] weights summing to 1 (or all 0): each group (class) present in >= 2 domains weighs the same,
    each domain within it the same, each image within a (group, domain) cell the same; other images 0.
    DANN passes a single group. No host sync: counts by ``bincount`` on the device."""
    cell = group * n_domains + domain  # [B] index of the (group, domain) cell
    counts = torch.bincount(cell, minlength=n_groups * n_domains).view(n_groups, n_domains)  # [G, M]
    domains_per_group = (counts > 0).sum(1)  # [G] M_g
    eligible = domains_per_group >= 2  # [G]
    n_eligible = eligible.sum().clamp_min(1)  # C'
    per_image = 1.0 / (n_eligible * domains_per_group[group].clamp_min(1) * counts[group, domain]).float()
    return torch.where(eligible[group], per_image, torch.zeros_like(per_image))


@dataclass(frozen=True)
class DANNHparams(AlgorithmConfig):
    name: str = "dann"
    sampler: str = "domain_balanced"  # DomainBed draws an equal minibatch per domain
    lambda_max: float = hparam(1.0, lambda r: float(10 ** r.uniform(-2.0, 2.0)))  # DomainBed's "lambda"
    schedule: str = "ganin"  # ganin: lambda_max (2 / (1 + exp(-10 p)) - 1) | constant: DomainBed's
    mlp_width: int = hparam(256, lambda r: int(2 ** r.uniform(6.0, 10.0)))  # the discriminator's (DomainBed)
    mlp_depth: int = hparam(3, lambda r: int(r.choice([3, 4, 5])))  # its Linear layers
    mlp_dropout: float = hparam(0.0, lambda r: float(r.choice([0.0, 0.1, 0.5])))


@dataclass(frozen=True)
class CDANNHparams(DANNHparams):
    name: str = "cdann"


@ALGORITHMS.register("dann")
class DANN(Algorithm):
    """DANN: classification plus a domain discriminator that reads the features through a gradient reversal layer."""

    Hparams = DANNHparams
    conditional: ClassVar[bool] = False  # CDANN: the discriminator reads z + E[y]
    shapes_features = True  # it aligns the features: the projector shows them by domain and class
    reference = "Ganin et al., JMLR 2016 (GRL sec. 4.2, lambda_p sec. 5.2.2); DomainBed algorithms.py DANN"

    def __init__(self, hparams, *args, **kwargs):
        super().__init__(hparams, *args, **kwargs)
        self.epoch_step = 0  # training steps taken in the current epoch (reset by begin_epoch)
        self.steps_per_epoch = 0  # the length of the last epoch of batches listed

    @classmethod
    def problems(cls, hp):
        yield from super().problems(hp)
        if not hp.lambda_max >= 0:
            yield "lambda_max", hp.lambda_max, "must be >= 0"
        if hp.schedule not in SCHEDULES:
            yield "schedule", hp.schedule, " | ".join(SCHEDULES)
        if not hp.mlp_width >= 1:
            yield "mlp_width", hp.mlp_width, "must be >= 1"
        if not hp.mlp_depth >= 2:
            yield "mlp_depth", hp.mlp_depth, "must be >= 2 (input and output layers)"
        if not 0 <= hp.mlp_dropout < 1:
            yield "mlp_dropout", hp.mlp_dropout, "must be in [0, 1)"

    def attach(self, model: nn.Module) -> None:
        """The discriminator D -> number of the pool's domains (and CDANN's class embedding K x D)."""
        hp, dim = self.hparams, model.h.in_features
        n_domains = len(self.sampler.pool.domain_names)
        self.nets["discriminator"] = discriminator(dim, n_domains, hp.mlp_width, hp.mlp_depth, hp.mlp_dropout)
        if self.conditional:
            self.nets["class_embedding"] = nn.Embedding(model.h.out_features, dim)
        self.nets.to(self.device)

    def batches(self, epoch: int, batch_size: int):
        draws = super().batches(epoch, batch_size)
        self.steps_per_epoch = len(draws)  # the trainer lists an epoch's batches before it trains it
        return draws

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        super().begin_epoch(epoch, epochs)
        self.epoch_step = 0

    def progress(self) -> float:
        """p in [0, 1]: epochs done plus the share of this epoch's steps taken, over all epochs."""
        within = min(self.epoch_step / self.steps_per_epoch, 1.0) if self.steps_per_epoch else 0.0
        return min(max((self.epoch + within) / max(self.epochs, 1), 0.0), 1.0)

    def lambda_now(self) -> float:
        hp = self.hparams
        return ganin_lambda(self.progress(), hp.lambda_max) if hp.schedule == "ganin" else hp.lambda_max

    def adversary(self, z: Tensor, batch: Batch, lam: float) -> tuple[Tensor, Tensor]:
        """The discriminator's weighted loss L_d (through the reversal) and its weighted accuracy."""
        if "discriminator" not in self.nets:
            raise RuntimeError(f"{self.hparams.name}: call attach(model) before training (it makes the discriminator)")
        h = grad_reverse(z, lam)  # [B, D]: the features get -lam dL_d/dz
        if self.conditional:
            h = h + self.nets["class_embedding"](batch.y).to(h.dtype)  # E trains with the discriminator
        out = self.nets["discriminator"](h).float()  # [B, M] domain logits
        n_groups = self.nets["class_embedding"].num_embeddings if self.conditional else 1
        group = batch.y if self.conditional else torch.zeros_like(batch.domain)
        w = balanced_weights(batch.domain, group, n_groups, out.shape[1])  # [B], sums to 1 or 0
        loss = (w * F.cross_entropy(out, batch.domain, reduction="none")).sum()
        acc = (w * (out.argmax(1) == batch.domain).float()).sum().detach()
        return loss, acc

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)  # [B, K], [B, D]
        cls = self.criterion(logits, batch.y, self.class_w)
        lam = self.lambda_now()
        if torch.is_grad_enabled():  # a training step: the schedule moves on
            self.epoch_step += 1
        adv, acc = self.adversary(z, batch, lam)
        logs = {"cls": cls, "adv": adv, "disc_acc": acc, "lambda": torch.tensor(lam, device=cls.device)}
        return Step(cls + adv, logs, {"cls": cls, "adv": adv}, z)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"epoch_step": self.epoch_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch_step = int(state["epoch_step"])


@ALGORITHMS.register("cdann")
class CDANN(DANN):
    """CDANN: DANN with a class-conditional discriminator (it reads z + E[y]): no domain information given the class."""

    Hparams = CDANNHparams
    conditional = True
    reference = "Li et al., ECCV 2018 (CDANN); Ganin et al., JMLR 2016 (GRL); DomainBed algorithms.py CDANN"
