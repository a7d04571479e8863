"""Channel pruning: calibration sample (``calibration``), DCP selection (``dcp``, ``heads``, ``greedy_ls``;
pure torch) and the torch-pruning edge (``physical``)."""

from domgen.prune.calibration import stratified_sample
from domgen.prune.dcp import Branch, Unit, prunable_units, select_channels_dcp, sweep_channels_dcp
from domgen.prune.heads import AuxHead, HeadFit, fit_aux_heads, stage_names
from domgen.prune.physical import (
    IMPORTANCES,
    apply_selection,
    count_params_macs,
    load_pruned,
    prune_by_importance,
    prune_model,
    save_pruned,
)

__all__ = [
    "AuxHead",
    "Branch",
    "HeadFit",
    "IMPORTANCES",
    "Unit",
    "apply_selection",
    "count_params_macs",
    "fit_aux_heads",
    "load_pruned",
    "prunable_units",
    "prune_by_importance",
    "prune_model",
    "save_pruned",
    "select_channels_dcp",
    "stage_names",
    "stratified_sample",
    "sweep_channels_dcp",
]
