"""Robust risk minimisation over the training domains: GroupDRO and V-REx.

**GroupDRO** (Sagawa, Koh, Hashimoto & Liang, ICLR 2020, Algorithm 1; DomainBed ``GroupDRO``): a
distribution q over the pool's domains, uniform at the start. Each step, for every domain d present in the
batch, its classification loss L_d (the run's criterion on the domain's images, with the run's class weights)
updates ``q_d <- q_d exp(eta L_d)``; q is renormalised over all domains and the loss is
``sum_d q_d L_d`` over the present domains, with the updated q as in Algorithm 1 and DomainBed. An absent
domain's loss counts as 0, as in the authors' code (kohpangwei/group_DRO ``compute_robust_loss``), so the
loss is not renormalised over the present domains. q is the algorithm's state (saved in the checkpoint,
resumed exactly).

**V-REx** (Krueger et al., ICML 2021, eq. 8; DomainBed ``VREx``): the mean of the per-domain risks plus
lambda times their variance (the biased variance, over the domains present in the batch), with lambda 1.0
for the first ``anneal_steps`` optimiser steps and ``penalty_weight`` after, as DomainBed does.

Deviations from DomainBed, and why:

* DomainBed's minibatches hold exactly one domain each and every training domain each step. domgen's
  batches mark the domain of each image, and any domain may be absent or hold one image; a domain counts
  when it has at least one image (GroupDRO's q of an absent domain is left as is, apart from the
  renormalisation). Both default to the ``domain_balanced`` sampler (each draw picks a domain uniformly,
  then one of its images), the nearest to DomainBed's equal minibatch per domain.
* DomainBed resets Adam when the annealing ends (V-REx, IRM, Fishr), because the penalty's gradients jump.
  domgen has one optimiser, owned by the engine, so the reset is not done; ``anneal_steps=0`` starts with the
  full weight, which avoids the jump altogether.
* Per-domain risks use the run's classification loss and class weights, not plain cross-entropy.

``loss`` is called once per optimiser step (``domgen.engine.loop.train_epoch``), so the state it updates
(q, the step counter) advances once per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig
from domgen.data.samplers import TrainPool


def domain_groups(domain: Tensor, min_images: int = 1) -> list[tuple[int, Tensor]]:
    """(domain index, [n_d] positions in the batch, in batch order) for each domain with at least
    ``min_images`` images in the batch, by increasing domain index."""
    codes = np.asarray(domain.tolist())  # one read from the device per step, not one per domain
    groups = ((int(d), np.flatnonzero(codes == d)) for d in np.unique(codes))
    return [(d, torch.as_tensor(pos, device=domain.device)) for d, pos in groups if len(pos) >= min_images]


def domain_risks(criterion, logits: Tensor, y: Tensor, domain: Tensor, class_w: Tensor | None) -> tuple[list[int], Tensor]:
    """The domains present in the batch and their classification losses [P] (the run's criterion on each
    domain's images, with the run's class weights)."""
    groups = domain_groups(domain)
    risks = torch.stack([criterion(logits[i], y[i], class_w) for _, i in groups])
    return [d for d, _ in groups], risks


# ---- GroupDRO -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupDROHparams(AlgorithmConfig):
    name: str = "groupdro"
    sampler: str = "domain_balanced"  # DomainBed: an equal minibatch from every domain each step
    eta: float = hparam(1e-2, lambda r: float(10 ** r.uniform(-3, -1)))  # step size of q (DomainBed groupdro_eta)


@ALGORITHMS.register("groupdro")
class GroupDRO(Algorithm):
    """Group DRO: per-domain losses weighted by q, which exponentiated-gradient ascent moves to the worst domains."""

    Hparams = GroupDROHparams
    reference = "Sagawa et al., ICLR 2020 (Algorithm 1); DomainBed algorithms.py GroupDRO"

    @classmethod
    def problems(cls, hp: GroupDROHparams):
        yield from super().problems(hp)
        if not (np.isfinite(hp.eta) and hp.eta >= 0):
            yield "eta", hp.eta, "must be finite and >= 0 (0: q stays uniform)"

    def build(self, pool: TrainPool) -> "GroupDRO":
        super().build(pool)
        n = len(pool.domain_names)
        self.q = torch.full((n,), 1.0 / n, device=self.device)  # [n_domains], over all pool domains
        self.domain_names = pool.domain_names  # q is logged per domain (train_q_<domain>)
        return self

    def loss(self, model, batch: Batch) -> Step:
        logits = model(batch.x)
        present, risks = domain_risks(self.criterion, logits, batch.y, batch.domain, self.class_w)
        idx = torch.as_tensor(present, device=self.q.device)
        with torch.no_grad():  # q is a constant of this step's loss (Algorithm 1 and DomainBed)
            # q_d exp(eta L_d), renormalised, as a softmax of log q: no overflow when eta L_d is large
            log_q = self.q.log()
            log_q[idx] += self.hparams.eta * risks.detach().float()
            self.q = torch.softmax(log_q, dim=0)
        loss = (self.q[idx] * risks).sum()
        logs = {f"q_{name}": self.q[d] for d, name in enumerate(self.domain_names)}
        return Step(loss, logs | {"worst_domain_loss": risks.detach().max()})

    def state_dict(self) -> dict[str, Any]:
        # a list of Python floats holds float32 exactly and compares with == after a checkpoint
        return super().state_dict() | {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if len(state["q"]) != len(self.q):
            raise ValueError(f"GroupDRO state has q over {len(state['q'])} domains, the pool has {len(self.q)}: "
                             "a different pool")
        self.q = torch.tensor(state["q"], dtype=torch.float32, device=self.device)


# ---- annealed penalties (V-REx here, IRM and Fishr in domgen.algorithms.invariance) ----------------
class AnnealedPenalty(Algorithm):
    """A penalty whose weight is ``warmup_weight`` for the first ``hparams.anneal_steps`` optimiser steps,
    then ``hparams.penalty_weight`` (DomainBed's ``*_penalty_anneal_iters``); the step counter is state."""

    warmup_weight: ClassVar[float] = 1.0  # DomainBed: 1.0 for IRM and V-REx, 0 for Fishr

    def __init__(self, hparams, *args, **kwargs):
        super().__init__(hparams, *args, **kwargs)
        self.steps = 0  # optimiser steps taken (loss is called once per step)

    @classmethod
    def problems(cls, hp):
        yield from super().problems(hp)
        if not (np.isfinite(hp.penalty_weight) and hp.penalty_weight >= 0):
            yield "penalty_weight", hp.penalty_weight, "must be finite and >= 0"
        if not hp.anneal_steps >= 0:
            yield "anneal_steps", hp.anneal_steps, "must be >= 0 (0: the full weight from the first step)"

    def next_weight(self) -> float:
        """This step's penalty weight; advances the step counter."""
        hp = self.hparams
        weight = hp.penalty_weight if self.steps >= hp.anneal_steps else self.warmup_weight
        self.steps += 1
        return weight

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps = int(state["steps"])


def anneal_search(r: np.random.Generator) -> int:
    """DomainBed's search of IRM's and V-REx's annealing steps: 10^U(0, 4)."""
    return int(10 ** r.uniform(0, 4))


# ---- V-REx ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VRExHparams(AlgorithmConfig):
    name: str = "vrex"
    sampler: str = "domain_balanced"  # the variance compares domains: draw each equally often
    penalty_weight: float = hparam(1e1, lambda r: float(10 ** r.uniform(-1, 5)))  # lambda (DomainBed vrex_lambda)
    anneal_steps: int = hparam(500, anneal_search)  # steps at weight 1.0 (DomainBed vrex_penalty_anneal_iters)


@ALGORITHMS.register("vrex")
class VREx(AnnealedPenalty):
    """Variance risk extrapolation (V-REx): mean of the per-domain risks + lambda x their variance."""

    Hparams = VRExHparams
    reference = "Krueger et al., ICML 2021 (eq. 8, V-REx); DomainBed algorithms.py VREx"

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)
        _, risks = domain_risks(self.criterion, logits, batch.y, batch.domain, self.class_w)  # [P] present domains
        mean = risks.mean()
        penalty = ((risks - mean) ** 2).mean()  # biased variance, as DomainBed; 0 with one domain present
        weighted = self.next_weight() * penalty
        logs = {"nll": mean.detach(), "penalty": penalty.detach()}
        return Step(mean + weighted, logs, {"nll": mean, "penalty": weighted}, z)
