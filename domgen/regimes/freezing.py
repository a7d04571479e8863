"""Regimes that choose what trains: full fine-tuning, linear probing, LP-FT, gradual unfreezing, BitFit.

Davila, Colan & Hasegawa (arXiv 2406.10050, Image and Vision Computing 2024) compare eight fine-tuning
strategies on ResNet-50, DenseNet-121 and VGG-19 over six medical datasets (see ``domgen.regimes`` for
which of them domgen has); the ones that choose *which* parameters train are here (FT, LP, LP-FT, gradual
unfreezing, and BitFit, a parameter-efficient addition), those that choose *how fast* each layer trains in
``domgen.regimes.rates`` (layer-wise decay, Auto-RGN, Auto-SNR), the regulariser in
``domgen.regimes.penalties`` (L2-SP).

A frozen parameter keeps ``requires_grad = False``, so it gets no gradient and AdamW neither moves nor
decays it; it stays in the optimiser (the groups are fixed for the whole run, so a checkpoint's optimiser
state always fits). A frozen *block* also runs in evaluation mode: its BatchNorm layers use, and no longer
update, their running statistics ("BN statistics frozen too"), which is what makes a probe a probe.
So a probe's g(x) is a fixed function of the image, and with ``regime.precompute=true`` (``lp`` only) it is
computed once per image, kept in memory and in the data cache (reused by a second seed or another probe of
the same backbone), and each epoch trains the head alone on the same draws (``domgen.engine.features``);
without it (the default) the frozen backbone runs each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from torch import nn

from domgen.config import RegimeConfig
from domgen.regimes.base import REGIMES, Regime, hparam


@REGIMES.register("ft")
class FullFineTuning(Regime):
    """Full fine-tuning: every parameter trains at one rate (today's behaviour, bit for bit)."""

    reference = "Full fine-tuning: Yosinski et al., NeurIPS 2014; Davila et al., arXiv 2406.10050"


@dataclass(frozen=True)
class LinearProbingHparams(RegimeConfig):
    name: str = "lp"
    # compute g(x) once per image and train the head on those features (hashed only when true)
    precompute: bool = False


@REGIMES.register("lp")
class LinearProbing(Regime):
    """Linear probing: the backbone frozen, BatchNorm statistics included (g in evaluation mode); the head trains."""

    Hparams = LinearProbingHparams
    reference = "Linear probing: Kumar et al., ICLR 2022; Davila et al., arXiv 2406.10050"

    @classmethod
    def run_problems(cls, cfg: Any) -> Iterator[tuple[str, Any, str]]:
        """With ``precompute``, what cannot train on g(x) computed once from the un-augmented image."""
        yield from super().run_problems(cfg)
        if not getattr(cfg.regime, "precompute", False):
            return
        from domgen.algorithms import ALGORITHMS

        why = "regime.precompute=true computes g(x) once, from the evaluation crop"
        if cfg.augment.policy != "none":
            yield "augment.policy", cfg.augment.policy, f"{why}: an augmented image's g(x) differs every epoch; set augment.policy=none"
        if cfg.augment.mix != "none":
            yield "augment.mix", cfg.augment.mix, f"{why}: mixing blends images before the backbone; set augment.mix=none"
        alg = cfg.algorithm.name
        if alg in ALGORITHMS and ALGORITHMS.get(alg).needs_backbone:
            yield "algorithm.name", alg, f"{why}, and {alg} {ALGORITHMS.get(alg).needs_backbone}"
        if cfg.average.name == "swad":
            yield "average.name", "swad", f"{why}: SWAD recomputes the averaged model's BatchNorm statistics on training images"

    def describe(self) -> dict[str, Any]:
        # precompute only when on: the rows of every probe recorded before it existed stay as they were
        out = super().describe()
        if not out.get("regime_precompute", True):
            del out["regime_precompute"]
        return out

    def probing(self, epoch: int) -> bool:
        return True

    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        super().begin_epoch(epoch, epochs, model)
        self.set_trainable(["head"] if self.probing(epoch) else [b.name for b in self.blocks])

    def train_mode(self, model: nn.Module) -> None:
        if self.probing(self.epoch):
            model.g.eval()  # the frozen backbone's BatchNorm keeps its (pretrained) running statistics


@dataclass(frozen=True)
class LPFTHparams(RegimeConfig):
    name: str = "lp_ft"
    lp_epochs: int = hparam(10, lambda r: int(r.integers(1, 31)))  # epochs of probing before fine-tuning everything


@REGIMES.register("lp_ft")
class LPFT(LinearProbing):
    """LP-FT: ``lp_epochs`` of linear probing, then full fine-tuning starting from the probe's head."""

    Hparams = LPFTHparams
    reference = "Kumar, Raghunathan, Jones, Ma & Liang, ICLR 2022 (LP-FT); Davila et al., arXiv 2406.10050"

    @classmethod
    def problems(cls, hp: LPFTHparams):
        yield from super().problems(hp)
        if not hp.lp_epochs >= 0:
            yield "lp_epochs", hp.lp_epochs, "a number of epochs: must be >= 0"

    def probing(self, epoch: int) -> bool:
        # one model and one optimiser throughout: the head the fine-tuning starts from is the probe's own
        return epoch < self.hparams.lp_epochs


@dataclass(frozen=True)
class GradualHparams(RegimeConfig):
    name: str = "gradual_unfreeze"
    every: int = hparam(1, lambda r: int(r.integers(1, 6)))  # epochs between unfreezing one block and the next
    # each block's rate is the rate of the block above divided by this (ULMFiT's discriminative fine-tuning: 2.6)
    factor: float = hparam(2.6, lambda r: float(r.uniform(1.0, 4.0)))


@REGIMES.register("gradual_unfreeze")
class GradualUnfreezing(Regime):
    """Gradual unfreezing: the head, then one more block top-down every ``every`` epochs, rates / ``factor`` per block.

    Each block's learning rate is the rate of the block above it divided by ``factor``."""

    Hparams = GradualHparams
    reference = "Howard & Ruder, ACL 2018, Sec. 3.2-3.3 (ULMFiT); Davila et al., arXiv 2406.10050 (gradual unfreezing)"

    @classmethod
    def problems(cls, hp: GradualHparams):
        yield from super().problems(hp)
        if not hp.every >= 1:
            yield "every", hp.every, "epochs between unfreezing steps: must be >= 1"
        if not hp.factor >= 1:
            yield "factor", hp.factor, "lower blocks train slower: must be >= 1"

    def multipliers(self) -> dict[str, float]:
        # head: 1; the block under it: 1 / factor; the bottom block of L: factor^-L
        return {b.name: self.hparams.factor ** -depth for depth, b in enumerate(reversed(self.blocks))}

    def trainable(self, epoch: int) -> list[str]:
        """The head and the top ``epoch // every`` blocks of the backbone."""
        top = 1 + epoch // self.hparams.every
        return [b.name for b in self.blocks[::-1][:top]]

    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        super().begin_epoch(epoch, epochs, model)
        self.set_trainable(self.trainable(epoch))

    def train_mode(self, model: nn.Module) -> None:
        trainable = self.trainable(self.epoch)
        self.eval_blocks(b.name for b in self.blocks if b.name not in trainable)


@dataclass(frozen=True)
class BitFitHparams(RegimeConfig):
    name: str = "bitfit"


@REGIMES.register("bitfit")
class BitFit(Regime):
    """BitFit: only the backbone's bias terms (in a ResNet, BatchNorm's shifts) and the head train."""

    Hparams = BitFitHparams
    reference = "Ben Zaken, Ravfogel & Goldberg, ACL 2022 (BitFit)"

    def begin_epoch(self, epoch: int, epochs: int, model: nn.Module) -> None:
        super().begin_epoch(epoch, epochs, model)
        # BatchNorm's running statistics keep updating (train mode): BitFit restricts parameters, not statistics
        for name, p in model.g.named_parameters():
            p.requires_grad_(name.rsplit(".", 1)[-1] == "bias")
        model.h.requires_grad_(True)
