"""The regime interface: how a pretrained model's parameters train, whatever the algorithm.

A regime is one registered class (``@REGIMES.register(name)``) with its hyperparameters beside it
(``Hparams``: a frozen dataclass extending ``domgen.config.RegimeConfig``, fields via ``hparam``) and the
paper it follows (``reference``). It decides, around the algorithm and never inside it:

* the optimiser's parameter groups and their learning-rate multipliers (:meth:`Regime.param_groups` wraps
  the groups the algorithm gives, so the algorithm's own modules, ``Algorithm.nets``, keep training at the
  base rate in their own group);
* which model parameters are trainable, and which blocks run in evaluation mode (frozen BatchNorm
  statistics), epoch by epoch (:meth:`Regime.begin_epoch`, :meth:`Regime.train_mode`);
* a penalty added to the algorithm's loss (:meth:`Regime.penalty`, L2-SP's);
* the optimiser step itself (:meth:`Regime.step`: Auto-RGN rescales each layer's rate from its gradient;
  TPGM projects the backbone onto balls around its pretrained weights whose radii it learns on validation
  batches, which the engine hands every regime through :meth:`Regime.use_validation`).

Everything a regime decides is a function of the epoch, the model as built and the current gradient, so a
resumed run recomputes it exactly; what it keeps beyond that goes in :meth:`Regime.state_dict` (``last.pt``).
The default ``ft`` does nothing at all: the optimiser, the modes and the steps are today's, bit for bit.

The model is seen as blocks, bottom-up, then the head (:func:`domgen.regimes.blocks.model_blocks`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import Tensor, nn

from domgen.algorithms.base import hparam  # noqa: F401  (re-exported: a regime's fields use it)
from domgen.config import RegimeConfig, to_dict
from domgen.regimes.blocks import Block, model_blocks
from domgen.registry import Registry

REGIMES: Registry = Registry("regime")


class Regime:
    """Base class and ``ft``'s behaviour: every parameter trains in one group, nothing is added."""

    Hparams: ClassVar[type] = RegimeConfig
    reference: ClassVar[str] = ""  # the paper it follows, one line

    def __init__(self, hparams: RegimeConfig):
        if type(hparams) is not self.Hparams:
            raise TypeError(f"{type(self).__name__} takes {self.Hparams.__name__}, got {type(hparams).__name__}")
        self.hparams = hparams
        self.blocks: list[Block] = []
        self.epoch, self.epochs = 0, 1  # where training is (begin_epoch)

    @classmethod
    def problems(cls, hp: RegimeConfig) -> Iterator[tuple[str, Any, str]]:
        """(field, value, why) for each hyperparameter that cannot work; subclasses add their own."""
        return iter(())

    @classmethod
    def run_problems(cls, cfg: Any) -> Iterator[tuple[str, Any, str]]:
        """(key, value, why) for the other sections of the run config (a ``RunConfig``) the regime, as set,
        cannot work with (lp's precomputed features and augmentation); keys are full (``augment.policy``)."""
        return iter(())

    # ---- wiring (called once, before the optimiser) -----------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Called once with the model on its device, before any copy of it (the weight average's) and before
        the optimiser: a regime that changes the model's structure (LoRA) does it here; the blocks and any
        reference weights (L2-SP's w0) are taken here."""
        self.blocks = model_blocks(model)

    def use_validation(self, batch: Callable[[int], tuple[Tensor, Tensor]]) -> None:
        """Called once by the trainer, after :meth:`attach`, with ``batch(k)``: the k-th (x, y) of an endless
        seeded stream over the training domains' validation split (never a held-out domain's), a function of
        k alone, so a regime that keeps its position k in its state draws the same batches after a resume.
        For a regime that learns from data the training loop does not see (TPGM's radii); the default ignores it."""

    def multipliers(self) -> dict[str, float] | None:
        """Learning-rate multiplier of each block by name (head included); None: the algorithm's groups as
        they are (``ft``, ``lp``: one rate)."""
        return None

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float) -> list[dict[str, Any]]:
        """The optimiser's groups: the algorithm's ``groups``, each split by block, head first then the
        blocks top-down (group 0 keeps the base rate, which the run logs), every block's ``lr`` its
        multiplier times the group's rate (``lr`` when the group sets none). Parameters outside the model
        (the algorithm's ``nets``) stay in their group as given."""
        mults = self.multipliers()
        if mults is None:
            return groups
        return split_groups(groups, [(b.name, b.params) for b in reversed(self.blocks)], mults, lr)

    # ---- per epoch and per step -------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        """Called before each training epoch (0-based), a resumed one included: set what trains. An override
        calls super()."""
        self.epoch, self.epochs = epoch, epochs

    def train_mode(self, model: nn.Module) -> None:
        """Called after ``model.train()`` at the start of each epoch's training: put frozen blocks in
        evaluation mode (BatchNorm uses and keeps its running statistics)."""

    def penalty(self, model: nn.Module) -> Tensor | None:
        """A differentiable term added to the algorithm's loss (logged as ``train_regime_penalty``), or None."""
        return None

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step, after the backward pass (gradients are in ``p.grad``)."""
        optimizer.step()

    # ---- state and record ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """The regime as the run record states it: ``regime`` and ``regime_<key>`` for its hyperparameters."""
        return {"regime": self.hparams.name} | {f"regime_{k}": v for k, v in to_dict(self.hparams).items() if k != "name"}

    # ---- helpers for subclasses ----------------------------------------------------------------------
    def set_trainable(self, trainable: Iterable[str]) -> None:
        """``requires_grad`` on exactly the blocks named in ``trainable`` (a frozen parameter gets no
        gradient, so AdamW neither moves nor decays it)."""
        keep = set(trainable)
        for block in self.blocks:
            for p in block.params:
                p.requires_grad_(block.name in keep)

    def eval_blocks(self, frozen: Iterable[str]) -> None:
        """The modules of the blocks named in ``frozen`` in evaluation mode."""
        names = set(frozen)
        for block in self.blocks:
            if block.name in names:
                for m in block.modules:
                    m.eval()


def split_groups(groups: list[dict[str, Any]], units: list[tuple[str, list[nn.Parameter]]],
                 mults: dict[str, float], lr: float) -> list[dict[str, Any]]:
    """Each of ``groups`` split into one group per unit (name, parameters) in the order of ``units``, with
    ``lr`` = multiplier x the group's rate and the unit's name under ``"unit"``; what no unit holds stays."""
    owner = {id(p): name for name, params in units for p in params}
    out = []
    for group in groups:
        opts = {k: v for k, v in group.items() if k != "params"}
        base = opts.get("lr", lr)
        mine: dict[str, list[nn.Parameter]] = {}
        rest = []
        for p in group["params"]:
            (mine.setdefault(owner[id(p)], []) if id(p) in owner else rest).append(p)
        out += [opts | {"params": mine[name], "lr": base * mults[name], "unit": name} for name, _ in units if name in mine]
        if rest:
            out.append(opts | {"params": rest})
    return out


def make_regime(hparams: RegimeConfig) -> Regime:
    """The registered regime ``hparams.name``, not yet attached to a model."""
    return REGIMES.get(hparams.name)(hparams)


def anchor_fingerprint(anchor: list[Tensor]) -> float:
    """The sum of squares of the weights a regime pulls or projects towards (w0): what ``last.pt`` keeps in
    place of a second copy of the backbone (a resumed run rebuilds w0 from the same model.weights)."""
    return float(sum((p0.double() ** 2).sum() for p0 in anchor))


def check_anchor(saved: float | None, anchor: list[Tensor], what: str) -> None:
    """Refuse a checkpoint whose w0 fingerprint differs from this model's (``what`` names the regime and its pull)."""
    mine = anchor_fingerprint(anchor)
    if saved is not None and not math.isclose(saved, mine, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{what} (sum of squares {saved!r}, this model's {mine!r}): resume with the same model.weights")
