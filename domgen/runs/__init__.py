"""Drivers of the experiments (train, loo, prune, ...); the experiments themselves are data, read from
the study files in ``experiments/`` (see :mod:`domgen.studies` and :mod:`domgen.runs.registry`)."""

from domgen.runs.registry import Experiment, Preset, resolve_config

__all__ = ["EXPERIMENTS", "Experiment", "PRESETS", "Preset", "resolve_config"]


def __getattr__(name: str):
    if name in ("EXPERIMENTS", "PRESETS"):
        from domgen.runs import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
