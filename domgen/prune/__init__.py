"""Channel pruning: DCP selection (``dcp``, pure torch) and the torch-pruning edge (``physical``)."""

from domgen.prune.dcp import Unit, prunable_units, select_channels_dcp
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
    "IMPORTANCES",
    "Unit",
    "apply_selection",
    "count_params_macs",
    "load_pruned",
    "prunable_units",
    "prune_by_importance",
    "prune_model",
    "save_pruned",
    "select_channels_dcp",
]
