"""Experiments and presets, read from the study files in ``experiments/`` (see :mod:`domgen.studies`).

The YAML is the one source of truth; ``EXPERIMENTS``, ``PRESETS`` and ``LOO_EXPERIMENT`` are the default
study's (``yoon2019``: Table 2 of Yoon et al., rows A-V), kept importable for existing callers.
:func:`resolve_config` turns a row + preset + seed + ``--set`` overrides into the one RunConfig a run is
keyed by; ``study=`` picks another study by name or path.
"""

from __future__ import annotations

from domgen.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PruneConfig,
    RunConfig,
    apply_overrides,
)
from domgen.config_check import normalise, validate
from domgen.errors import ConfigError
from domgen.studies import DEFAULT_STUDY, Experiment, Preset, Study, load_study, study_file_ref

__all__ = ["EXPERIMENTS", "Experiment", "LOO_EXPERIMENT", "PRESETS", "Preset", "resolve_config", "study_of"]


def __getattr__(name: str):
    # the default study's tables, read when first asked for (not at import: `--help` reads no YAML)
    if name == "EXPERIMENTS":
        return load_study().experiments
    if name == "PRESETS":
        return load_study().presets
    if name == "LOO_EXPERIMENT":
        return load_study().loo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def study_of(cfg: RunConfig) -> Study:
    """The study a resolved config came from (by its recorded file, else its name)."""
    return load_study(cfg.study_file or cfg.study)


def resolve_config(exp_name: str, preset: str = "paper", seed: int = 0, overrides: list[str] = (),
                   study: str | Study | None = None) -> RunConfig:
    """Row + preset + seed + ``--set`` overrides -> the one RunConfig that a run is keyed by."""
    st = study if isinstance(study, Study) else load_study(study or DEFAULT_STUDY)
    exp = st.experiments.get(exp_name)
    if preset not in st.presets:
        raise KeyError(f"unknown preset {preset!r}; known: {', '.join(st.presets)}")
    p = st.presets[preset]
    warm = exp.stage != "base"  # the second stage's schedule: warm-started rows and the pruning fine-tune
    cfg = RunConfig(
        exp=exp.name,
        preset=preset,
        seed=seed,
        study=st.name,
        study_file=study_file_ref(st),
        warm_start=exp.parent,
        data=DataConfig(synthetic_scale=p.synthetic_scale, nsec=exp.nsec, holdout=exp.holdout),
        transform=p.transform,
        model=ModelConfig(arch=exp.arch, weights=p.weights),
        optim=OptimConfig(
            lr=p.lr_warm if warm else p.lr_base,
            batch_size=p.batch_size,
            epochs=p.epochs_warm if warm else p.epochs_base,
            lr_step=p.step_warm if warm else p.step_base,
        ),
        prune=PruneConfig(batches=p.prune_batches),
    )
    # the row's definition, then the user's overrides (which may switch the algorithm again)
    try:
        cfg = apply_overrides(cfg, [f"algorithm.name={exp.algorithm}", *exp.set])
    except (ConfigError, KeyError, ValueError) as err:
        msg = err.args[0] if err.args else err
        raise ConfigError(f"{st.path}, row {exp.name!r}: {msg}") from None
    return validate(normalise(apply_overrides(cfg, list(overrides))))
