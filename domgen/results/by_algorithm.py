"""Results by algorithm (DomainBed's tables): one row per algorithm, one column per domain, mean +/- std over
seeds, under a named model selection (:mod:`domgen.results.selection`).

Columns follow one rule for the table and for ``compare`` by algorithm:

* an algorithm whose runs hold out different single domains (a leave-one-out sweep, ``loo --holdout
  all``): the columns are the held-out domains, each cell from the runs holding that domain out (all
  starred), and ``avg`` is over them, as in DomainBed's tables;
* an algorithm whose runs all hold out the same domains (none, or the same ones): the columns are every
  domain those runs were tested on, held-out ones starred, and ``avg`` is over all of them (Table 2's).

When any algorithm ran a leave-one-out sweep, the table's columns are held-out domains, so the runs that
hold no single domain out (the sweep's warm-start parent, an algorithm without a sweep) have no cell:
they are left out and the caption names them. An algorithm whose runs mix holdouts otherwise (none and
one domain) is refused. ``avg`` is each seed's mean over the columns first, then mean and std across
seeds (a seed missing a column has no ``avg``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from domgen.data.labels import domain_order
from domgen.results.collect import select
from domgen.results.selection import DEFAULT, SelectionError, get_selection, pending_line, select_rows, selection_line
from domgen.results.spread import spread_of, with_replicates
from domgen.results.tables import AVG, _data_line, _latex, _markdown, left_out_lines, metric_values

LOO, SAME = "loo", "same"


def algorithm_label(row: dict) -> str:
    """The algorithm's name, with the weight averaging it ran under when the run records one (``erm+swad``)."""
    average = row.get("average")
    if isinstance(average, str) and average and average.lower() != "none":
        return f"{row['algorithm']}+{average}"
    return str(row["algorithm"])


@dataclass
class ByAlgorithm:
    """(algorithm, seed) x columns of one metric under one selection, and what the columns mean."""

    wide: pd.DataFrame  # index (algorithm, seed); columns: domains, then avg
    columns: list[str]  # the domain columns avg is over
    layout: str  # LOO or SAME
    held: dict[str, set] = field(default_factory=dict)  # algorithm -> starred columns
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the selected rows the cells come from
    left_out: list[str] = field(default_factory=list)  # runs beside the leave-one-out sweeps, not in the table
    pending: list[str] = field(default_factory=list)  # lodo: runs whose sibling runs are not all finished


def _plan(runs: pd.DataFrame) -> tuple[dict[str, str], list[str], list[str]]:
    """From one row per run (``run``, ``label``, ``holdout``): each algorithm's layout, the runs to report
    and the runs left out (those beside leave-one-out sweeps that hold no single domain out, such as the
    sweep's warm-start parent: they have no held-out column to stand for)."""
    layouts, keep, left = {}, [], []
    for label, group in runs.groupby("label", sort=True):
        holdouts = set(group["holdout"])
        single = group["holdout"].map(len) == 1
        if len({h for h in holdouts if len(h) == 1}) > 1:  # a leave-one-out sweep over several domains
            layouts[label] = LOO
            keep += group.loc[single, "run"].tolist()
            left += group.loc[~single, "run"].tolist()
        elif len(holdouts) == 1:
            layouts[label] = SAME
            keep += group["run"].tolist()
        else:
            raise SelectionError(
                f"{label}'s runs hold out different sets of domains ({'; '.join(' '.join(h) or 'none' for h in sorted(holdouts))}): "
                "a table by algorithm needs one leave-one-out sweep or runs holding out the same domains; choose "
                "runs with --exps / --preset / --study or a separate --runs folder")
    if LOO in layouts.values():  # algorithms without a sweep have no held-out column: left out, and said so
        for label in [k for k, v in layouts.items() if v != LOO]:
            left += runs.loc[runs["label"] == label, "run"].tolist()
            keep = [r for r in keep if r not in set(left)]
            del layouts[label]
    return layouts, keep, sorted(left)


def _check_one_run(cells: pd.DataFrame) -> None:
    runs = cells.groupby(["label", "seed", "domain"])["run"].unique()
    clash = runs[runs.map(len) > 1]
    if len(clash):
        (label, seed, domain), names = clash.index[0], clash.iloc[0]
        raise SelectionError(f"{len(clash)} cells of the table by algorithm come from several runs, e.g. {label} seed "
                             f"{seed} {domain}: {', '.join(sorted(names))}; averaging them would mix settings: choose "
                             "runs with --exps / --preset / --study or a separate --runs folder")


def by_algorithm(df: pd.DataFrame, metric: str = "macro_recall", include_unfinished: bool = False,
                 selection: str = DEFAULT, exps: Iterable[str] | None = None) -> ByAlgorithm:
    """The per-seed values the table and ``compare`` by algorithm share (column rule: module docstring);
    ``exps``: only these experiments' runs (others still count as lodo siblings)."""
    base = select(df, include_unfinished=include_unfinished)
    if base.empty:
        return ByAlgorithm(pd.DataFrame(columns=[AVG]), [], SAME, {}, base)
    runs = base.drop_duplicates("run")
    if exps is not None:
        runs = runs[runs["exp"].isin(list(exps))]
    runs = runs.assign(label=[algorithm_label(r) for r in runs.to_dict("records")],
                       holdout=[h if isinstance(h, tuple) else () for h in runs.get("holdout", [()] * len(runs))])
    layouts, keep, left = _plan(runs)
    picked = select_rows(df, selection, runs=keep)  # every run still counts for lodo (as a sibling once finished)
    pending = list(picked.attrs.get("pending", []))
    rows = with_replicates(picked)
    if rows.empty:
        return ByAlgorithm(pd.DataFrame(columns=[AVG]), [], SAME, {}, rows, left, pending)
    rows = rows.assign(label=rows["run"].map(runs.set_index("run")["label"]), value=metric_values(rows, metric))
    parts, held = [], {}
    for label, group in rows.groupby("label", sort=True):
        if layouts[label] == LOO:  # each run stands for its held-out domain only
            group = group[[d in h for d, h in zip(group["domain"], group["holdout"])]]
            held[label] = set(group["domain"])
        else:
            h = group["holdout"].iloc[0]
            held[label] = set(h) if isinstance(h, tuple) else set()
        parts.append(group)
    cells = pd.concat(parts)
    _check_one_run(cells)
    wide = cells.set_index(["label", "seed", "domain"])["value"].unstack("domain").astype(float)
    columns = [d for d in domain_order(wide.columns) if wide[d].notna().any()]
    wide = wide.reindex(columns=columns)
    wide.index.names = ["algorithm", "seed"]
    # skipna=False: a seed missing one column gets no avg rather than an avg over fewer domains
    wide[AVG] = wide[columns].mean(axis=1, skipna=False) if columns else np.nan
    return ByAlgorithm(wide, columns, next(iter(layouts.values())), held, cells, left, pending)


def algorithm_frame(res: ByAlgorithm) -> pd.DataFrame:
    """Index algorithm; ``seeds``; per column (domains, avg): ``<col>_mean``, ``<col>_std`` (ddof=1), ``<col>_n``."""
    out = []
    for label in sorted(set(res.wide.index.get_level_values("algorithm"))):
        vals = res.wide.loc[label]
        sub = res.rows[res.rows["label"] == label]
        rec = {"algorithm": label, "seeds": int(len(vals)), "held_out": " ".join(domain_order(res.held[label])),
               "synthetic": bool(sub["synthetic"].fillna(False).astype(bool).any()),
               "data": " ".join(sorted(sub["data"].dropna().astype(str).unique())),
               "preset": " ".join(sorted(sub["preset"].dropna().astype(str).unique()))}
        for col in [*res.columns, AVG]:
            v = vals[col].dropna()
            rec[f"{col}_mean"] = float(v.mean()) if len(v) else math.nan
            rec[f"{col}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            rec[f"{col}_n"] = int(len(v))
        out.append(rec)
    return pd.DataFrame(out).set_index("algorithm") if out else pd.DataFrame()


def columns_line(res: ByAlgorithm) -> str:
    cols = " ".join(res.columns)
    if res.layout == LOO:
        return (f"Columns: the held-out domains ({cols}), each cell from the runs holding that domain out "
                f"(leave-one-domain-out, all starred); avg = each seed's mean over those {len(res.columns)} domains, "
                "then mean and std across seeds.")
    return (f"Columns: every domain the runs were tested on; * = held out of training and selection; avg = each "
            f"seed's mean over {len(res.columns)} domains ({cols}; held-out included), then mean and std across seeds.")


def caption(res: ByAlgorithm, frame: pd.DataFrame, metric: str, selection: str) -> list[str]:
    seeds = sorted(set(res.wide.index.get_level_values("seed")))
    bound = " (an upper bound, not a result)" if get_selection(selection).upper_bound else ""
    spread = spread_of(res.rows)
    if spread.over_seeds_only:
        over = ("over training seeds (the spread is over seeds, each fixing the data split and initialisation), "
                "the plain value with one seed.")
        last = f"Seeds: {' '.join(map(str, seeds))}."
    else:
        over = (f"over replicates (the spread is over {spread.words()}: each replicate a training seed on one data "
                "split), the plain value with one replicate.")
        last = spread.line()
    return [
        f"Test {metric} (x100) by algorithm{bound}: mean and sample std (ddof=1) {over}",
        selection_line(selection),
        columns_line(res),
        _data_line(frame),
        f"Preset: {', '.join(sorted(set(' '.join(frame['preset']).split())))}.",
        last,
    ]


def _cells(res: ByAlgorithm, frame: pd.DataFrame, pm: str) -> list[list[str]]:
    out = []
    for label, rec in frame.iterrows():
        row = [label]
        for col in [*res.columns, AVG]:
            mean, std, n = rec[f"{col}_mean"], rec[f"{col}_std"], rec[f"{col}_n"]
            text = "-" if n == 0 or not math.isfinite(mean) else (
                f"{mean:.1f}" if n == 1 or not math.isfinite(std) else f"{mean:.1f}{pm}{std:.1f}")
            row.append(text + ("*" if text != "-" and col in res.held[label] else ""))
        out.append(row + [str(rec["seeds"])])
    return out


def algorithm_table(df: pd.DataFrame, fmt: str = "md", metric: str = "macro_recall", include_unfinished: bool = False,
                    selection: str = DEFAULT, exps: Iterable[str] | None = None, exploratory: str | None = None) -> str:
    """The table by algorithm as Markdown, LaTeX or CSV (the numeric :func:`algorithm_frame`); ``exploratory``:
    the caption's first line, for a metric that is not the study's pre-registered one (``domgen.protocol``)."""
    res = by_algorithm(df, metric, include_unfinished, selection, exps)
    frame = algorithm_frame(res)
    if frame.empty:
        return "No finished runs with test results.\n"
    if fmt == "csv":
        return frame.to_csv()
    lines = [exploratory] * bool(exploratory) + caption(res, frame, metric, selection) + left_out_lines(df, include_unfinished)
    if res.left_out:
        lines.append(f"Left out: {len(res.left_out)} run(s) holding no single domain out beside the leave-one-out "
                     f"sweeps (no held-out column to stand for): {', '.join(res.left_out)}.")
    lines += pending_line(res.pending)
    right = (*res.columns, AVG, "seeds")
    if fmt == "md":
        return _markdown(lines, _cells(res, frame, " ± "), left=("Algorithm",), right=right)
    if fmt == "latex":
        return _latex(lines, _cells(res, frame, "\x01"), left=("Algorithm",), right=right)
    raise ValueError(f"fmt must be 'md', 'latex' or 'csv', got {fmt!r}")
