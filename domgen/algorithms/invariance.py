"""Invariance penalties across the training domains: IRM and Fishr.

**IRM** (Arjovsky, Bottou, Gulrajani & Lopez-Paz, 2019, IRMv1, eq. 3 and Section 3.2; DomainBed ``IRM``):
the mean of the per-domain classification losses plus lambda times the mean over domains of
``||grad_{w | w=1} R_d(w * logits)||^2``, estimated without bias by the split-batch trick: the gradient of
the loss at a dummy scale 1.0 on the even and on the odd images of the domain, multiplied. lambda is 1.0
for the first ``anneal_steps`` optimiser steps, ``penalty_weight`` after (DomainBed).

**Fishr** (Rame, Dancette & Cord, ICML 2022, eqs. 4-6 and the EMA of Section 3.3; DomainBed ``Fishr``):
the classification loss on the whole batch plus lambda times the mean over domains of the mean squared
difference between each domain's variance of per-sample gradients of the classification loss with respect
to the linear head (weight and bias) and the mean of those variances over domains. Each domain's variance
is an exponential moving average (``ema``; DomainBed's ``MovingAverage`` with its 1/(1 - ema) correction,
so the first update equals that step's variance), kept as state. lambda is 0 for the first
``anneal_steps`` steps, then ``penalty_weight`` (DomainBed). The per-sample gradients are computed in
closed form for a linear head on softmax cross-entropy (no BackPACK): for image i with features z_i,
probabilities p_i and class y_i, ``dCE_i/dW = (p_i - e_{y_i}) z_i^T`` and ``dCE_i/db = p_i - e_{y_i}``,
times the image's class weight w_{y_i} when the run weights classes (the per-sample loss is w_{y_i} CE_i,
DomainBed's unreduced ``CrossEntropyLoss(reduction='none')``; the batch reduction does not enter).

Deviations from DomainBed, and why:

* A domain enters IRM's penalty, and Fishr's EMA and penalty, only when it has at least two images in the
  batch (two halves; a variance); it still enters IRM's loss with one. Fishr's penalty needs two such
  domains and is 0 otherwise; an absent domain's EMA is left as it is. DomainBed's batches always hold
  every domain. Both default to the ``domain_balanced`` sampler (each draw picks a domain uniformly, then
  one of its images), the nearest to DomainBed's equal minibatch per domain.
* DomainBed resets Adam when the annealing ends; domgen's one optimiser is owned by the engine, so the
  reset is not done (``anneal_steps=0`` gives the full weight from the start and no jump).
* Fishr's gradients are those of the (class-weighted) cross-entropy whatever ``loss.name`` is, since the
  closed form is the cross-entropy's; the loss it adds them to is the run's criterion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.algorithms.base import ALGORITHMS, Batch, Step, hparam
from domgen.algorithms.robust import AnnealedPenalty, anneal_search, domain_groups
from domgen.config import AlgorithmConfig


# ---- IRM ------------------------------------------------------------------------------------------
def irm_penalty(criterion, logits: Tensor, y: Tensor, class_w: Tensor | None) -> Tensor:
    """DomainBed's unbiased IRMv1 penalty on one domain's images [n >= 2]: the product of d loss(s * logits)
    / d s at s = 1 on the even and on the odd images (differentiable: create_graph)."""
    s = torch.ones(2, device=logits.device, requires_grad=True)  # one dummy scale per half
    halves = criterion(logits[::2] * s[0], y[::2], class_w) + criterion(logits[1::2] * s[1], y[1::2], class_w)
    (g,) = torch.autograd.grad(halves, s, create_graph=True)  # [2]: each half's d loss / d s
    return g[0] * g[1]


@dataclass(frozen=True)
class IRMHparams(AlgorithmConfig):
    name: str = "irm"
    sampler: str = "domain_balanced"  # the penalty is per domain: draw each equally often
    penalty_weight: float = hparam(1e2, lambda r: float(10 ** r.uniform(-1, 5)))  # lambda (DomainBed irm_lambda)
    anneal_steps: int = hparam(500, anneal_search)  # steps at weight 1.0 (DomainBed irm_penalty_anneal_iters)


@ALGORITHMS.register("irm")
class IRM(AnnealedPenalty):
    """Invariant risk minimisation (IRMv1): mean per-domain loss + lambda x the split-batch gradient penalty."""

    Hparams = IRMHparams
    reference = "Arjovsky et al., arXiv 2019 (IRMv1, eq. 3); DomainBed algorithms.py IRM"

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)
        logits, y, w = logits.float(), batch.y, self.class_w
        groups = domain_groups(batch.domain)
        nll = torch.stack([self.criterion(logits[i], y[i], w) for _, i in groups]).mean()
        penalties = [irm_penalty(self.criterion, logits[i], y[i], w) for _, i in groups if len(i) >= 2]
        weight = self.next_weight()
        if not penalties:  # no domain with two images: nothing to split
            return Step(nll, {"nll": nll.detach(), "penalty": torch.zeros_like(nll)}, {"nll": nll}, z)
        penalty = torch.stack(penalties).mean()
        logs = {"nll": nll.detach(), "penalty": penalty.detach()}
        return Step(nll + weight * penalty, logs, {"nll": nll, "penalty": weight * penalty}, z)


# ---- Fishr ----------------------------------------------------------------------------------------
def head_gradients(logits: Tensor, z: Tensor, y: Tensor, class_w: Tensor | None, bias: bool = True) -> Tensor:
    """[B, K*D (+ K)] per-sample gradients of w_{y_i} CE(logits_i, y_i) with respect to a linear head's
    weight [K, D] (flattened row-major, as ``weight.flatten()``) and bias [K], for logits = z W^T + b:
    (p_i - e_{y_i}) z_i^T and p_i - e_{y_i}. Differentiable in logits and z (the penalty trains both)."""
    err = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)  # [B, K]
    if class_w is not None:
        err = err * class_w.to(err)[y].unsqueeze(1)
    grads = (err.unsqueeze(2) * z.unsqueeze(1)).flatten(1)  # [B, K, D] -> [B, K*D]
    return torch.cat([grads, err], dim=1) if bias else grads


def fishr_penalty(variances: Tensor) -> Tensor:
    """Mean over domains of the mean squared difference between each domain's gradient variance and their
    mean over domains (DomainBed's ``l2_between_dicts``, a mean over parameters). ``variances``: [M, P]."""
    return (variances - variances.mean(dim=0)).pow(2).mean()


@dataclass(frozen=True)
class FishrHparams(AlgorithmConfig):
    name: str = "fishr"
    sampler: str = "domain_balanced"  # the variances compare domains: draw each equally often
    penalty_weight: float = hparam(1e3, lambda r: float(10 ** r.uniform(1, 4)))  # lambda (DomainBed "lambda")
    anneal_steps: int = hparam(1500, lambda r: int(r.uniform(0, 5000)))  # steps at weight 0 (penalty_anneal_iters)
    ema: float = hparam(0.95, lambda r: float(r.uniform(0.90, 0.99)))  # moving average of each domain's variance


@ALGORITHMS.register("fishr")
class Fishr(AnnealedPenalty):
    """Fishr: classification loss + lambda x the spread over domains of head-gradient variances (EMA)."""

    Hparams = FishrHparams
    reference = "Rame et al., ICML 2022 (Fishr, eqs. 4-6); DomainBed algorithms.py Fishr"
    warmup_weight = 0.0

    def __init__(self, hparams: FishrHparams, *args, **kwargs):
        super().__init__(hparams, *args, **kwargs)
        self.var_ema: Tensor | None = None  # [n_domains, P] moving averages, made at the first step

    @classmethod
    def problems(cls, hp: FishrHparams):
        yield from super().problems(hp)
        if not 0 <= hp.ema < 1:
            yield "ema", hp.ema, "must be in [0, 1)"

    def build(self, pool) -> "Fishr":
        super().build(pool)
        self.n_domains = len(pool.domain_names)
        return self

    def domain_variances(self, grads: Tensor, domain: Tensor) -> Tensor | None:
        """[M, P] moving averages of the gradient variance, divided by (1 - ema), of the M domains with two
        images or more in the batch (their stored averages updated); None when there are none. As DomainBed's
        ``MovingAverage``: the stored a_d <- ema a_d + (1 - ema) var_d from a_d = 0, and the penalty sees
        a_d / (1 - ema), whose gradient in var_d does not depend on ema."""
        ema, groups = self.hparams.ema, domain_groups(domain, min_images=2)
        if self.var_ema is None:
            self.var_ema = torch.zeros(self.n_domains, grads.shape[1], device=grads.device)  # DomainBed's first prev
        if not groups:
            return None
        idx = torch.as_tensor([d for d, _ in groups], device=grads.device)
        var = torch.stack([grads[i].var(dim=0, unbiased=False) for _, i in groups])  # [M, P], DomainBed's biased
        avg = ema * self.var_ema[idx] + (1 - ema) * var
        self.var_ema = self.var_ema.index_copy(0, idx, avg.detach())
        return avg / (1 - ema)

    def loss(self, model, batch: Batch) -> Step:
        if not isinstance(model.h, nn.Linear):
            raise TypeError(f"Fishr's closed-form gradients need a linear head, got {type(model.h).__name__}")
        logits, z = model.forward_both(batch.x)
        nll = self.criterion(logits, batch.y, self.class_w)  # on the whole batch, as DomainBed
        grads = head_gradients(logits.float(), z.float(), batch.y, self.class_w, model.h.bias is not None)
        variances = self.domain_variances(grads, batch.domain)
        weight = self.next_weight()
        if variances is None or len(variances) < 2:  # nothing to compare
            return Step(nll, {"nll": nll.detach(), "penalty": torch.zeros_like(nll)}, {"nll": nll}, z)
        penalty = fishr_penalty(variances)
        logs = {"nll": nll.detach(), "penalty": penalty.detach()}
        return Step(nll + weight * penalty, logs, {"nll": nll, "penalty": weight * penalty}, z)

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.var_ema is None else self.var_ema.tolist()  # Python floats hold float32 exactly
        return super().state_dict() | {"var_ema": ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        ema = state["var_ema"]
        if ema is not None and len(ema) != self.n_domains:
            raise ValueError(f"Fishr state has variances of {len(ema)} domains, the pool has {self.n_domains}: "
                             "a different pool")
        self.var_ema = None if ema is None else torch.tensor(ema, dtype=torch.float32, device=self.device)
