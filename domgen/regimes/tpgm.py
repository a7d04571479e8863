"""TPGM: Tian, Dai, Ma, He, Liu & Kira, "Trainable Projected Gradient Method for Robust Fine-tuning", CVPR
2023 (arXiv 2303.10720), the eighth of Davila et al.'s (arXiv 2406.10050) strategies. Constants and the
order of operations follow the authors' code (github.com/PotatoTian/TPGM, ``DomainNet_ResNet_Exp``:
``utils/tpgm.py``, ``engine_finetune.py``, ``main_finetune.py``), the ResNet setting this package's backbones
share.

Every backbone tensor l (each parameter of ``g``; the new head is left free, as the authors exclude
``head.weight``/``head.bias``) has a learned radius gamma_l, and after every optimiser step it is projected
onto the ball of that radius around its pretrained value w0_l (the paper's projection, Sec. 3):

    w_l <- w0_l + min(1, gamma_l / (||w_l - w0_l|| + 1e-8)) (w_l - w0_l)

with the authors' norms: ``mars`` (default, their ResNet runs) takes ||.|| per output row, the L1 norm of
the row (a conv kernel's [C_in, k, k] slice), so each row is scaled on its own against the tensor's one
gamma; a vector's (bias, BatchNorm) "row" is the whole vector (their sum over no axes sums everything);
``l2`` takes the Frobenius norm of the whole tensor (their ViT runs). The minimum is their
``Hardtanh(0, 1)`` of the ratio.

The radii are trained, not chosen (the projection update, Sec. 3.3): every ``proj_freq`` steps (step i of
the epoch with i % proj_freq == 0, as their loop counts), before the projection, ``max_iters`` Adam steps
(lr ``proj_lr``) on gamma minimise the plain cross-entropy of the *projected* model (in evaluation mode:
BatchNorm uses its running statistics, dropout is off) on batches the training loop never sees. The
gradient reaches gamma only through the ratio: the weights' offsets w - w0 are constants. Radii start, at
the first projection (after one optimiser step), at half the smallest row distance, min ||w - w0|| / 2,
and are clipped to [1e-8, max ||w - w0||] before every use, as in their ``_project_ratio``.

Those batches are the training domains' validation split (never a held-out domain's), which is what the
authors use (their ``pgm_loader`` is the ``val`` split that also selects their model): the engine hands
every regime an endless seeded stream of it (:meth:`Regime.use_validation`), drawn at a position kept in
the state, so a resumed run draws the same batches. Because the radii learn from the selection split,
TPGM's selection score is slightly optimistic, as it is in the paper.

Defaults: ``norm=mars``, ``proj_lr=1e-2``, ``max_iters=1`` (``main_finetune.py``'s, the ResNet
experiments), ``proj_freq=1`` (their README's TPGM commands; the argument's default, 0, turns TPGM off).
The search draws ``proj_freq`` from {1, 2, 5, 10} and ``proj_lr`` log-uniformly in [1e-3, 1e-1].

Deviations: the projected model is evaluated with ``torch.func.functional_call`` on the live model instead
of a deep copy per update (the same function, without copying the backbone); the radii's gradient is
taken with ``torch.autograd.grad``, so the model's own gradients are untouched; the upper clip bound is
never below the lower one (a tensor that has not moved keeps gamma = 1e-8, and ratio 1, instead of
whatever ``hardtanh(x, 1e-8, 0)`` gives); the validation loss is computed in fp32 outside autocast; the
authors' SGD (momentum 0.9, weight decay 5e-4) is the run's AdamW. The paper's equation numbers were not
checked against its text (not at hand): the formulas above are the code's.

w0 is not stored in ``last.pt`` (a second copy of the backbone; a resumed run rebuilds the same model
before attaching, as L2-SP does): the checkpoint keeps w0's fingerprint and refuses other weights. The radii,
their Adam moments, whether they were initialised and the stream position are state, saved and restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domgen.config import RegimeConfig
from domgen.regimes.base import REGIMES, Regime, anchor_fingerprint, check_anchor, hparam

NORMS = ("mars", "l2")
EPS = 1e-8  # the authors' constant: in the ratio's denominator and as the smallest radius


@dataclass(frozen=True)
class TPGMHparams(RegimeConfig):
    name: str = "tpgm"
    norm: str = hparam("mars")  # mars: per-row L1 (the authors' ResNets) | l2: whole-tensor (their ViTs)
    proj_freq: int = hparam(1, lambda r: int(r.choice([1, 2, 5, 10])))  # steps between radius updates
    proj_lr: float = hparam(1e-2, lambda r: float(10 ** r.uniform(-3, -1)))  # Adam's rate on the radii
    max_iters: int = hparam(1)  # Adam steps (validation batches) per radius update


def distance(d: Tensor, norm: str) -> Tensor:
    """||d||: ``l2``, the whole tensor's Frobenius norm (0-d); ``mars``, each output row's L1 norm, shaped
    to broadcast against ``d`` ([out, 1, ...]; a vector's: its whole L1 norm, [1])."""
    if norm == "l2":
        return torch.linalg.vector_norm(d)
    if d.dim() < 2:
        return d.abs().sum().reshape([1] * d.dim())
    return d.abs().sum(dim=tuple(range(1, d.dim())), keepdim=True)


def ratio(gamma: Tensor, dist: Tensor) -> Tensor:
    """min(1, gamma / ||d||), as the authors' Hardtanh(0, 1) (its gradient is 0 where the ratio is clipped)."""
    return F.hardtanh(gamma / (dist + EPS), 0.0, 1.0)


@REGIMES.register("tpgm")
class TPGM(Regime):
    """TPGM: each backbone tensor projected after every step onto a ball around w0 whose radius is learned on validation batches."""

    Hparams = TPGMHparams
    reference = "Tian et al., CVPR 2023 (TPGM, Sec. 3; github.com/PotatoTian/TPGM); Davila et al., arXiv 2406.10050"

    @classmethod
    def problems(cls, hp: TPGMHparams):
        yield from super().problems(hp)
        if hp.norm not in NORMS:
            yield "norm", hp.norm, f"choose {' or '.join(NORMS)}"
        for key in ("proj_freq", "max_iters"):
            if not (isinstance(getattr(hp, key), int) and getattr(hp, key) >= 1):
                yield key, getattr(hp, key), "a count: must be an integer >= 1"
        if not hp.proj_lr > 0:
            yield "proj_lr", hp.proj_lr, "a learning rate: must be > 0"

    # ---- wiring -------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        self.model = model
        named = list(model.g.named_parameters())
        self.names = [f"g.{n}" for n, _ in named]  # functional_call's keys (the backbone's, under model.g)
        self.params = [p for _, p in named]
        self.anchor = [p.detach().clone() for p in self.params]  # w0, on the model's device
        device = self.params[0].device if self.params else torch.device("cpu")
        self.gamma = nn.Parameter(torch.zeros(len(self.params), device=device))  # one radius per tensor
        # Adam works entry by entry, so one vector of radii trains as the authors' one Parameter per tensor
        self.radius_opt = torch.optim.Adam([self.gamma], lr=self.hparams.proj_lr)
        self.initialised = False  # radii are set at the first projection, from the first step's distances
        self.updates = 0  # validation batches drawn so far: the stream's position
        self.i = 0  # optimiser steps in this epoch (the authors' batch index)
        self.draw: Callable[[int], tuple[Tensor, Tensor]] | None = None

    def use_validation(self, batch: Callable[[int], tuple[Tensor, Tensor]]) -> None:
        self.draw = batch

    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        super().begin_epoch(epoch, epochs, model)
        self.i = 0

    # ---- the step: optimiser, radius update, projection ----------------------------------------------
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()
        if self.i % self.hparams.proj_freq == 0:
            self.update_radii()
        self.project()
        self.i += 1

    def distances(self) -> list[Tensor]:
        """||w - w0|| of every backbone tensor (per row for ``mars``), without a graph."""
        return [distance(p.detach() - p0, self.hparams.norm) for p, p0 in zip(self.params, self.anchor)]

    @torch.no_grad()
    def clip(self, dists: list[Tensor]) -> None:
        """The first time, gamma_l = min ||w_l - w0_l|| / 2; always, gamma_l clipped to [1e-8, max ||w_l - w0_l||]."""
        if not dists:
            return
        lo = torch.stack([d.min() for d in dists]).to(self.gamma.dtype)
        hi = torch.stack([d.max() for d in dists]).to(self.gamma.dtype)
        if not self.initialised:
            self.gamma.copy_(lo / 2)
            self.initialised = True
        self.gamma.copy_(torch.clamp(self.gamma, min=torch.full_like(hi, EPS), max=hi.clamp(min=EPS)))

    @torch.no_grad()
    def project(self) -> None:
        """Every backbone tensor onto its ball: w <- w0 + min(1, gamma / ||w - w0||) (w - w0)."""
        dists = self.distances()
        self.clip(dists)
        for p, p0, dist, g in zip(self.params, self.anchor, dists, self.gamma):
            p.copy_(p0 + (p - p0) * ratio(g, dist))

    def radius_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of the projected model on (x, y), differentiable in gamma only. The model must be in
        evaluation mode (:meth:`update_radii` puts it there)."""
        dists = self.distances()
        self.clip(dists)
        projected = {name: p0 + (p.detach() - p0) * ratio(g, dist)
                     for name, p, p0, dist, g in zip(self.names, self.params, self.anchor, dists, self.gamma)}
        logits = torch.func.functional_call(self.model, projected, (x,), strict=False)
        return F.cross_entropy(logits.float(), y)

    def update_radii(self) -> None:
        """``max_iters`` Adam steps on gamma, each on the next validation batch, the model in evaluation mode."""
        if self.draw is None:
            raise RuntimeError("tpgm learns its radii on validation batches: the trainer hands them over "
                               "(Regime.use_validation); outside it, call use_validation first")
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            for _ in range(self.hparams.max_iters):
                x, y = self.draw(self.updates)
                self.updates += 1
                (grad,) = torch.autograd.grad(self.radius_loss(x, y), [self.gamma])
                self.gamma.grad = grad
                self.radius_opt.step()
                self.gamma.grad = None
        finally:
            for m, mode in modes:
                m.training = mode

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"gamma": self.gamma.detach().clone(), "initialised": self.initialised, "updates": self.updates,
                "radius_opt": self.radius_opt.state_dict(), "anchor_sq": anchor_fingerprint(self.anchor)}

    def load_state_dict(self, state: dict) -> None:
        check_anchor(state.get("anchor_sq"), self.anchor, "TPGM: the checkpoint projected towards different initial weights")
        if "gamma" in state:
            with torch.no_grad():
                self.gamma.copy_(state["gamma"])
            self.initialised, self.updates = bool(state["initialised"]), int(state["updates"])
            self.radius_opt.load_state_dict(state["radius_opt"])
