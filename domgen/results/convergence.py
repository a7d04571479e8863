"""Convergence speed from results files alone: the epoch at which a run first reaches a fraction of its
best validation score (Raghu et al., "Transfusion", NeurIPS 2019, Sec. 5 and Fig. 5 measure the steps to
reach a fraction of the final AUC; here epochs, the granularity results.jsonl records).

A run's validation score at an epoch is the one its trainer selects on (``domgen.engine.trainer``): the
mean validation macro recall over the run's training domains (``train_domains`` of each row), from the
per-epoch rows (stage ``val``, split ``val``). The best is the maximum over the epochs recorded; the
fraction is of that best, so a run that peaks early and then degrades still counts as converged early.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

FRACTIONS = (0.9, 0.95)


def epoch_scores(df: pd.DataFrame, metric: str = "macro_recall") -> pd.DataFrame:
    """Per (run, epoch): the selection score, from the stage-``val`` rows of ``df`` (``collect`` with
    ``stages=("val",), splits=("val",)``). Columns run, exp, seed, epoch, score; sorted by run, epoch."""
    cols = ["run", "exp", "seed", "epoch", "score"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    val = df[(df["stage"] == "val") & (df["split"] == "val")]
    own = [d in tuple(t) for d, t in zip(val["domain"], val["train_domains"])]  # the domains selection averages
    val = val[own]
    out = val.groupby(["run", "exp", "seed", "epoch"], sort=True)[metric].mean().rename("score").reset_index()
    return out[cols]


def first_epoch_reaching(epochs: Iterable[int], scores: Iterable[float], fraction: float) -> int | None:
    """The first epoch whose score is at least ``fraction`` x the best score (None when nothing is finite)."""
    e, s = np.asarray(list(epochs)), np.asarray(list(scores), dtype=float)
    finite = np.isfinite(s)
    if not finite.any():
        return None
    e, s = e[finite], s[finite]
    order = np.argsort(e, kind="stable")
    e, s = e[order], s[order]
    return int(e[np.flatnonzero(s >= fraction * s.max())[0]])


def convergence(df: pd.DataFrame, fractions: Iterable[float] = FRACTIONS, metric: str = "macro_recall") -> pd.DataFrame:
    """One row per run: exp, seed, epochs recorded, best score and its (first) epoch, and for each fraction f
    ``epochs_to_<100 f>``: the first epoch (1-based, as results.jsonl counts) reaching f x the best."""
    fractions = tuple(fractions)
    rows = []
    for (run, exp, seed), g in epoch_scores(df, metric).groupby(["run", "exp", "seed"], sort=True):
        best = float(np.nanmax(g["score"])) if g["score"].notna().any() else float("nan")
        row = {"run": run, "exp": exp, "seed": int(seed), "epochs": int(g["epoch"].max()), "best_score": best,
               "best_epoch": first_epoch_reaching(g["epoch"], g["score"], 1.0)}
        for f in fractions:
            row[f"epochs_to_{round(100 * f):d}"] = first_epoch_reaching(g["epoch"], g["score"], f)
        rows.append(row)
    columns = ["run", "exp", "seed", "epochs", "best_score", "best_epoch"] + [f"epochs_to_{round(100 * f):d}" for f in fractions]
    return pd.DataFrame(rows, columns=columns)
