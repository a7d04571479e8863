"""Experiments A-V of the paper as registry entries, and presets that scale every size together.

Table 2 of Yoon et al.: A-C ResNet-18/50/152 on HAM only; D, E with nsec = 5 / a (A-E: ERM, cross-entropy
weighted by the pool's inverse class frequencies, Table 2's "w" in the Cl column; ``loss.weighted=false``
for plain cross-entropy);
F-K weighted CCSA with nsec = 1..5, a (warm start from A); L-N unweighted classification / alignment /
both (``loss.weighted=false``, ``algorithm.weighted_align=false``); O-T leave one domain out (nsec = a);
U, V DCP pruning of K at thresholds 1e-4 and 1e-3. An experiment names its algorithm and the ``--set``
overrides that define it; the user's own overrides come after.
"""

from __future__ import annotations

from dataclasses import dataclass

from domgen.config import normalise, validate
from domgen.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PruneConfig,
    RunConfig,
    TransformConfig,
    apply_overrides,
)
from domgen.registry import Registry


@dataclass(frozen=True)
class Preset:
    """Sizes of one scale of the recipe. ``paper`` is the paper's exact numbers."""

    transform: TransformConfig
    weights: str
    lr: float  # baseline stage
    lr_ccsa: float  # warm-started stage (CCSA, F-T) and pruning fine-tune: the paper uses 1e-4 for both stages
    batch_size: int
    epochs_base: int  # baseline (A-E): 135 epochs, lr / 10 every 45
    step_base: int
    epochs_ccsa: int  # warm-started stage (CCSA, F-T, and pruning fine-tune): 20 epochs, lr / 10 after 10
    step_ccsa: int
    synthetic_scale: float
    prune_batches: int


PRESETS: dict[str, Preset] = {
    "paper": Preset(TransformConfig(650, 300, 224, 64), "imagenet", 1e-4, 1e-4, 32, 135, 45, 20, 10, 1.0, 32),
    # CPU-friendly: learns on the synthetic default in minutes on 2 cores. Random init needs a larger
    # baseline learning rate than the paper's fine-tuning of ImageNet weights; the CCSA stage keeps the
    # paper's 1e-4 (at 1e-3 the separation term, m = 50, wrecks the warm-started classifier).
    "quick": Preset(TransformConfig(96, 64, 56, 16), "none", 1e-3, 1e-4, 32, 12, 8, 6, 4, 1.0, 4),
    # Tiny: seconds, for tests and checks.
    "smoke": Preset(TransformConfig(40, 32, 28, 8), "none", 1e-3, 1e-3, 16, 2, 1, 2, 1, 0.25, 1),
}


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    arch: str = "resnet18"
    nsec: str = "0"
    algorithm: str = "erm"  # a registered algorithm (domgen.algorithms)
    holdout: tuple[str, ...] = ()
    warm_start: str = ""  # parent experiment whose best checkpoint initialises this one
    prune_threshold: float | None = None  # set for the pruning experiments
    overrides: tuple[str, ...] = ()  # --set items that define the experiment (L-N: the weighting switched off)

    @property
    def stage(self) -> str:
        """``base`` (from scratch, A-E), ``warm`` (from a parent's best checkpoint, F-T) or ``prune`` (U, V)."""
        if self.prune_threshold is not None:
            return "prune"
        return "warm" if self.warm_start else "base"


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def _add(exp: Experiment) -> None:
    EXPERIMENTS.add(exp.name, exp)


UNWEIGHTED_CLS, UNWEIGHTED_ALIGN = "loss.weighted=false", "algorithm.weighted_align=false"
for _name, _arch in (("A", "resnet18"), ("B", "resnet50"), ("C", "resnet152")):
    _add(Experiment(_name, f"{_arch} on HAM10000 only (nsec=0), weighted cross-entropy", arch=_arch))
_add(Experiment("D", "resnet18, nsec=5 from every other source, weighted cross-entropy", nsec="5"))
_add(Experiment("E", "resnet18, nsec=a (all training data), weighted cross-entropy", nsec="a"))
for _name, _nsec in zip("FGHIJK", ("1", "2", "3", "4", "5", "a")):
    _add(Experiment(_name, f"weighted CCSA, nsec={_nsec}", nsec=_nsec, algorithm="ccsa", warm_start="A"))
_add(Experiment("L", "CCSA, unweighted classification", nsec="a", algorithm="ccsa", warm_start="A", overrides=(UNWEIGHTED_CLS,)))
_add(Experiment("M", "CCSA, unweighted alignment", nsec="a", algorithm="ccsa", warm_start="A", overrides=(UNWEIGHTED_ALIGN,)))
_add(Experiment("N", "CCSA, both unweighted", nsec="a", algorithm="ccsa", warm_start="A", overrides=(UNWEIGHTED_CLS, UNWEIGHTED_ALIGN)))
for _name, _dom in zip("OPQRST", ("DMF", "D7P", "MSK", "PH2", "SON", "UDA")):
    _add(
        Experiment(_name, f"weighted CCSA, nsec=a, {_dom} held out", nsec="a", algorithm="ccsa", holdout=(_dom,), warm_start="A")
    )
_add(Experiment("U", "DCP pruning of K, threshold 1e-4", nsec="a", algorithm="ccsa", warm_start="K", prune_threshold=1e-4))
_add(Experiment("V", "DCP pruning of K, threshold 1e-3", nsec="a", algorithm="ccsa", warm_start="K", prune_threshold=1e-3))

LOO_EXPERIMENT = {exp.holdout[0]: name for name in EXPERIMENTS.names() if (exp := EXPERIMENTS.get(name)).holdout}


def resolve_config(exp_name: str, preset: str = "paper", seed: int = 0, overrides: list[str] = ()) -> RunConfig:
    """Experiment + preset + seed + ``--set`` overrides -> the one RunConfig that a run is keyed by."""
    exp = EXPERIMENTS.get(exp_name)
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    warm = exp.stage != "base"  # the second stage's schedule: F-T and the pruning fine-tune
    cfg = RunConfig(
        exp=exp.name,
        preset=preset,
        seed=seed,
        warm_start=exp.warm_start,
        data=DataConfig(synthetic_scale=p.synthetic_scale, nsec=exp.nsec, holdout=exp.holdout),
        transform=p.transform,
        model=ModelConfig(arch=exp.arch, weights=p.weights),
        optim=OptimConfig(
            lr=p.lr_ccsa if warm else p.lr,
            batch_size=p.batch_size,
            epochs=p.epochs_ccsa if warm else p.epochs_base,
            lr_step=p.step_ccsa if warm else p.step_base,
        ),
        prune=PruneConfig(
            threshold=exp.prune_threshold or PruneConfig.threshold,
            batches=p.prune_batches,
        ),
    )
    # the experiment's definition, then the user's overrides (which may switch the algorithm again)
    cfg = apply_overrides(cfg, [f"algorithm.name={exp.algorithm}", *exp.overrides])
    return validate(normalise(apply_overrides(cfg, list(overrides))))
