"""Paired comparison of two experiments across seeds, so that a one-point gap is shown for what it is.

For each Table 2 column (HAM..UDA and avg, see :mod:`domgen.results.tables`) the runs of experiments
``a`` and ``b`` are matched by seed (the same seed fixes the same data split and initial draw, so the
difference a - b removes that shared noise); only seeds present in both count. Reported: the mean
difference, its 95% confidence interval from the t distribution (mean +/- t_{0.975, n-1} sd / sqrt(n)),
the paired t-test p-value and, from ``wilcoxon_min`` matched seeds on, the Wilcoxon signed-rank
p-value. With one matched seed there is a difference and nothing else.

Several domains are compared at once, so each test's p-value is also given Holm-adjusted (Holm, Scand. J.
Statist. 1979) across the domain columns that have one (``t_p_holm``, ``wilcoxon_p_holm``); ``avg`` is a
function of those columns, not another comparison, and keeps only its raw p. The output says how many
comparisons were corrected for.

``a`` and ``b`` are experiments (Table 2's letters) or, when both name algorithms of the runs (``coral``,
``erm``, ``erm+swad``), algorithms: then the columns follow :mod:`domgen.results.by_algorithm` (the
held-out domains of leave-one-out sweeps, or every domain). Either way the runs are read under a named
model selection (:mod:`domgen.results.selection`, default ``train``), which the output states.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from domgen.results.selection import DEFAULT, get_selection, pending_line, selection_line
from domgen.results.tables import AVG, per_seed

STAT_COLUMNS = ("n", "mean_a", "mean_b", "diff", "sd", "ci_low", "ci_high", "t_p", "wilcoxon_p", "t_p_holm",
                "wilcoxon_p_holm", "seeds")


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values: with the m finite p sorted ascending, p_(i) becomes
    max_{j <= i} min(1, (m - j + 1) p_(j)) (1-based j). NaN stays NaN and does not count in m. Rejecting
    where the adjusted p <= alpha controls the family-wise error rate at alpha."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - j + 1) p_(j), j = 1..m
    out[order] = np.maximum.accumulate(scaled)
    return out


def _holm_columns(out: pd.DataFrame, domains: list[str]) -> dict[str, int]:
    """Add the Holm-adjusted t and Wilcoxon p over the ``domains`` rows; return how many each corrected for."""
    counts = {}
    for raw in ("t_p", "wilcoxon_p"):
        out[f"{raw}_holm"] = np.nan
        vals = out.loc[domains, raw].to_numpy(dtype=float)
        out.loc[domains, f"{raw}_holm"] = holm(vals)
        counts[raw] = int(np.isfinite(vals).sum())
    return counts


def paired_stats(x: np.ndarray, y: np.ndarray, wilcoxon_min: int = 5) -> dict:
    """Statistics of the paired differences ``x - y`` (same length, matched by position)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    d, n = x - y, len(x)
    out = dict(n=n, mean_a=math.nan, mean_b=math.nan, diff=math.nan, sd=math.nan,
               ci_low=math.nan, ci_high=math.nan, t_p=math.nan, wilcoxon_p=math.nan)
    if n == 0:
        return out
    out.update(mean_a=float(x.mean()), mean_b=float(y.mean()), diff=float(d.mean()))
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    with warnings.catch_warnings():
        # Identical differences (sd = 0) make t undefined (0/0, or a non-zero mean over no spread, where
        # scipy returns p = 0, a certainty no finite sample gives): NaN, shown as "-".
        warnings.simplefilter("ignore", RuntimeWarning)
        out["t_p"] = float(stats.ttest_rel(x, y).pvalue) if sd > 0 else math.nan
        if n >= wilcoxon_min:
            try:
                out["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
            except ValueError:  # all differences zero: no ranks to test
                pass
    return out


def by_algorithms(df: pd.DataFrame, a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name algorithms of the runs in ``df`` rather than experiments (letters keep
    meaning experiments, exactly as before algorithms could be named)."""
    from domgen.results.by_algorithm import algorithm_label

    if df.empty or "algorithm" not in df.columns:
        return False
    exps = set(df["exp"].astype(str))
    labels = {algorithm_label(r) for r in df.drop_duplicates("run").to_dict("records")}
    # an algorithm's name on either side (and no experiment's): the other is then a missing algorithm
    return bool({a, b} & labels) and not {a, b} & exps


def compare(
    df: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "macro_recall",
    include_unfinished: bool = False,
    wilcoxon_min: int = 5,
    selection: str = DEFAULT,
    exps: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Per column (HAM..UDA, avg on dermoscopy; the data's own domains elsewhere; or the algorithms' columns): matched-seed statistics of a - b
    (:data:`STAT_COLUMNS`).

    ``attrs`` holds a, b, metric, the seeds of each side, the domains ``avg`` is over, ``by`` (``exp`` or
    ``algorithm``), ``layout`` (by algorithm: ``loo`` or ``same``) and ``selection``. Only the runs of
    experiments ``a`` and ``b`` (by algorithm: of ``exps``, when given) are selected; every run still counts
    as a lodo sibling.
    """
    by, layout = "exp", None
    if by_algorithms(df, a, b):
        from domgen.results.by_algorithm import by_algorithm

        res = by_algorithm(df, metric, include_unfinished, selection, exps)
        wide, avg_domains, columns, by, layout = res.wide, tuple(res.columns), (*res.columns, AVG), "algorithm", res.layout
        pending = res.pending
    else:
        wide, avg_domains = per_seed(df, metric, include_unfinished, selection, exps=(a, b))
        columns, pending = tuple(wide.columns), wide.attrs["pending"]  # the domains, then avg
    present = set(wide.index.get_level_values("exp" if by == "exp" else "algorithm"))
    for name in (a, b):
        if name not in present:
            # only a and b were selected: name every experiment with finished runs
            have = present if by != "exp" else set(df.loc[df["finished"].astype(bool) | include_unfinished, "exp"])
            raise KeyError(f"no finished runs of {'experiment' if by == 'exp' else 'algorithm'} {name!r} "
                           f"(have: {', '.join(sorted(map(str, have))) or 'none'})")
    wa, wb = wide.loc[a], wide.loc[b]  # index: seed
    rows = []
    for col in columns:
        # Outer join on seed, then drop seeds missing on either side: only matched pairs remain.
        pair = pd.concat({"a": wa[col], "b": wb[col]}, axis=1).dropna()
        rec = paired_stats(pair["a"].to_numpy(), pair["b"].to_numpy(), wilcoxon_min)
        rows.append({"column": col, **rec, "seeds": " ".join(str(s) for s in pair.index)})
    out = pd.DataFrame(rows, columns=["column", *STAT_COLUMNS]).set_index("column")
    holm_m = _holm_columns(out, [c for c in columns if c != AVG])
    out.attrs.update(holm_m=holm_m["t_p"], holm_m_wilcoxon=holm_m["wilcoxon_p"], a=a, b=b, metric=metric, seeds_a=sorted(wa.index.tolist()), seeds_b=sorted(wb.index.tolist()),
                     avg_domains=avg_domains, wilcoxon_min=wilcoxon_min, by=by, layout=layout, selection=selection,
                     pending=pending)
    return out


def holm_line(at: dict) -> str:
    m, mw = at["holm_m"], at["holm_m_wilcoxon"]
    wil = f"; Wilcoxon p across {mw}" if mw else ""
    return (f"Holm: t-test p adjusted across {m} comparison{'s' if m != 1 else ''} (the domain columns with a "
            f"p-value){wil}; avg is their mean, not another comparison, and is not corrected.")


def _num(x: float, fmt: str = "{:+.2f}") -> str:
    return "-" if not math.isfinite(x) else fmt.format(x)


def _p(x: float) -> str:
    return "-" if not math.isfinite(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def format_compare(
    df: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "macro_recall",
    include_unfinished: bool = False,
    wilcoxon_min: int = 5,
    selection: str = DEFAULT,
    exps: Iterable[str] | None = None,
    exploratory: str | None = None,
) -> str:
    """:func:`compare` as a Markdown table with the matched seeds and what the numbers can support;
    ``exploratory``: the first line, for a metric that is not the study's pre-registered one."""
    res = compare(df, a, b, metric, include_unfinished, wilcoxon_min, selection, exps)
    at = res.attrs
    matched = sorted(set(at["seeds_a"]) & set(at["seeds_b"]))
    only_a = sorted(set(at["seeds_a"]) - set(matched))
    only_b = sorted(set(at["seeds_b"]) - set(matched))
    lines = [exploratory] * bool(exploratory) + [
        f"{a} - {b}: test {metric} (x100), paired by seed"
        + (" (an upper bound, not a result)." if get_selection(selection).upper_bound else "."),
        selection_line(selection),
        f"Seeds matched: {len(matched)} ({' '.join(map(str, matched)) or 'none'}); dropped, only in {a}: "
        f"{' '.join(map(str, only_a)) or 'none'}; only in {b}: {' '.join(map(str, only_b)) or 'none'}.",
        *pending_line(at["pending"]),
        "",
        f"| column | n | mean {a} | mean {b} | diff | 95% CI | t-test p | Holm t p | Wilcoxon p | Holm Wilcoxon p |",
        "|:--|--:|--:|--:|--:|:-:|--:|--:|--:|--:|",
    ]
    for col, r in res.iterrows():
        ci = "-" if not math.isfinite(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        lines.append(
            f"| {col} | {r['n']} | {_num(r['mean_a'], '{:.2f}')} | {_num(r['mean_b'], '{:.2f}')} | "
            f"{_num(r['diff'])} | {ci} | {_p(r['t_p'])} | {_p(r['t_p_holm'])} | {_p(r['wilcoxon_p'])} | "
            f"{_p(r['wilcoxon_p_holm'])} |"
        )
    if at["layout"] == "loo":
        avg = (f"columns = held-out domains, each from the runs holding it out; avg = each seed's mean over "
               f"{' '.join(at['avg_domains'])}, then paired.")
    else:
        avg = f"avg = each seed's mean over {' '.join(at['avg_domains'])} (held-out included), then paired."
    lines += ["", avg, holm_line(at)]
    n = int(res["n"].max()) if len(res) else 0
    if n <= 1:
        lines.append("Only one matched seed: a single difference with no spread, no interval and no test; "
                     "a claim cannot rest on one seed. Run more seeds.")
    else:
        lines.append("A difference whose 95% CI contains 0 is not distinguishable from seed noise.")
        if n < wilcoxon_min:
            lines.append(f"Wilcoxon signed-rank not computed: it needs at least {wilcoxon_min} matched seeds.")
    return "\n".join(lines) + "\n"
