"""What an ablation found, from its ``cells.json`` (:mod:`domgen.sweep.ablate`) and the runs' results files.

A cell's score for one seed is the mean over domains of the metric on the test split, read from the
``final`` rows: the weights the trainer selected by training-domain validation (selection ``train``,
:mod:`domgen.results.selection`). The best cell is chosen by the same mean on the *validation* split, so
the test numbers it reports were not used to choose it.

* **Main effect** of an axis level: the mean of the cell scores (over seeds and over every combination
  of the other axes) at that level; its difference from the axis's first level is paired by (other
  axes' levels, seed): the two runs differ in this axis alone, so :func:`paired_stats` applies as in
  ``compare``.
* **Interaction** of levels (a, b) of two axes against their first levels (a0, b0): per (other axes,
  seed) unit, ``[s(a,b) - s(a0,b)] - [s(a,b0) - s(a0,b0)]``, the 2 x 2 difference of differences; zero
  when the effect of one axis does not depend on the other. Reported with the same paired statistics.
* **Learning curves**: per cell and epoch, the mean over seeds of the training loss (``train_loss``) and
  of the validation metric over the training domains.
* **A search** (``kind: search``) has no levels shared by several cells: its trials are ranked by mean
  validation score instead of averaged into effects.
* **Overfitting gap**: the metric on the training split minus on validation, at the selected epoch,
  where the run recorded training-split rows; where it did not, the gap is NaN and ``gap_note`` says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from domgen.results.compare import STAT_COLUMNS, paired_stats

STATS = [c for c in STAT_COLUMNS if c != "seeds"]
NO_TRAIN_ROWS = "no training-split evaluation recorded: the runs evaluate validation and test only (`--set train_eval=N` records it)"


@dataclass
class AblationResult:
    axes: list[str]
    metric: str
    long: pd.DataFrame  # cell, <axes>, seed, run, stage, split, domain, metric, value
    scores: pd.DataFrame  # cell, <axes>, seed, test, val (the metric, mean over domains)
    effects: pd.DataFrame  # axis, level, mean, n, then paired stats of level - first level
    interactions: pd.DataFrame  # axis_a, level_a, axis_b, level_b, then paired stats of the contrast
    curves: pd.DataFrame  # cell, epoch, train_loss, val_<metric>, seeds
    gaps: pd.DataFrame  # cell, train, val, gap, gap_note
    best: dict = field(default_factory=dict)  # cell, values, val, test, seeds, checkpoint, checkpoints
    missing: list[str] = field(default_factory=list)  # planned runs without a final result
    kind: str = "grid"  # grid (effects, interactions) | search (trials ranked by validation)


def cell_table(doc: dict) -> pd.DataFrame:
    """One row per planned run: cell (its label), the axes' values, seed, run folder name."""
    rows = []
    for c in doc["cells"]:
        label = ",".join(f"{k}={v}" for k, v in c["values"].items())
        rows += [{"cell": label, **c["values"], "seed": int(s), "run": run} for s, run in c["runs"].items()]
    return pd.DataFrame(rows)


def axes_of(doc: dict) -> list[str]:
    return list(doc["cells"][0]["values"])


def long_table(doc: dict, df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Cell x seed x split x domain x metric from the ``final`` rows of the finished planned runs."""
    cells = cell_table(doc)
    # collect names a run by its path under the runs folder; the plan knows the folder's own name
    rows = df[(df["stage"] == "final") & df["finished"].astype(bool)].copy()
    rows["run"] = rows["run_dir"].map(lambda p: Path(p).name)
    rows = rows.drop(columns=[c for c in ("seed", "cell", *axes_of(doc)) if c in rows.columns])
    merged = cells.merge(rows, on="run", how="inner")
    keep = [m for m in metrics if m in merged.columns]
    id_cols = ["cell", *axes_of(doc), "seed", "run", "stage", "split", "domain"]
    long = merged.melt(id_vars=id_cols, value_vars=keep, var_name="metric", value_name="value")
    return long.sort_values(id_cols[:2] + ["seed", "split", "domain", "metric"], kind="mergesort").reset_index(drop=True)


def cell_scores(doc: dict, long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (cell, seed): the metric's mean over domains on test and on validation (training domains'
    validation is what selected the weights; every domain's is averaged here, as the test one is)."""
    axes = axes_of(doc)
    sub = long[long["metric"] == metric]
    mean = sub.groupby(["cell", "seed", "split"])["value"].mean().unstack("split")
    for split in ("test", "val"):
        if split not in mean.columns:
            mean[split] = math.nan
    cells = cell_table(doc).drop(columns="run").set_index(["cell", "seed"])
    out = cells.join(mean[["test", "val"]], how="inner").reset_index()
    return out[["cell", *axes, "seed", "test", "val"]]


def _levels(doc: dict, axis: str) -> list[str]:
    return list(dict.fromkeys(str(c["values"][axis]) for c in doc["cells"]))


def main_effects(doc: dict, scores: pd.DataFrame, column: str = "test") -> pd.DataFrame:
    """Per axis and level: mean score, and paired stats of (level - first level) over matched units."""
    axes, rows = axes_of(doc), []
    for axis in axes:
        others = [a for a in axes if a != axis] + ["seed"]
        wide = scores.pivot_table(index=others, columns=axis, values=column, aggfunc="mean") if others else None
        levels = _levels(doc, axis)
        for level in levels:
            at = scores.loc[scores[axis] == level, column]
            pair = wide[[level, levels[0]]].dropna() if level in wide and levels[0] in wide else pd.DataFrame({0: [], 1: []})
            stats = paired_stats(pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy())
            rows.append({"axis": axis, "level": level, "mean": float(at.mean()) if len(at) else math.nan,
                         "n_runs": int(at.notna().sum()), "vs": levels[0], **stats})
    return pd.DataFrame(rows, columns=["axis", "level", "mean", "n_runs", "vs", *STATS])


def interactions(doc: dict, scores: pd.DataFrame, column: str = "test") -> pd.DataFrame:
    """For every pair of axes and every non-reference level pair (a, b): paired stats of
    ``s(a,b) - s(a0,b)`` against ``s(a,b0) - s(a0,b0)`` (``diff`` = the mean interaction contrast)."""
    axes, rows = axes_of(doc), []
    for x, y in itertools.combinations(axes, 2):
        units = [a for a in axes if a not in (x, y)] + ["seed"]
        wide = scores.pivot_table(index=units, columns=[x, y], values=column, aggfunc="mean")
        lx, ly = _levels(doc, x), _levels(doc, y)
        for a, b in itertools.product(lx[1:], ly[1:]):
            cols = [(a, b), (lx[0], b), (a, ly[0]), (lx[0], ly[0])]
            if not all(c in wide.columns for c in cols):
                continue
            q = wide[cols].dropna()
            effect_at_b = (q[cols[0]] - q[cols[1]]).to_numpy()
            effect_at_b0 = (q[cols[2]] - q[cols[3]]).to_numpy()
            rows.append({"axis_a": x, "level_a": a, "axis_b": y, "level_b": b, "vs_a": lx[0], "vs_b": ly[0],
                         **paired_stats(effect_at_b, effect_at_b0)})
    return pd.DataFrame(rows, columns=["axis_a", "level_a", "axis_b", "level_b", "vs_a", "vs_b", *STATS])


def two_way(doc: dict, scores: pd.DataFrame, x: str, y: str, column: str = "test") -> pd.DataFrame:
    """Mean score (over seeds and the other axes) for each level of ``x`` (rows) x ``y`` (columns)."""
    t = scores.pivot_table(index=x, columns=y, values=column, aggfunc="mean")
    return t.reindex(index=_levels(doc, x), columns=_levels(doc, y))


def learning_curves(doc: dict, df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell and epoch: mean over seeds of ``train_loss`` and of the validation metric (mean over the
    run's training domains). ``df`` must hold the per-epoch rows (stages ``train`` and ``val``)."""
    cells = cell_table(doc)[["cell", "seed", "run"]]
    rows = df.assign(run=df["run_dir"].map(lambda p: Path(p).name)).drop(columns=["seed"], errors="ignore")
    rows = cells.merge(rows, on="run", how="inner")
    out = []
    train = rows[(rows["stage"] == "train") & (rows["split"] == "train")]
    if "train_loss" in train.columns and len(train):
        out.append(train.groupby(["cell", "seed", "epoch"])["train_loss"].mean())
    val = rows[(rows["stage"] == "val") & (rows["split"] == "val")]
    if metric in val.columns and len(val):
        if "train_domains" in val.columns:  # selection's domains; every domain's when the row does not say
            val = val[[d in t if isinstance(t, tuple) and t else True for d, t in zip(val["domain"], val["train_domains"])]]
        out.append(val.groupby(["cell", "seed", "epoch"])[metric].mean().rename(f"val_{metric}"))
    if not out:
        return pd.DataFrame(columns=["cell", "epoch", "train_loss", f"val_{metric}", "seeds"])
    per_seed = pd.concat(out, axis=1).reset_index()
    curves = per_seed.groupby(["cell", "epoch"]).agg(
        **{c: (c, "mean") for c in per_seed.columns if c not in ("cell", "seed", "epoch")}, seeds=("seed", "nunique"))
    return curves.reset_index()


def overfitting_gaps(doc: dict, long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell: the metric on the training split minus on validation at the selected epoch (means over
    seeds and domains), or NaN with a note when no training-split rows were recorded."""
    sub = long[long["metric"] == metric]
    rows = []
    for cell in cell_table(doc)["cell"].unique():
        c = sub[sub["cell"] == cell]
        val = float(c.loc[c["split"] == "val", "value"].mean()) if (c["split"] == "val").any() else math.nan
        if (c["split"] == "train").any():
            tr = float(c.loc[c["split"] == "train", "value"].mean())
            rows.append({"cell": cell, "train": tr, "val": val, "gap": tr - val, "gap_note": ""})
        else:
            rows.append({"cell": cell, "train": math.nan, "val": val, "gap": math.nan, "gap_note": NO_TRAIN_ROWS})
    return pd.DataFrame(rows, columns=["cell", "train", "val", "gap", "gap_note"])


def best_cell(doc: dict, scores: pd.DataFrame, runs_dir: Path) -> dict:
    """The cell with the highest mean validation score (ties: the earlier cell), its test score, and the
    checkpoint of its best seed by validation (``best.pt`` in that run's folder)."""
    if scores.empty or scores["val"].notna().sum() == 0:
        return {}
    order = list(cell_table(doc)["cell"].unique())
    means = scores.groupby("cell").agg(val=("val", "mean"), test=("test", "mean"), seeds=("seed", "nunique"))
    means = means.reindex([c for c in order if c in means.index]).dropna(subset=["val"])
    cell = str(means["val"].idxmax())
    runs = cell_table(doc).set_index(["cell", "seed"])["run"]
    mine = scores[scores["cell"] == cell].sort_values(["val", "seed"], ascending=[False, True])
    ckpt = lambda seed: str(Path(runs_dir) / runs[(cell, int(seed))] / "best.pt")  # noqa: E731
    values = next(c["values"] for c in doc["cells"] if ",".join(f"{k}={v}" for k, v in c["values"].items()) == cell)
    return {"cell": cell, "values": values, "val": float(means.loc[cell, "val"]), "test": float(means.loc[cell, "test"]),
            "seeds": int(means.loc[cell, "seeds"]), "checkpoint": ckpt(mine["seed"].iloc[0]),
            "checkpoints": [ckpt(s) for s in sorted(mine["seed"])]}


def analyse(doc: dict, df: pd.DataFrame, metric: str | None = None, metrics: list[str] | None = None) -> AblationResult:
    """Everything above from a ``cells.json`` document and :func:`collect` rows of stages ``train``,
    ``val`` and ``final`` (``collect(runs, stages=("train", "val", "final"), splits=("train", "val", "test"))``)."""
    metric = metric or doc.get("metric") or "macro_recall"
    metrics = list(dict.fromkeys([metric, *(metrics or ["macro_recall", "balanced_acc", "ovr_auc", "accuracy"])]))
    long = long_table(doc, df, metrics)
    scores = cell_scores(doc, long, metric)
    done = set(scores["cell"] + "|" + scores["seed"].astype(str))
    planned = cell_table(doc)
    missing = [r.run for r in planned.itertuples() if f"{r.cell}|{r.seed}" not in done]
    if doc.get("kind") == "search":  # every trial its own values: no levels to average over, trials are ranked instead
        effects = pd.DataFrame(columns=["axis", "level", "mean", "n_runs", "vs", *STATS])
        inter = pd.DataFrame(columns=["axis_a", "level_a", "axis_b", "level_b", "vs_a", "vs_b", *STATS])
    else:
        effects, inter = main_effects(doc, scores), interactions(doc, scores)
    return AblationResult(axes_of(doc), metric, long, scores, effects, inter, learning_curves(doc, df, metric),
                          overfitting_gaps(doc, long, metric), best_cell(doc, scores, Path(doc.get("runs_dir", "."))),
                          missing, doc.get("kind", "grid"))
