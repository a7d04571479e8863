"""The paper's Table 2 from collected results: test macro recall per domain, mean and std over seeds.

Yoon, Hamarneh & Garbi (MICCAI 2019), Table 2: one row per experiment A-V (backbone, nsec, weighted or
unweighted classification / alignment, pruning), columns HAM DMF D7P MSK PH2 SON UDA and their average;
held-out domains (leave-one-domain-out, O-T) are starred. The paper reports one run per cell; here a
cell is the mean over seeds with the sample standard deviation (ddof=1) when there are several.

``avg`` follows the paper, all columns held-out included: each seed's mean over the domains first,
then mean and std of those per-seed averages across seeds. The domains averaged are those with any
value in the table (all seven on a full benchmark); a seed missing one of them has no ``avg``. On other
data (a DomainBed folder, a metadata.csv source) the columns are that data's domains
(:func:`domgen.data.labels.table_columns`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from domgen.data.labels import table_columns
from domgen.errors import ConfigError
from domgen.studies import DEFAULT_STUDY, load_study
from domgen.results.collect import check_one_run_per_seed, collect, select, unfinished_runs
from domgen.results.selection import DEFAULT as DEFAULT_SELECTION, get_selection, pending_line, select_rows, selection_line
from domgen.results.spread import spread_of, with_replicates

AVG = "avg"
META = ("Exp", "nsec", "arch", "Cl", "Al", "Pr")
# Metrics stored as fractions; shown x100 like macro recall so every cell reads as a percentage.
_FRACTIONS = {"mel_auc", "mel_sens", "mel_spec", "pos_auc", "pos_sens", "pos_spec", "pos_ppv", "pos_npv"}


def table_rows(df: pd.DataFrame, include_unfinished: bool = False, selection: str = DEFAULT_SELECTION,
               exps: Iterable[str] | None = None) -> pd.DataFrame:
    """The test rows of finished runs (of ``exps``, when given) that ``selection`` picks (Table 2's source;
    with ``train``, the final test rows), checked to hold one run per (exp, seed). See
    :mod:`domgen.results.selection`. Runs on several splits (folds, split seeds): ``seed`` names each
    replicate (:func:`domgen.results.spread.with_replicates`)."""
    # every run, finished or not, tells lodo which domains a family holds out; only the kept runs are reported
    picked = select_rows(df, selection, exps, runs=select(df, include_unfinished=include_unfinished)["run"].unique())
    rows = with_replicates(picked)
    check_one_run_per_seed(rows)
    rows.attrs["pending"] = list(picked.attrs.get("pending", []))  # lodo: runs waiting for their siblings
    return rows


def per_seed(
    df: pd.DataFrame, metric: str = "macro_recall", include_unfinished: bool = False, selection: str = DEFAULT_SELECTION,
    exps: Iterable[str] | None = None,
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(exp, seed) x (domains, avg) values of ``metric``, and the domains ``avg`` is taken over (the domain
    columns: :func:`domgen.data.labels.table_columns`, HAM..UDA on dermoscopy)."""
    rows = table_rows(df, include_unfinished, selection, exps)
    wide, avg_domains = wide_values(rows, metric, ["exp", "seed"])
    wide.attrs["pending"] = rows.attrs["pending"]
    return wide, avg_domains


def metric_values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of each row as a number, fractions (AUC, sensitivity) x100 like macro recall."""
    if metric not in rows.columns:
        if len(rows):
            known = [c for c in rows.columns if pd.api.types.is_numeric_dtype(rows[c])]
            raise KeyError(f"unknown metric {metric!r}; numeric columns: {', '.join(known)}")
        return pd.Series(np.nan, index=rows.index, dtype=float)
    scale = 100.0 if metric in _FRACTIONS else 1.0
    return pd.to_numeric(rows[metric], errors="coerce") * scale


def wide_values(rows: pd.DataFrame, metric: str, keys: list[str]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """``keys`` x (domains, avg) values of ``metric`` in ``rows``, and the domains ``avg`` is over. The
    domain columns are :func:`~domgen.data.labels.table_columns` of the rows' domains: Table 2's seven on
    dermoscopy, a DomainBed folder's own domains on its data."""
    values = rows.assign(value=metric_values(rows, metric))
    values = values.drop_duplicates([*keys, "domain"], keep="last")
    wide = values.set_index([*keys, "domain"])["value"].unstack("domain")
    domains = table_columns(values["domain"].dropna().unique() if "domain" in values else ())
    wide = wide.reindex(columns=domains).astype(float)
    avg_domains = tuple(d for d in domains if wide[d].notna().any())
    # skipna=False: a seed missing one averaged domain gets no avg rather than an avg over fewer.
    wide[AVG] = wide[list(avg_domains)].mean(axis=1, skipna=False) if avg_domains else np.nan
    return wide, avg_domains


def _order(exps, study: str = DEFAULT_STUDY) -> list[str]:
    """The study file's row order (yoon2019: A..V), then any experiment it does not name, sorted."""
    try:
        names = load_study(study).experiments.names()
    except ConfigError:  # a study given as a path, not found by its name here: file order is unknown
        names = []
    known = [e for e in names if e in set(exps)]
    return known + sorted(set(exps) - set(known))


def _study(rows: pd.DataFrame) -> str:
    """The one study the rows come from (the default when they mix studies or predate the field)."""
    studies = rows["study"].dropna().unique() if "study" in rows else []
    return str(studies[0]) if len(studies) == 1 else DEFAULT_STUDY


def _arch_name(arch: str) -> str:
    m = re.fullmatch(r"resnet(\d+)", str(arch))
    return f"ResNet-{m[1]}" if m else str(arch)


def _flag(weighted, used: bool = True) -> str:
    """Paper's Cl / Al columns: w = weighted, u = unweighted, - = a loss the run does not use (the
    baselines A-E have no alignment term; their cross-entropy is weighted by default, as in Table 2)."""
    if not used or not isinstance(weighted, (bool, np.bool_)):
        return "-"
    return "w" if weighted else "u"


def _threshold(value) -> str:
    """Table 2's Pr column: the DCP threshold as ``1e-4``, or - for an unpruned run."""
    t = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if not math.isfinite(t) or t <= 0:
        return "-"
    mantissa, exponent = f"{t:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if mantissa != "1" else f"1e{int(exponent)}"


def _describe(rows: pd.DataFrame) -> dict:
    first = rows.iloc[0]
    params = pd.to_numeric(rows["params"], errors="coerce").mean() if "params" in rows else math.nan
    holdout = sorted({d for h in rows["holdout"] if isinstance(h, tuple) for d in h}) if "holdout" in rows else []
    return {
        "nsec": str(first.get("nsec", "")),
        "arch": _arch_name(first.get("arch", "")),
        "Cl": _flag(first.get("weighted_cls")),
        "Al": _flag(first.get("weighted_align")),  # recorded only by methods with an alignment term
        "Pr": _threshold(first.get("prune_threshold")),
        "params": params,
        "holdout": " ".join(holdout),
        "synthetic": bool(rows["synthetic"].fillna(False).astype(bool).any()),
        "data": " ".join(sorted(rows["data"].dropna().astype(str).unique())),
        "preset": " ".join(sorted(rows["preset"].dropna().astype(str).unique())),
    }


def table2_frame(df: pd.DataFrame, metric: str = "macro_recall", include_unfinished: bool = False,
                 selection: str = DEFAULT_SELECTION, exps: Iterable[str] | None = None) -> pd.DataFrame:
    """Numeric Table 2: index exp (registry order); descriptor columns; ``seeds``; and for each column of
    ``attrs["columns"]`` (HAM..UDA, avg on dermoscopy): ``<col>_mean``, ``<col>_std`` (ddof=1; NaN with one
    seed), ``<col>_n``. ``attrs["avg_domains"]`` names the domains each seed's average is over;
    ``selection`` picks the epoch (and trial) each run is read at (:mod:`domgen.results.selection`)."""
    rows = table_rows(df, include_unfinished, selection, exps)
    wide, avg_domains = wide_values(rows, metric, ["exp", "seed"])
    columns = tuple(wide.columns)  # the domains, then avg
    out = []
    for exp in _order(rows["exp"].unique(), _study(rows)):
        rec = {"exp": exp} | _describe(rows[rows["exp"] == exp])
        vals = wide.loc[exp]
        rec["seeds"] = int(len(vals))
        for col in columns:
            v = vals[col].dropna()
            rec[f"{col}_mean"] = float(v.mean()) if len(v) else math.nan
            rec[f"{col}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            rec[f"{col}_n"] = int(len(v))
        out.append(rec)
    frame = pd.DataFrame(out).set_index("exp") if out else pd.DataFrame()
    frame.attrs.update(columns=columns, avg_domains=avg_domains, metric=metric, selection=selection, study=_study(rows),
                       spread=spread_of(rows), pending=rows.attrs["pending"])
    return frame


def _cell(rec: pd.Series, col: str, pm: str) -> str:
    mean, std, n = rec[f"{col}_mean"], rec[f"{col}_std"], rec[f"{col}_n"]
    if n == 0 or not math.isfinite(mean):
        return "-"
    text = f"{mean:.1f}" if n == 1 or not math.isfinite(std) else f"{mean:.1f}{pm}{std:.1f}"
    return text + ("*" if col in rec["holdout"].split() else "")


def _cells(frame: pd.DataFrame, pm: str) -> list[list[str]]:
    return [
        [exp, rec["nsec"], rec["arch"], rec["Cl"], rec["Al"], rec["Pr"]]
        + [_cell(rec, c, pm) for c in frame.attrs["columns"]]
        + [str(rec["seeds"])]
        for exp, rec in frame.iterrows()
    ]


def _data_line(frame: pd.DataFrame) -> str:
    """What data the rows of ``frame`` (columns ``synthetic``, ``data``) come from."""
    synth = frame.index[frame["synthetic"]].tolist()
    if not synth:
        return f"Data: real ({'; '.join(sorted(set(frame['data'])))})."
    if len(synth) == len(frame):
        return "Data: synthetic benchmark (generated images, not the paper's datasets)."
    real = frame.index[~frame["synthetic"]].tolist()
    return f"Data: MIXED - synthetic benchmark for {', '.join(synth)}; real data for {', '.join(real)}."


def caption_lines(df: pd.DataFrame, frame: pd.DataFrame, include_unfinished: bool = False) -> list[str]:
    """What the table shows, on which data, and which runs were left out."""
    metric, avg_domains = frame.attrs["metric"], frame.attrs["avg_domains"]
    spread = frame.attrs.get("spread")
    unit = "seeds" if spread is None or spread.over_seeds_only else "replicates"  # seeds only: the caption as it was
    one = "seed" if unit == "seeds" else "replicate"
    lines = [
        f"Table 2: test {metric} (x100) per domain; mean and sample std (ddof=1) over {unit} where a row has "
        f"several, the plain value with one; * = held-out domain; avg = per-{one} mean over "
        f"{len(avg_domains)} domains ({' '.join(avg_domains)}; held-out included, as in the paper), "
        f"then mean and std across {unit}.",
        _data_line(frame),
        f"Preset: {', '.join(sorted(set(' '.join(frame['preset']).split())))}.",
    ]
    if frame.attrs.get("selection", DEFAULT_SELECTION) != DEFAULT_SELECTION:
        # train is what Table 2 always meant (the trainer's own choice), so its quoted captions stay as they are
        lines.insert(1, selection_line(frame.attrs["selection"]))
    study = frame.attrs["study"]
    if study != DEFAULT_STUDY:  # Table 2 itself says nothing more, so its quoted captions stay as they are
        lines.insert(2, f"Study: {study}.")
    if unit == "replicates":
        lines.insert(1, spread.line())
    return lines + left_out_lines(df, include_unfinished) + pending_line(frame.attrs.get("pending", ()))


def left_out_lines(df: pd.DataFrame, include_unfinished: bool) -> list[str]:
    left_out = sorted(set(unfinished_runs(df)) | set(df.attrs.get("unfinished", ())))
    if left_out and not include_unfinished:
        return [f"Left out: {len(left_out)} unfinished run(s): {', '.join(left_out)}."]
    return []


def _markdown(caption: list[str], cells: list[list[str]], left: tuple[str, ...], right: tuple[str, ...]) -> str:
    """Caption lines, then a table whose ``left`` columns are text and ``right`` columns numbers."""
    header = [*left, *right]
    lines = ["  \n".join(caption), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":--"] * len(left) + ["--:"] * len(right)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


_TEX = {c: "\\" + c for c in "&%$#_{}"} | {"\\": r"\textbackslash{}", "~": r"\~{}", "^": r"\^{}"}


def _tex(s: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX[m[0]], s)


def _latex(caption: list[str], cells: list[list[str]], left: tuple[str, ...], right: tuple[str, ...]) -> str:
    header = [*left, *right]
    spec = "l" * len(left) + "r" * len(right)
    # "\x01" stands for the plus-minus sign so that escaping leaves it alone.
    body = [" & ".join(_tex(c).replace("\x01", r" $\pm$ ") for c in row) + r" \\" for row in cells]
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\caption{" + _tex(" ".join(caption)) + "}",
        r"\begin{tabular}{" + spec + "}", r"\toprule", " & ".join(map(_tex, header)) + r" \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ]) + "\n"


def table2(df: pd.DataFrame, fmt: str = "md", metric: str = "macro_recall", include_unfinished: bool = False,
           selection: str = DEFAULT_SELECTION, exps: Iterable[str] | None = None, exploratory: str | None = None) -> str:
    """Table 2 as Markdown (``md``), LaTeX (``latex``, booktabs) or CSV (``csv``: the numeric
    :func:`table2_frame`, one column per mean / std / n, round-trips to numbers). ``exploratory``: the
    caption's first line, for a metric that is not the study's pre-registered one (``domgen.protocol``)."""
    frame = table2_frame(df, metric, include_unfinished, selection, exps)
    if frame.empty:
        left_out = sorted(set(unfinished_runs(df)) | set(df.attrs.get("unfinished", ())))
        return f"No finished runs with final test results ({len(left_out)} unfinished run(s) left out).\n"
    if fmt == "csv":
        return frame.to_csv()
    caption = [exploratory] * bool(exploratory) + caption_lines(df, frame, include_unfinished)
    right = (*frame.attrs["columns"], "seeds")
    if fmt == "md":
        return _markdown(caption, _cells(frame, " ± "), META, right)
    if fmt == "latex":
        return _latex(caption, _cells(frame, "\x01"), META, right)
    raise ValueError(f"fmt must be 'md', 'latex' or 'csv', got {fmt!r}")


def plot_table(df: pd.DataFrame, path: Path, metric: str = "macro_recall", include_unfinished: bool = False,
               selection: str = DEFAULT_SELECTION, exps: Iterable[str] | None = None) -> Path:
    """Grouped bars: per domain (and avg), one bar per experiment, error bars = std over seeds;
    held-out cells hatched and starred. Saved as PNG without touching pyplot's global state."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # lazy: matplotlib only when plotting

    frame = table2_frame(df, metric, include_unfinished, selection, exps)
    columns = frame.attrs.get("columns", ())
    x, width = np.arange(len(columns)), 0.8 / max(len(frame), 1)
    fig = Figure(figsize=(max(8.0, 0.12 * len(frame) * len(columns)), 4.5))
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if len(frame) <= 10 else "tab20"]
    for i, (exp, rec) in enumerate(frame.iterrows()):
        # Missing cells are NaN: no bar. Error bars only where there is a spread (two seeds or more).
        means = np.array([rec[f"{c}_mean"] for c in columns], dtype=float)
        stds = np.array([rec[f"{c}_std"] for c in columns], dtype=float)
        pos = x - 0.4 + (i + 0.5) * width
        bars = ax.bar(pos, means, width, color=cmap(i % cmap.N), label=exp)
        ax.errorbar(pos, means, yerr=stds, fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        for bar, col, p, m, s in zip(bars, columns, pos, means, np.nan_to_num(stds)):
            if col in rec["holdout"].split() and math.isfinite(m):
                bar.set_hatch("//")
                ax.annotate("*", (p, m + s), ha="center", va="bottom")
    ax.set_xticks(x, list(columns))
    ax.set_ylabel(f"test {metric} (x100)")
    data = " (synthetic data)" if len(frame) and frame["synthetic"].any() else ""
    bound = ", an upper bound" if get_selection(selection).upper_bound else ""
    over = frame.attrs["spread"].words() if len(frame) else "seeds"
    ax.set_title(f"Per-domain test {metric} by experiment{data}, {selection} selection{bound}\n"
                 f"error bars: std over {over}; hatched, * = held out")
    ax.legend(ncols=min(len(frame), 11) or 1, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def _human(x: float) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "?"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _ratio(after, before) -> str:
    try:
        return f" ({100.0 * float(after) / float(before):.1f}% kept)"
    except (TypeError, ValueError, ZeroDivisionError):
        return ""


def pruning_report(df_or_runs: pd.DataFrame | Path | str, include_unfinished: bool = False) -> str:
    """Pruned runs (U, V: DCP at two thresholds, Table 2's pruning column): parameters and MACs
    before -> after, and the channels each block keeps, from the rows' pruning keys."""
    df = collect(Path(df_or_runs)) if isinstance(df_or_runs, (str, Path)) else df_or_runs
    rows = select(df, include_unfinished=include_unfinished)
    if "params" not in rows or rows["params"].isna().all():
        return "No pruned runs found.\n"
    rows = rows[rows["params"].notna()]
    lines = ["Pruning (DCP; Table 2 rows U, V): params and MACs before -> after, channels kept per block"]
    order = {e: i for i, e in enumerate(_order(rows["exp"].unique(), _study(rows)))}
    firsts = rows.drop_duplicates("run")
    firsts = firsts.assign(_o=firsts["exp"].map(order)).sort_values(["_o", "seed", "run"])
    for _, r in firsts.iterrows():
        run = r["run"]
        lines.append(
            f"{r['exp']} seed {r['seed']} ({run}): params {_human(r.get('params_before'))} -> {_human(r['params'])}"
            f"{_ratio(r['params'], r.get('params_before'))}; MACs {_human(r.get('macs_before'))} -> "
            f"{_human(r.get('macs'))}{_ratio(r.get('macs'), r.get('macs_before'))}"
        )
        kept = r.get("channels_kept")
        if isinstance(kept, dict) and kept:
            items = [f"{k}: {v}" for k, v in kept.items()]
            lines += ["  channels kept: " + ", ".join(items[i : i + 8]) for i in range(0, len(items), 8)]
    return "\n".join(lines) + "\n"
