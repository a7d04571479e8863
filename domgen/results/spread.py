"""What a table's spread is over: training seeds, folds of a K-fold split, split seeds, or several of them.

Issue #13: a spread over training seeds alone leaves out split variance. Runs on other splits
(``sweep --folds K``, ``--split-seeds``) record ``split_seed``, ``folds`` and ``fold`` in their result rows
(``domgen.runs.train.split_context``); here each (training seed, split) of one experiment becomes one
replicate, so a cell's mean and std are over all of them, and the caption says which axes vary.
Rows without those fields (runs on the paper's split, older records) are split seed 0, no folds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

TRAIN_SEED = "train_seed"  # the training seed, kept beside ``seed`` once ``seed`` names a replicate


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    if name not in rows:
        return pd.Series(0, index=rows.index, dtype="int64")
    return pd.to_numeric(rows[name], errors="coerce").fillna(0).astype("int64")


@dataclass(frozen=True)
class Spread:
    """The distinct values of each axis in a table's rows."""

    seeds: tuple[int, ...]
    split_seeds: tuple[int, ...]
    folds: tuple[int, ...]  # K of the K-fold splits (0: the study's own split)
    fold_ids: tuple[int, ...]

    @property
    def axes(self) -> list[str]:
        """The axes that vary: "seeds", "folds", "split seeds" (in that order)."""
        out = ["seeds"] if len(self.seeds) > 1 else []
        out += ["folds"] if len(self.fold_ids) > 1 or len(self.folds) > 1 else []
        return out + (["split seeds"] if len(self.split_seeds) > 1 else [])

    @property
    def over_seeds_only(self) -> bool:
        """Nothing but the training seed varies (the tables' captions stay as they always were)."""
        return self.axes in ([], ["seeds"])

    def words(self) -> str:
        """"seeds", "folds", "seeds and folds", "seeds, folds and split seeds", ..."""
        axes = self.axes or ["seeds"]
        return axes[0] if len(axes) == 1 else ", ".join(axes[:-1]) + " and " + axes[-1]

    def line(self) -> str:
        """The caption's sentence: what the spread is over, and each axis's values."""
        parts = [f"training seeds {' '.join(map(str, self.seeds))}"]
        k = [f for f in self.folds if f]
        if k:
            kinds = "/".join(map(str, k))
            parts.append(f"test folds {' '.join(map(str, self.fold_ids))} of a stratified group {kinds}-fold split")
        if len(self.split_seeds) > 1 or self.split_seeds != (0,):
            parts.append(f"split seeds {' '.join(map(str, self.split_seeds))}")
        return (f"Spread: over {self.words()} (each cell's replicates: {' x '.join(parts)}); the seeds column "
                "counts replicates.")


def spread_of(rows: pd.DataFrame) -> Spread:
    seeds = _column(rows, TRAIN_SEED if TRAIN_SEED in rows else "seed")
    return Spread(tuple(sorted(set(seeds))), tuple(sorted(set(_column(rows, "split_seed")))),
                  tuple(sorted(set(_column(rows, "folds")))), tuple(sorted(set(_column(rows, "fold")))))


def with_replicates(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` unchanged when only training seeds vary; else ``seed`` becomes a replicate label
    (``s0/f2of5/p1``: training seed, fold of K, split seed; only the varying parts) and the training seed
    moves to ``train_seed``, so every table keyed by (experiment, seed) spreads over all replicates."""
    spread = spread_of(rows)
    if rows.empty or spread.over_seeds_only or TRAIN_SEED in rows:
        return rows
    axes = spread.axes
    seed, fold, folds, split = (_column(rows, c) for c in ("seed", "fold", "folds", "split_seed"))
    label = "s" + seed.astype(str)
    if "folds" in axes:
        label += pd.Series([f"/f{f}of{k}" if k else "/paper" for f, k in zip(fold, folds)], index=rows.index)
    if "split seeds" in axes:
        label += "/p" + split.astype(str)
    return rows.assign(**{TRAIN_SEED: seed, "seed": label})
