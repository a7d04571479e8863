"""The paper's experiments as data (Yoon et al., MICCAI 2019, Table 2) and the presets that size them."""

from domgen.experiments.registry import EXPERIMENTS, Experiment, PRESETS, Preset, resolve_config

__all__ = ["EXPERIMENTS", "Experiment", "PRESETS", "Preset", "resolve_config"]
