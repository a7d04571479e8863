"""Typed configuration: one frozen dataclass tree, presets as data, ``--set key=value`` overrides.

The resolved config is written into every run folder and its hash names the folder, so a sweep can
be re-run and skips what is finished (DomainBed's habit, with types instead of string-keyed dicts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from domgen.atomic import write_text_atomic


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # "" -> $DOMGEN_DATA, else the synthetic benchmark
    synthetic_scale: float = 1.0
    synthetic_seed: int = 0
    split_seed: int = 0
    nsec: str = "0"  # "0".."5" or "a": training images per class from each non-primary source
    holdout: tuple[str, ...] = ()  # domains removed from training and model selection (still evaluated)
    skip_missing: bool = False
    cache_dir: str = ""  # "" -> $DOMGEN_CACHE, else ~/.cache/domgen
    workers: int = 2  # processes decoding the image cache; DataLoader workers of the uncached path
    cached: bool = True  # decode once into uint8 arrays (False: reference per-image PIL pipeline)
    # The protocol (README, "Data"): how the root is laid out, which classes, which domain is primary.
    layout: str = "native"  # native (one sub-folder per source) | metadata_csv | domain_folders | medmnist
    label_space: str = ""  # a registered label space; "" = the layout's own (dermoscopy7 / sorted labels)
    primary: str = "HAM"  # the domain trained on in full (Yoon et al.); "none" = every domain's training split
    domain_by: str = ""  # a metadata column whose values become the domains (e.g. localization); "" = the sources
    # Split variance (issue #13): 0 = the paper's 50/20/30 split; K >= 2 = stratified group K-fold, ``fold`` the test fold
    folds: int = 0
    fold: int = 0
    # the share of the primary domain's training split kept (every domain's with primary none): whole lesion
    # groups, per class, in a seeded order fixed by split_seed (domgen.data.splits.group_fraction); 1 = all
    train_fraction: float = 1.0


@dataclass(frozen=True)
class TransformConfig:
    """Paper: resize 650, centre crop 300, random resized crop 224, flips, rot90, Cutout 64."""

    resize: int = 650
    crop: int = 300
    size: int = 224
    cutout: int = 64


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation (``domgen.data.policies``): a named policy and batch mixing."""

    policy: str = "paper"  # none | basic | paper (Yoon et al.'s recipe, transform.*) | dermoscopy | heavy
    jitter: float = 0.1  # dermoscopy: colour jitter strength j (brightness, contrast, saturation x U(1-j, 1+j); hue +-j/2)
    mix: str = "none"  # none | mixup | cutmix: mix each training batch with itself, rolled by one
    mix_alpha: float = 1.0  # mixup / cutmix: lam ~ Beta(alpha, alpha) (torchvision's MixUp / CutMix default)


POLICIES = ("none", "basic", "paper", "dermoscopy", "heavy")
MIXES = ("none", "mixup", "cutmix")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"  # a name of domgen.models.BACKBONES (resnet18/50/152, densenet121, vit_small, ...), or "timm:<name>"
    # "imagenet" | "none" | a local file path | "timm:<model>.<tag>" | "meanvar[:PATH]" | "transfer:K[:PATH]"
    weights: str = "imagenet"
    head_dropout: float = 0.0  # dropout on the features before the head h (0 = no Dropout module at all)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 32
    epochs: int = 135
    lr_step: int = 45  # lr divided by 10 every lr_step epochs
    lr_gamma: float = 0.1
    # Added with the schedules and regularisers (domgen.engine.schedules, domgen.engine.loop); hashed only when set.
    schedule: str = "step"  # step | constant | cosine | warmup_cosine | onecycle: stepped once per epoch
    warmup_epochs: int = 5  # warmup_cosine: epochs of linear warmup before the cosine
    min_lr: float = 0.0  # cosine, warmup_cosine: the rate the cosine ends at
    clip_norm: float = 0.0  # clip the gradient's global L2 norm to this before each step; 0 = no clipping
    patience: int = 0  # stop after this many epochs without a better selection score; 0 = never stop early


SCHEDULES = ("step", "constant", "cosine", "warmup_cosine", "onecycle")


@dataclass(frozen=True)
class AlgorithmConfig:
    """Names the training algorithm and its sampler. Each algorithm in ``domgen.algorithms`` declares its
    hyperparameters as a subclass of this (``algorithm.margin`` is CCSA's); ``algorithm.name`` switches the
    section to that class's defaults, and a key the class does not declare is an error listing its keys."""

    name: str = "erm"  # a registered algorithm: erm | ccsa | ...
    # a registered sampler the algorithm accepts: uniform | domain_balanced | class_balanced | sqrt_frequency |
    # effective_number | pairs
    sampler: str = "uniform"


@dataclass(frozen=True)
class RegimeConfig:
    """How the pretrained model is adapted (``domgen.regimes``): which parameters train in which epoch, their
    learning-rate multipliers and any penalty added to the algorithm's loss. Each regime declares its
    hyperparameters as a subclass of this; ``regime.name`` switches the section to that class's defaults,
    as ``algorithm.name`` does."""

    name: str = "ft"  # a registered regime: ft (every parameter, one group) | lp | lp_ft | llrd | ...


@dataclass(frozen=True)
class LossConfig:
    """The classification loss every algorithm uses, weighted by the inverse probabilities of the classes
    its sampler draws (see ``domgen.losses.ce`` and ``domgen.losses.ccsa`` for the conventions and sources)."""

    name: str = "ce"  # a registered classification loss (domgen.losses.LOSSES)
    weighted: bool = True  # inverse-probability class weights (ERM: of the pool; CCSA: of each stream)
    # How every inverse-probability weight of a run is normalised (the class weights here and CCSA's pair
    # weights): "max": authors' code, rarest = 1; "mean": mean 1 under the sampler (domgen 0.1).
    weight_norm: str = "max"
    reduction: str = "auto"  # "weighted_mean" | "mean" | "auto": weighted_mean with max weights, mean with mean ones
    # Added for the imbalance losses (domgen.losses.focal, .ldam, .weights); hashed only when set.
    # "inverse": 1 / P(class drawn) | "effective": Cui et al. 2019's effective number of samples, with beta
    class_weights: str = "inverse"
    beta: float = 0.999  # effective-number beta (class_weights=effective, and the effective_number sampler)
    drw_epoch: int = 0  # deferred re-weighting (Cao et al. 2019): class weights off before this epoch; 0 = never off
    gamma: float = 2.0  # focal: focusing exponent (Lin et al. 2017)
    gamma_pos: float = 0.0  # asymmetric: focusing exponent of the positive (the label) (Ridnik et al. 2021)
    gamma_neg: float = 4.0  # asymmetric: focusing exponent of the negatives
    clip: float = 0.05  # asymmetric: probability margin m shifting the negatives' probabilities
    smoothing: float = 0.1  # label_smoothing: mass spread uniformly over the K classes (Szegedy et al. 2016)
    max_m: float = 0.5  # ldam: the largest class margin (the rarest class's) (Cao et al. 2019)
    scale: float = 30.0  # ldam: logit scale s


@dataclass(frozen=True)
class PruneConfig:
    method: str = "dcp"  # "dcp" or a torch-pruning importance: magnitude | taylor | bn
    threshold: float = 1e-4  # DCP stopping rule on the relative decrease of the objective
    disc_weight: float = 0.5  # cross-entropy weight; 0.5 = the DCP authors' MSE + CE (our reconstruction term is MSE / 2)
    ratio: float = 0.3  # channel ratio for the importance baselines
    batches: int = 8  # batches of a stratified sample of the pool used to select channels (fine-tuning follows optim.*)
    # Where DCP's discrimination term L_S^p comes from. "aux" (default, because it is the method as
    # published, DCP Eq. 4-5 and Alg. 1, and it judges each stage by what its own features keep): a
    # BN-ReLU-avgpool-FC head at the end of each stage but the last, fitted for aux_steps Adam steps on
    # the calibration data; the last stage uses the model's own logits (L_f). "final": the model's
    # final logits for every layer (domgen's earlier shortcut; no fitting). See domgen.prune.dcp.
    disc_head: str = "aux"
    aux_steps: int = 200  # Adam steps fitting the auxiliary heads (backbone frozen)
    aux_lr: float = 1e-2


@dataclass(frozen=True)
class AverageConfig:
    """Weight averaging on top of any algorithm (``domgen.engine.averaging``): the weights evaluated are
    an average of the trained ones. SWAD's window rule constants are Cha et al.'s (khanrc/swad config)."""

    name: str = "none"  # none | ema | sma | swad
    decay: float = 0.999  # ema: e_t = decay * e_{t-1} + (1 - decay) * w_t
    start_epoch: int = 0  # sma: epochs trained before the uniform average starts (before: the current weights)
    n_converge: int = 3  # swad: segments (epochs) whose oldest must hold the minimum loss to call convergence
    n_tolerance: int = 6  # swad: segments in a row above the threshold that close the window
    tolerance_ratio: float = 0.3  # swad: threshold = (1 + ratio) x the mean loss of the converging segments


AVERAGES = ("none", "ema", "sma", "swad")


@dataclass(frozen=True)
class RunConfig:
    exp: str = "A"
    preset: str = "paper"
    study: str = "yoon2019"  # the study (experiments/<study>.yaml) whose row `exp` is
    study_file: str = ""  # the study file, when its name alone does not find it (a study given as a path)
    seed: int = 0
    out: str = "runs"
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch; 0 = domgen.threads.thread_budget decides
    warm_start: str = ""  # experiment whose best checkpoint initialises this one ("" = none)
    # evaluated after each epoch: "all" = validation and test splits of every domain, recorded so that the
    # selection methods (train / lodo / oracle) can be applied afterwards; "selection" = only the training
    # domains' validation; "auto" = all when the run holds a domain out (what lodo and oracle select on)
    epoch_eval: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    channels_last: str = "auto"  # auto (on CUDA) | on | off: the model's memory format
    # training images evaluated after each epoch (a fixed seeded subsample, stratified by domain), recorded
    # as split "train" rows so that the overfitting gap (train minus validation) reads from results; 0 = none
    train_eval: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (warn_only) and cuDNN's deterministic flags
    save_init: bool = False  # keep the weights training starts from as init.pt (for `similarity --vs-init`)
    data: DataConfig = field(default_factory=DataConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    average: AverageConfig = field(default_factory=AverageConfig)
    regime: RegimeConfig = field(default_factory=RegimeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# Fields that say where or how a run executes, not what it computes: left out of the hash. ``train_eval``
# (like ``epoch_eval``) only adds evaluation rows: eval-mode forward passes on a subsample drawn from its own
# generator, so the trained weights and every other row are the same with or without it. ``deterministic``
# picks kernels, not the computation (results differ only by the non-deterministic kernels' rounding).
_NOT_HASHED = {"out", "study_file", "device", "threads", "epoch_eval", "train_eval", "deterministic", "save_init", "data.workers", "data.cache_dir", "data.cached", "data.root"}


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict, cls: type = RunConfig) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        sub = _dataclass_type(f)
        if sub is AlgorithmConfig:  # the section's class is the named algorithm's hyperparameters
            sub = algorithm_hparams(value.get("name", AlgorithmConfig.name))
        elif sub is RegimeConfig:  # likewise the named regime's
            sub = regime_hparams(value.get("name", RegimeConfig.name))
        if sub is not None:
            value = from_dict(value, sub)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def algorithm_hparams(name: str) -> type:
    """The hyperparameter dataclass of the registered algorithm ``name`` (imports ``domgen.algorithms``,
    and so torch, only when asked); an unknown name fails listing the known ones."""
    from domgen.algorithms import ALGORITHMS

    return ALGORITHMS.get(name).Hparams


def regime_hparams(name: str) -> type:
    """The hyperparameter dataclass of the registered regime ``name`` (imports ``domgen.regimes`` only when asked)."""
    from domgen.regimes import REGIMES

    return REGIMES.get(name).Hparams


def _dataclass_type(f: dataclasses.Field) -> type | None:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if is_dataclass(default) else None


# Fields added after runs were recorded: hashed only when they differ from these defaults, so every run
# folder made before they existed keeps its name (and a sweep still finds it done).
_HASHED_WHEN_SET = {"data.layout": "native", "data.label_space": "", "data.primary": "HAM", "data.domain_by": "",
                    "data.folds": 0, "data.fold": 0,
                    "precision": "auto", "channels_last": "auto", "study": "yoon2019",
                    # literals, not the dataclasses' defaults: a changed default must not take over old folders
                    "average.name": "none", "average.decay": 0.999, "average.start_epoch": 0, "average.n_converge": 3,
                    "average.n_tolerance": 6, "average.tolerance_ratio": 0.3,
                    "loss.class_weights": "inverse", "loss.beta": 0.999, "loss.drw_epoch": 0, "loss.gamma": 2.0,
                    "loss.gamma_pos": 0.0, "loss.gamma_neg": 4.0, "loss.clip": 0.05, "loss.smoothing": 0.1,
                    "loss.max_m": 0.5, "loss.scale": 30.0, "data.train_fraction": 1.0,
                    # domgen.regimes: the name and every regime's own keys
                    "regime.name": "ft", "regime.lp_epochs": 10, "regime.every": 1, "regime.factor": 2.6,
                    "regime.decay": 0.65, "regime.alpha": 0.1, "regime.beta": 0.01, "regime.rank": 8,
                    "regime.lora_alpha": 16.0, "regime.lora_dropout": 0.0, "regime.target_modules": "qkv",
                    "regime.norm": "mars", "regime.proj_freq": 1, "regime.proj_lr": 0.01, "regime.max_iters": 1,
                    "regime.precompute": False,
                    "optim.schedule": "step", "optim.warmup_epochs": 5, "optim.min_lr": 0.0, "optim.clip_norm": 0.0,
                    "optim.patience": 0, "model.head_dropout": 0.0,
                    "augment.policy": "paper", "augment.jitter": 0.1, "augment.mix": "none", "augment.mix_alpha": 1.0,
                    "algorithm.margin_dim": 0}


def config_hash(cfg: RunConfig, data_identity: str = "", ignore: tuple[str, ...] = ()) -> str:
    """Hash of everything that decides the result. ``data_identity`` names the data actually used
    (e.g. "synthetic" or the resolved data root), since ``data.root`` itself may be empty. ``ignore``:
    keys (``seed``) or sections (``algorithm.``) left out, for the keys that group runs (:func:`run_keys`)."""
    flat = {k: v for k, v in flatten(to_dict(cfg)).items()
            if k not in _NOT_HASHED and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])
            and not any(k == i or (i.endswith(".") and k.startswith(i)) for i in ignore)}
    flat["data.identity"] = data_identity
    blob = json.dumps(flat, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def run_keys(cfg: RunConfig, data_identity: str = "") -> dict[str, str]:
    """Hashes that group runs for model selection afterwards (``domgen.results.selection``):

    * ``family``: everything but the experiment's name, the seed and which domains are held out. The
      leave-one-out runs of one method and its hyperparameters (O-T, or ``loo --holdout all
      --algorithm X``) share it, which is what leave-one-domain-out selection averages over.
    * ``search``: the family without the algorithm's hyperparameters (its name kept): the trials of one
      hyperparameter search (``sweep --hparams random``), among which a selection method chooses.
    """
    base = ("exp", "seed", "data.holdout")
    algorithm = tuple(f"algorithm.{k}" for k in flatten(to_dict(cfg.algorithm)) if k != "name")
    return {"family": config_hash(cfg, data_identity, ignore=base),
            "search": config_hash(cfg, data_identity, ignore=base + algorithm)}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """``["optim.lr=1e-3", "data.nsec=a"]`` -> a new config. Values are parsed by the field's type;
    an unknown key fails and lists the valid ones. ``algorithm.name`` and ``regime.name`` are applied
    first, so that the named algorithm's (regime's) hyperparameters can follow them in any order."""
    items = list(overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides))
    items.sort(key=lambda kv: not kv[0].endswith(("algorithm.name", "regime.name")))  # stable: the rest keep their order
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _set(cfg: Any, path: list[str], value: Any, full: str) -> Any:
    names = {f.name: f for f in fields(cfg)}
    # a section whose fields are the named algorithm's (regime's) declared hyperparameters
    switched = next(((kind, hparams) for base, kind, hparams in _SWITCHED if isinstance(cfg, base)), None)
    if path[0] not in names:
        if switched:
            from domgen.errors import ConfigError

            kind = switched[0]
            raise ConfigError(f"unknown config key {full!r}: {kind} {cfg.name!r} has no hyperparameter {path[0]!r}; "
                              f"its keys: {', '.join(sorted(names))} (set {kind}.name first to use another {kind}'s)")
        valid = ", ".join(sorted(flatten(to_dict(cfg))))
        raise KeyError(f"unknown config key {full!r}; valid keys: {valid}")
    current = getattr(cfg, path[0])
    if len(path) > 1:
        if not is_dataclass(current):
            raise KeyError(f"config key {full!r}: {path[0]!r} has no sub-keys")
        return replace(cfg, **{path[0]: _set(current, path[1:], value, full)})
    if switched and path[0] == "name" and value != cfg.name:
        return switched[1](str(value))()  # another algorithm (regime): its own hyperparameters, at their defaults
    return replace(cfg, **{path[0]: _parse(value, current, full)})


# config sections that ``name`` switches to another class: (section type, key, its hyperparameter class by name)
_SWITCHED = ((AlgorithmConfig, "algorithm", algorithm_hparams), (RegimeConfig, "regime", regime_hparams))


def _parse(value: Any, current: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            return tuple(v for v in value.split(",") if v)
    except ValueError:
        raise ValueError(f"config key {key!r} expects {type(current).__name__}, got {value!r}") from None
    return value


def save_yaml(cfg: RunConfig, path: Path, extra: dict | None = None) -> None:
    d = to_dict(cfg) | (extra or {})
    write_text_atomic(path, yaml.safe_dump(d, sort_keys=False))


def load_yaml(path: Path) -> RunConfig:
    d = yaml.safe_load(Path(path).read_text())
    return from_dict({k: v for k, v in d.items() if k in {f.name for f in fields(RunConfig)}})


def cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("DOMGEN_CACHE") or Path.home() / ".cache" / "domgen")


# The names config_check.validate accepts (data/layouts.py asserts its loaders match LAYOUTS)
LAYOUTS = ("native", "metadata_csv", "domain_folders", "medmnist")
EPOCH_EVAL = ("auto", "all", "selection")
