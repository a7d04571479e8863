"""Bootstrap confidence intervals over test cases, resampling patients: how far one run's per-domain
number could move with another draw of patients from the same population.

Cases of one patient (or lesion: the manifest's ``group``, the unit the splits keep together) are not
independent, so the bootstrap resamples whole groups with replacement, within each domain (a cluster
bootstrap; Davison & Hinkley, Bootstrap Methods and their Application, 1997, Sec. 3.8), recomputes the
metric on the drawn cases and reports the percentile interval. The inputs are the per-case predictions a
run writes at final evaluation (``test_predictions.npz``, :mod:`domgen.engine.predictions`), i.e. the
weights the training-domain selection chose; nothing is retrained.

The interval is about the test patients of one trained model (one seed); the spread over seeds in the
tables is about training. The two answer different questions and are reported apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from domgen.data.labels import domain_order
from domgen.engine.metrics import brier_score, expected_calibration_error, macro_f1, ovr_auc
from domgen.engine.predictions import TEST_PREDICTIONS, load_predictions
from domgen.seeds import derive_seed

N_BOOT = 2000
LEVEL = 0.95
# Metrics recomputed from (labels, probabilities) on each resample. macro_recall, balanced_acc (the same
# number) and accuracy take the fast path of per-group counts; the rest are recomputed case by case.
SLOW: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "macro_f1": lambda y, p: macro_f1(y, p.argmax(axis=1)),
    "ovr_auc": ovr_auc,
    "brier": brier_score,
    "ece": expected_calibration_error,
}
FAST = ("macro_recall", "balanced_acc", "accuracy")
METRICS = (*FAST, *SLOW)


@dataclass(frozen=True)
class Interval:
    value: float  # the metric on all cases
    low: float
    high: float
    n: int  # cases
    groups: int  # distinct groups (the resampled units)
    n_boot: int
    level: float


def _group_index(groups: np.ndarray) -> tuple[np.ndarray, int]:
    _, idx = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return idx.reshape(-1), int(idx.max()) + 1 if idx.size else 0


def _counts_metric(correct: np.ndarray, support: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` x100 from per-class totals: correct, support (..., K)."""
    if metric == "accuracy":
        return 100.0 * correct.sum(axis=-1) / support.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, correct / np.maximum(support, 1), np.nan)  # absent classes: NaN
        return 100.0 * np.nanmean(recall, axis=-1)  # mean over the classes present in that draw


def _draws(rng: np.random.Generator, g: int, n_boot: int) -> np.ndarray:
    """(n_boot, g) how often each group is drawn: g draws with replacement per resample."""
    return rng.multinomial(g, np.full(g, 1.0 / g), size=n_boot)


def grouped_bootstrap(y: np.ndarray, probs: np.ndarray, groups: np.ndarray, metric: str = "macro_recall",
                      n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile interval of ``metric`` over ``n_boot`` resamples of whole groups (module docstring)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: bootstrap intervals cover {', '.join(METRICS)}")
    y = np.asarray(y).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    gi, g = _group_index(groups)
    if g == 0:
        return Interval(math.nan, math.nan, math.nan, 0, 0, n_boot, level)
    rng = np.random.default_rng(seed)
    w = _draws(rng, g, n_boot)
    if metric in FAST:
        k = p.shape[1]
        correct = np.zeros((g, k))
        support = np.zeros((g, k))
        np.add.at(support, (gi, y), 1.0)  # (G, K) cases of each class per group
        np.add.at(correct, (gi, y), (p.argmax(axis=1) == y).astype(float))
        value = float(_counts_metric(correct.sum(0), support.sum(0), metric))
        stats = _counts_metric(w @ correct, w @ support, metric)  # (n_boot,)
    else:
        fn = SLOW[metric]
        members = [np.flatnonzero(gi == j) for j in range(g)]
        value = float(fn(y, p))
        stats = np.empty(n_boot)
        for b in range(n_boot):
            cases = np.concatenate([np.repeat(members[j], c) for j, c in enumerate(w[b]) if c])
            stats[b] = fn(y[cases], p[cases])
    alpha = (1.0 - level) / 2
    low, high = np.nanquantile(stats, [alpha, 1.0 - alpha]) if np.isfinite(stats).any() else (math.nan, math.nan)
    return Interval(value, float(low), float(high), int(y.size), g, n_boot, level)


def domain_intervals(pred: dict[str, np.ndarray], metric: str = "macro_recall", n_boot: int = N_BOOT,
                     level: float = LEVEL, seed: int = 0) -> list[dict]:
    """One interval per domain of a predictions file's contents; each domain's resamples from its own seed
    (``derive_seed(seed, domain)``), so an interval does not depend on which other domains are present."""
    out = []
    for d in domain_order(np.asarray(pred["domain"]).astype(str).tolist()):
        m = pred["domain"] == d
        ci = grouped_bootstrap(pred["label"][m], pred["probs"][m], pred["group"][m], metric, n_boot, level,
                               derive_seed(seed, "bootstrap", d))
        out.append({"domain": d, **asdict(ci)})
    return out


def run_intervals(run_dir: Path, metric: str = "macro_recall", n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0) -> list[dict]:
    """:func:`domain_intervals` of ``run_dir/test_predictions.npz``."""
    return domain_intervals(load_predictions(Path(run_dir) / TEST_PREDICTIONS), metric, n_boot, level, seed)


def ci_frame(df: pd.DataFrame, metric: str = "macro_recall", n_boot: int = N_BOOT, level: float = LEVEL,
             seed: int = 0, exps: Iterable[str] | None = None) -> pd.DataFrame:
    """Per finished run (of ``exps``, when given) and domain: the interval; runs without a predictions file
    (recorded before it existed) are named in ``attrs["missing"]``."""
    runs = df[df["finished"].astype(bool)].drop_duplicates("run")
    if exps is not None:
        runs = runs[runs["exp"].isin(list(exps))]
    rows, missing = [], []
    for rec in runs.sort_values(["exp", "seed", "run"]).to_dict("records"):
        path = Path(rec["run_dir"]) / TEST_PREDICTIONS
        if not path.exists():
            missing.append(rec["run"])
            continue
        for r in run_intervals(path.parent, metric, n_boot, level, seed):
            rows.append({"run": rec["run"], "exp": rec["exp"], "seed": rec["seed"], **r})
    out = pd.DataFrame(rows, columns=["run", "exp", "seed", "domain", "value", "low", "high", "n", "groups", "n_boot", "level"])
    out.attrs.update(missing=missing, metric=metric, n_boot=n_boot, level=level, seed=seed)
    return out


def format_ci(frame: pd.DataFrame, fmt: str = "md") -> str:
    """:func:`ci_frame` as Markdown (one row per run, one column per domain: value [low, high]) or CSV."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    at = frame.attrs
    lines = [f"Test {at['metric']} per run with {100 * at['level']:.0f}% percentile bootstrap intervals over patients: "
             f"the manifest's groups resampled with replacement within each domain, {at['n_boot']} resamples, seed "
             f"{at['seed']}.",
             "Weights: those final evaluation used (training-domain validation selection); the interval is over "
             "test patients for one trained model, not over training seeds."]
    if at["missing"]:
        lines.append(f"Left out: {len(at['missing'])} run(s) without {TEST_PREDICTIONS}: {', '.join(at['missing'])}.")
    if frame.empty:
        return "\n".join(lines + ["", "No finished runs with per-case test predictions."]) + "\n"
    domains = domain_order(frame["domain"])
    lines += ["", "| run | " + " | ".join(domains) + " |", "|:--|" + "--:|" * len(domains)]
    for (exp, seed, run), g in frame.groupby(["exp", "seed", "run"], sort=True):
        cells = g.set_index("domain")
        row = [f"{exp} s{seed}"]
        for d in domains:
            if d not in cells.index or not math.isfinite(cells.loc[d, "value"]):
                row.append("-")
                continue
            c = cells.loc[d]
            f = "{:.1f}" if at["metric"] in (*FAST, "macro_f1") else "{:.3f}"  # x100 metrics vs fractions
            ci = f" [{f.format(c['low'])}, {f.format(c['high'])}]" if math.isfinite(c["low"]) else ""
            row.append(f.format(c["value"]) + ci)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
