"""Regimes that choose how fast each layer trains: layer-wise learning-rate decay, Auto-RGN, Auto-SNR.

* ``llrd``: block b at depth d below the head (head d = 0) trains at ``decay**d`` x the rate (Howard &
  Ruder 2018's discriminative fine-tuning; the geometric form of Clark et al. 2020 / Bao et al. 2022).
* ``auto_rgn`` and ``auto_snr``: Lee, Chen, Tajwar, Kumar, Yao, Liang & Finn, "Surgical Fine-Tuning
  Improves Adaptation to Distribution Shifts", ICLR 2023 (Davila et al. 2024 find Auto-RGN among the
  most robust of their eight). Every parameter tensor is a "layer" with its own group; at every step, after
  the backward pass, each layer's rate is the scheduled rate times its criterion normalised by the largest
  over the layers, so the layer that most wants to move trains at the full rate:

  - RGN (relative gradient norm) of layer i: ||g_i|| / ||w_i||.
  - SNR of layer i: the mean over its entries of g^2 / (Var_0(g) + 1e-8), the variance taken over the
    tensor's first axis (output channels), as in the authors' code for this criterion.

  The authors' code computes the criterion from 5 batches once per epoch; Davila et al. and this module
  compute it at every step from that step's gradient (no extra passes, nothing to keep for a resume). A
  tensor whose weights are all zero (its RGN undefined), or whose first axis has one entry (its SNR
  undefined), trains at the full rate and does not enter the normalisation. The authors' SNR variant
  then thresholds the criterion (rate 0 or 1); here it scales the rate continuously as RGN does.
  The rate is set for the step and restored after it, so the scheduler only ever sees the scheduled rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from domgen.config import RegimeConfig
from domgen.regimes.base import REGIMES, Regime, hparam, split_groups


@dataclass(frozen=True)
class LLRDHparams(RegimeConfig):
    name: str = "llrd"
    decay: float = hparam(0.65, lambda r: float(r.uniform(0.3, 1.0)))  # rate multiplier per block below the head


@REGIMES.register("llrd")
class LayerwiseDecay(Regime):
    """Layer-wise learning-rate decay: every block trains, each at ``decay`` x the rate of the block above."""

    Hparams = LLRDHparams
    reference = "Howard & Ruder, ACL 2018, Sec. 3.2 (discriminative fine-tuning); Bao et al., ICLR 2022 (layer decay)"

    @classmethod
    def problems(cls, hp: LLRDHparams):
        yield from super().problems(hp)
        if not 0 < hp.decay <= 1:
            yield "decay", hp.decay, "a multiplier per block: must be in (0, 1]"

    def multipliers(self) -> dict[str, float]:
        return {b.name: self.hparams.decay ** depth for depth, b in enumerate(reversed(self.blocks))}


@dataclass(frozen=True)
class AutoRGNHparams(RegimeConfig):
    name: str = "auto_rgn"


class LayerRates(Regime):
    """Per-tensor groups whose rates are rescaled at every step by a criterion on the gradient."""

    def param_groups(self, model, groups, lr):
        # one group per tensor of the model ("layer"), named after it; the algorithm's own modules keep theirs
        units = [(name, [p]) for name, p in model.named_parameters()]
        return split_groups(groups, units, {name: 1.0 for name, _ in units}, lr)

    def criterion(self, w: Tensor, g: Tensor) -> Tensor:
        """The layer's criterion, a 0-d tensor; NaN when undefined (the layer then trains at the full rate)."""
        raise NotImplementedError

    def scales(self, groups: list[dict]) -> list[float]:
        """Each group's rate multiplier for this step: criterion / max criterion (1 where undefined)."""
        crit = [self.criterion(g["params"][0].detach(), g["params"][0].grad.detach()).float()
                if g["params"][0].grad is not None else None for g in groups]
        known = [c for c in crit if c is not None]
        values = torch.stack(known).tolist() if known else []  # one device sync per step
        it = iter(values)
        raw = [next(it) if c is not None else float("nan") for c in crit]
        finite = [v for v in raw if v == v]
        top = max(finite) if finite else 0.0
        return [v / top if v == v and top > 0 else 1.0 for v in raw]

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        groups = [g for g in optimizer.param_groups if "unit" in g]
        scheduled = [g["lr"] for g in groups]
        for g, s in zip(groups, self.scales(groups)):
            g["lr"] = g["lr"] * s
        optimizer.step()
        for g, lr in zip(groups, scheduled):  # the scheduler only ever sees the scheduled rates
            g["lr"] = lr


@REGIMES.register("auto_rgn")
class AutoRGN(LayerRates):
    """Auto-RGN: each layer's rate scaled at every step by its relative gradient norm ||g|| / ||w||, over the largest."""

    Hparams = AutoRGNHparams
    reference = "Lee et al., ICLR 2023 (Surgical fine-tuning, Auto-RGN); Davila et al., arXiv 2406.10050"

    def criterion(self, w: Tensor, g: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(w.float())
        return torch.where(norm > 0, torch.linalg.vector_norm(g.float()) / norm, torch.full_like(norm, float("nan")))


@dataclass(frozen=True)
class AutoSNRHparams(RegimeConfig):
    name: str = "auto_snr"


@REGIMES.register("auto_snr")
class AutoSNR(LayerRates):
    """Auto-SNR: each layer's rate scaled at every step by its gradient's signal-to-noise ratio, over the largest."""

    Hparams = AutoSNRHparams
    reference = "Lee et al., ICLR 2023 (Surgical fine-tuning, Auto-SNR); Davila et al., arXiv 2406.10050"

    def criterion(self, w: Tensor, g: Tensor) -> Tensor:
        g = g.float()
        if g.dim() == 0 or g.shape[0] < 2:
            return torch.full((), float("nan"), device=g.device)
        return (g * g / (torch.var(g, dim=0, keepdim=True) + 1e-8)).mean()
