"""Batch mixing (``augment.mix``): MixUp (Zhang et al., ICLR 2018, eq. 1) or CutMix (Yun et al., ICCV 2019,
eq. 1-2) of every training batch with itself, through torchvision's ``v2.MixUp`` / ``v2.CutMix``.

The images: torchvision's pairing, each image with the one before it in the batch (``roll(1)``; the
samplers shuffle, so partners are random), one lam ~ Beta(alpha, alpha) per batch; CutMix pastes the
partner's box and uses the box's share of the image as its weight (``lam_adjusted``).

The loss, and the class weights: torchvision turns the labels into soft targets ``lam e_y + (1 - lam)
e_y'``, which the run's class-weighted criteria (``criterion(logits, y, class_w)``, the focal, LDAM or
label-smoothing ones included) cannot take. domgen mixes the LOSSES instead, as Zhang et al.'s code
(``mixup_criterion``) and domgen's inter-domain ``mixup`` algorithm do::

    L = lam criterion(logits, y, w) + (1 - lam) criterion(logits, y', w)        (y' = y rolled by one)

each term reduced with its own labels' class weights (for plain cross-entropy with a ``mean`` reduction this
is exactly the cross-entropy against the soft targets, each image weighted by lam w_y + (1 - lam) w_y'). The
engine wraps the algorithm's criterion (:class:`MixedCriterion`); a method that classifies the whole batch
(ERM and most of the hub) needs no change. A method that computes its classification loss on part of the
batch (per domain: GroupDRO, IRM, VREx; the halves of a pair) cannot be given its mixed labels: the first
such call raises a :class:`~domgen.errors.ConfigError`, and so does a step whose loss never called the
criterion (a method with its own copy of it). Of the hub, GroupDRO, VREx and IRM refuse (tests/test_mixing.py);
the others train, their own penalties (CORAL's, Fishr's, SelfReg's ...) seeing the mixed images with the
images' own labels. CCSA's pairs and the ``mixup`` algorithm are refused when the config is validated.

Randomness: lam (and CutMix's box) are drawn by torchvision from torch's global RNG, inside a forked RNG
seeded from a generator of (run seed, epoch), so an epoch's mixing replays exactly after a resume and the
global RNG (the algorithms') is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from domgen.algorithms.base import Batch
from domgen.config import AugmentConfig
from domgen.errors import ConfigError


@dataclass
class Mixed:
    """The mixing of the batch being trained on: its labels (the very tensor the algorithm receives),
    the partners' labels and the weight of the own image."""

    y: Tensor  # [B]
    partner: Tensor  # [B] = y.roll(1)
    lam: float
    calls: int = 0


class MixedCriterion(nn.Module):
    """The algorithm's criterion with mixed labels while a mixed batch is trained on (see the module docstring)."""

    def __init__(self, base: nn.Module, algorithm: str = ""):
        super().__init__()
        self.base, self.algorithm = base, algorithm
        self.active: Mixed | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # what callers read off a criterion (its reduction) is the base's
            return getattr(super().__getattr__("base"), name)

    def forward(self, logits: Tensor, y: Tensor, class_w: Tensor | None = None) -> Tensor:
        m = self.active
        if m is None:
            return self.base(logits, y, class_w)
        if y is not m.y:
            raise ConfigError(f"augment.mix mixes whole batches, but algorithm {self.algorithm!r} computes its "
                              "classification loss on part of the batch (or on other labels): use augment.mix=none with it")
        m.calls += 1
        return m.lam * self.base(logits, y, class_w) + (1.0 - m.lam) * self.base(logits, m.partner, class_w)


class BatchMixer:
    """``augment.mix`` on the training batches of an epoch; installs :class:`MixedCriterion` on ``algorithm``."""

    def __init__(self, cfg: AugmentConfig, algorithm, num_classes: int):
        ops = {"mixup": v2.MixUp, "cutmix": v2.CutMix}
        self.op = ops[cfg.mix](alpha=cfg.mix_alpha, num_classes=num_classes)
        self.criterion = MixedCriterion(algorithm.criterion, algorithm.hparams.name)
        algorithm.criterion = self.criterion

    def mix(self, batch: Batch, seed: int) -> tuple[Batch, Mixed]:
        """``batch`` with its images mixed (torchvision's ``make_params`` / ``transform``, drawn from a global RNG
        seeded with ``seed`` and then restored) and the :class:`Mixed` labels."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            params = {"labels": batch.y, "batch_size": batch.y.shape[0], **self.op.make_params([batch.x])}
        x = self.op.transform(batch.x, params)  # [B, 3, s, s]
        lam = params["lam_adjusted"] if "lam_adjusted" in params else params["lam"]
        return batch._replace(x=x), Mixed(batch.y, batch.y.roll(1, 0), float(lam))

    def batches(self, batches: Iterable[Batch], seed: int) -> Iterator[Batch]:
        """Each batch mixed, its labels' mixing active in the criterion while it trains (until the next is asked for)."""
        gen = torch.Generator().manual_seed(seed)
        try:
            for batch in batches:
                mixed, self.criterion.active = self.mix(batch, int(torch.randint(0, 2**62, (), generator=gen)))
                yield mixed
                if self.criterion.active.calls == 0:
                    raise ConfigError(f"augment.mix: algorithm {self.criterion.algorithm!r} never called the run's "
                                      "criterion on the mixed batch, so its labels could not be mixed: use augment.mix=none with it")
        finally:
            self.criterion.active = None


def make_mixer(cfg: AugmentConfig, algorithm, num_classes: int) -> BatchMixer | None:
    """The run's :class:`BatchMixer`, or None when ``augment.mix`` is none."""
    return None if cfg.mix == "none" else BatchMixer(cfg, algorithm, num_classes)
