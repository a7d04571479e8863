"""The overfitting gap from results files: per run, epoch and domain, the metric on the fixed training
subsample (rows with split ``train``, stage ``val``: written when a run sets ``train_eval``) minus the same
metric on the validation split. A gap that grows while validation stalls is overfitting to the training
images; a domain's gap compares that domain's training images with its own validation images.
"""

from __future__ import annotations

import pandas as pd

GAP_COLUMNS = ("run", "exp", "seed", "epoch", "domain", "train", "val", "gap")


def gap_frame(df: pd.DataFrame, metric: str = "macro_recall") -> pd.DataFrame:
    """``df``: collected rows with the per-epoch train and val splits
    (``collect(runs, stages=("val",), splits=("train", "val"))``). One row per (run, epoch, domain) that has
    both; runs without training rows (``train_eval`` unset) have none."""
    rows = df[df["stage"] == "val"]
    key = ["run", "exp", "seed", "epoch", "domain"]
    train = rows[rows["split"] == "train"].set_index(key)[metric].rename("train")
    val = rows[rows["split"] == "val"].set_index(key)[metric].rename("val")
    out = pd.concat([train, val], axis=1, join="inner").reset_index()
    out["gap"] = out["train"] - out["val"]
    return out.sort_values(key).reset_index(drop=True)[list(GAP_COLUMNS)]
