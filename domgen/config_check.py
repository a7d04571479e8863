"""What a run config may say, and how it is spelt: ``normalise`` (one spelling per computation, so equal
runs share one hash) and ``validate`` (one place that says which values can work, checked before any run
folder exists).

Kept apart from :mod:`domgen.config`, which holds the dataclasses, their hash and ``--set``: these rules
ask the registries (sources, losses, algorithms, regimes, label spaces), each imported only when a check
needs it.
"""

from __future__ import annotations

from dataclasses import replace

from domgen.config import (
    AVERAGES,
    EPOCH_EVAL,
    LAYOUTS,
    MIXES,
    POLICIES,
    SCHEDULES,
    AlgorithmConfig,
    AverageConfig,
    DataConfig,
    LossConfig,
    OptimConfig,
    RegimeConfig,
    RunConfig,
)


def normalise(cfg: RunConfig) -> RunConfig:
    """Spell the data protocol one way: ``holdout`` and ``primary`` as domain codes ("SONIC", "son" ->
    "SON"; holdouts without repeats, in Table 1 order), ``primary`` "None"/"" -> "none" (whose pool is
    every training split, i.e. nsec = "a"), and the native layout's own label space as "". Domains that
    are not a registered source's (a metadata.csv root, ``domain_by`` values) are kept as written."""
    new = normalise_data(cfg.data)
    return cfg if new == cfg.data else replace(cfg, data=new)


def normalise_data(d: DataConfig) -> DataConfig:
    """The data section of :func:`normalise` (also applied by ``prepare_data`` to a hand-made DataConfig)."""
    primary = d.primary.strip()
    if primary.lower() in ("", "none"):
        primary = "none"
    elif primary != DataConfig.primary:  # the default is a code already: no need to load the sources
        primary = _domain(primary)
    holdout = _holdout_order(dict.fromkeys(_domain(h) for h in d.holdout if h.strip())) if d.holdout else ()
    label_space = "" if d.layout == "native" and d.label_space == "dermoscopy7" else d.label_space.strip()
    nsec = "a" if primary == "none" else d.nsec
    new = replace(d, primary=primary, holdout=holdout, label_space=label_space, nsec=nsec)
    return d if new == d else new


def _domain(name: str) -> str:
    from domgen.data.labels import normalise_domain  # imports the source registry: only when needed

    return normalise_domain(name)


def _holdout_order(codes: dict) -> tuple[str, ...]:
    from domgen.data.labels import DOMAINS

    return tuple(sorted(codes, key=lambda c: (DOMAINS.index(c) if c in DOMAINS else len(DOMAINS), c)))


# ---- validation: one place that says which values can work, checked before any run folder exists ----
def validate(cfg: RunConfig) -> RunConfig:
    """Return ``cfg`` or raise :class:`domgen.errors.ConfigError` naming the key, the value and the range.

    Called by ``resolve_config``, so the CLI, sweeps and tests refuse a config that cannot work (a zero
    batch size, a probability above 1, an unknown loss) before anything is written."""
    from domgen.errors import ConfigError

    problems = [f"{key}={value!r} ({why})" for key, value, why in _problems(cfg)]
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems) + ". Fix the --set value (or the preset)")
    return cfg


def _problems(cfg: RunConfig):
    o, t, d, loss, p = cfg.optim, cfg.transform, cfg.data, cfg.loss, cfg.prune
    positive = {"optim.epochs": o.epochs, "optim.batch_size": o.batch_size, "optim.lr": o.lr, "optim.lr_step": o.lr_step,
                "transform.resize": t.resize, "transform.crop": t.crop, "transform.size": t.size,
                "data.synthetic_scale": d.synthetic_scale, "prune.batches": p.batches}
    for key, value in positive.items():
        if not value > 0:
            yield key, value, "must be > 0"
    nonneg = {"optim.weight_decay": o.weight_decay, "data.workers": d.workers, "threads": cfg.threads,
              "transform.cutout": t.cutout, "seed": cfg.seed, "train_eval": cfg.train_eval, "prune.threshold": p.threshold, "prune.disc_weight": p.disc_weight}
    for key, value in nonneg.items():
        if not value >= 0:
            yield key, value, "must be >= 0"
    if not 0 <= p.ratio < 1:
        yield "prune.ratio", p.ratio, "a fraction of channels to remove: must be in [0, 1)"
    if not o.lr_gamma > 0:
        yield "optim.lr_gamma", o.lr_gamma, "must be > 0"
    if not t.size <= t.crop <= t.resize:
        yield "transform", f"{t.resize}/{t.crop}/{t.size}", "needs size <= crop <= resize"
    if cfg.device not in ("auto", "cpu", "cuda", "mps") and not cfg.device.startswith("cuda:"):
        yield "device", cfg.device, "auto, cpu, cuda, cuda:N or mps"
    if cfg.precision not in ("auto", "bf16", "fp32"):
        yield "precision", cfg.precision, "auto, bf16 or fp32"
    if cfg.epoch_eval not in EPOCH_EVAL:
        yield "epoch_eval", cfg.epoch_eval, " or ".join(EPOCH_EVAL)
    if cfg.channels_last not in ("auto", "on", "off"):
        yield "channels_last", cfg.channels_last, "auto, on or off"
    yield from _loss_problems(loss)
    yield from _algorithm_problems(cfg.algorithm)
    yield from _regime_problems(cfg.regime)
    yield from _regime_run_problems(cfg)
    if p.method not in ("dcp", "magnitude", "taylor", "bn"):
        yield "prune.method", p.method, "dcp, magnitude, taylor or bn"
    if not (str(d.nsec).strip().lower() in ("a", "all") or (str(d.nsec).strip().isdigit() and int(d.nsec) <= 5)):
        yield "data.nsec", d.nsec, "0..5 or a"
    yield from _data_problems(d)
    yield from _average_problems(cfg.average, o.epochs)
    yield from _schedule_problems(o)
    yield from _augment_problems(cfg)


def _schedule_problems(o: OptimConfig):
    if o.schedule not in SCHEDULES:
        yield "optim.schedule", o.schedule, " | ".join(SCHEDULES)
    if o.schedule == "warmup_cosine" and not 1 <= o.warmup_epochs < o.epochs:
        yield "optim.warmup_epochs", o.warmup_epochs, f"warmup_cosine warms up for 1..optim.epochs-1 = {o.epochs - 1} epochs"
    if not 0 <= o.min_lr < o.lr:
        yield "optim.min_lr", o.min_lr, f"the cosine's floor: must be in [0, optim.lr = {o.lr})"
    if not o.clip_norm >= 0:
        yield "optim.clip_norm", o.clip_norm, "the largest gradient norm: must be >= 0 (0 = no clipping)"
    if not o.patience >= 0:
        yield "optim.patience", o.patience, "epochs without a better selection score: must be >= 0 (0 = never stop early)"


def _augment_problems(cfg: RunConfig):
    a = cfg.augment
    if a.policy not in POLICIES:
        yield "augment.policy", a.policy, " | ".join(POLICIES)
    if not 0 <= a.jitter < 1:
        yield "augment.jitter", a.jitter, "a colour jitter strength: must be in [0, 1)"
    if a.mix not in MIXES:
        yield "augment.mix", a.mix, " | ".join(MIXES)
    if not a.mix_alpha > 0:
        yield "augment.mix_alpha", a.mix_alpha, "the Beta distribution's parameter: must be > 0"
    if a.mix != "none" and cfg.algorithm.name == "mixup":
        yield "augment.mix", a.mix, "the mixup algorithm mixes its batches already: use one of the two"
    elif a.mix != "none" and _images_per_sample(cfg.algorithm) != 1:
        yield "augment.mix", a.mix, f"algorithm {cfg.algorithm.name!r} trains on pairs, which mixing the batch would cross"
    if not 0 <= cfg.model.head_dropout < 1:
        yield "model.head_dropout", cfg.model.head_dropout, "a dropout probability: must be in [0, 1)"


def _average_problems(a: AverageConfig, epochs: int):
    if a.name not in AVERAGES:
        yield "average.name", a.name, " | ".join(AVERAGES)
    if not 0 < a.decay < 1:
        yield "average.decay", a.decay, "an EMA decay: must be in (0, 1)"
    if a.start_epoch < 0 or (a.name == "sma" and a.start_epoch >= epochs):
        yield "average.start_epoch", a.start_epoch, f"must be in [0, optim.epochs) = [0, {epochs}): epochs before averaging starts"
    for key, value in (("n_converge", a.n_converge), ("n_tolerance", a.n_tolerance)):
        if not value >= 1:
            yield f"average.{key}", value, "a number of epochs: must be >= 1"
    if not a.tolerance_ratio >= 0:
        yield "average.tolerance_ratio", a.tolerance_ratio, "must be >= 0"


def validate_data(d: DataConfig) -> DataConfig:
    """``validate`` for a data section alone (``summary``, which has no run config)."""
    from domgen.errors import ConfigError

    problems = [f"{key}={value!r} ({why})" for key, value, why in _data_problems(d)]
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems) + ". Fix the --set value")
    return d


def _data_problems(d: DataConfig):
    if d.folds != 0 and d.folds < 2:
        yield "data.folds", d.folds, "0 (the 50/20/30 split) or a number of folds K >= 2"
    elif not (0 <= d.fold < max(d.folds, 1)):
        yield "data.fold", d.fold, f"the test fold: 0..{max(d.folds, 1) - 1} (data.folds={d.folds})"
    if not 0 < d.train_fraction <= 1:
        yield "data.train_fraction", d.train_fraction, "a share of the training split: must be in (0, 1]"
    if d.layout not in LAYOUTS:
        yield "data.layout", d.layout, " | ".join(LAYOUTS)
    if d.primary in d.holdout:
        yield "data.primary", d.primary, "is also held out (data.holdout): the primary domain trains, so it cannot be held out"
    if d.label_space:
        from domgen.data.label_space import LABEL_SPACES

        if d.label_space not in LABEL_SPACES:
            yield "data.label_space", d.label_space, f"a registered label space: {', '.join(LABEL_SPACES.names())}, or empty"


def _loss_problems(loss: LossConfig):
    from domgen.losses import CLASS_WEIGHTS, LOSSES, REDUCTIONS, WEIGHT_NORMS  # imports torch

    if loss.name not in LOSSES:
        yield "loss.name", loss.name, f"a registered classification loss: {', '.join(LOSSES.names())}"
    if loss.weight_norm not in WEIGHT_NORMS:
        yield "loss.weight_norm", loss.weight_norm, " or ".join(WEIGHT_NORMS)
    if loss.reduction not in REDUCTIONS:
        yield "loss.reduction", loss.reduction, ", ".join(REDUCTIONS)
    if loss.class_weights not in CLASS_WEIGHTS:
        yield "loss.class_weights", loss.class_weights, " or ".join(CLASS_WEIGHTS)
    if not 0 <= loss.beta < 1:
        yield "loss.beta", loss.beta, "the effective-number beta: must be in [0, 1)"
    if not loss.drw_epoch >= 0:
        yield "loss.drw_epoch", loss.drw_epoch, "an epoch (0-based; 0 = weights from the start): must be >= 0"
    for key in ("gamma", "gamma_pos", "gamma_neg"):
        if not getattr(loss, key) >= 0:
            yield f"loss.{key}", getattr(loss, key), "a focusing exponent: must be >= 0"
    for key in ("clip", "smoothing"):
        if not 0 <= getattr(loss, key) < 1:
            yield f"loss.{key}", getattr(loss, key), "must be in [0, 1)"
    for key in ("max_m", "scale"):
        if not getattr(loss, key) > 0:
            yield f"loss.{key}", getattr(loss, key), "must be > 0"


def _images_per_sample(hp: AlgorithmConfig) -> int:
    from domgen.algorithms import ALGORITHMS

    return ALGORITHMS.get(hp.name).images_per_sample if hp.name in ALGORITHMS else 1


def _algorithm_problems(hp: AlgorithmConfig):
    """The algorithm's own checks of its hyperparameters (``Algorithm.problems``), keyed ``algorithm.<field>``."""
    from domgen.algorithms import ALGORITHMS

    for key, value, why in ALGORITHMS.get(hp.name).problems(hp):
        yield f"algorithm.{key}", value, why


def _regime_problems(hp: RegimeConfig):
    """The regime's own checks of its hyperparameters (``Regime.problems``), keyed ``regime.<field>``."""
    from domgen.regimes import REGIMES

    for key, value, why in REGIMES.get(hp.name).problems(hp):
        yield f"regime.{key}", value, why


def _regime_run_problems(cfg: RunConfig):
    """The regime's checks of the rest of the run (``Regime.run_problems``), keyed as they name them."""
    from domgen.regimes import REGIMES

    if cfg.regime.name in REGIMES:
        yield from REGIMES.get(cfg.regime.name).run_problems(cfg)
