"""An ablation's results written out: CSV tables, heatmaps of two axes at a time, learning curves, and a
Markdown summary that says what the numbers are (metric, split, selection, seeds, synthetic data).

Plots use matplotlib's object API (``Figure``), never pyplot's global state, as ``tables.plot_table``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from domgen.results.ablation import AblationResult, two_way
from domgen.results.compare import _p


def write_report(res: AblationResult, doc: dict, folder: Path, synthetic: bool = False) -> list[Path]:
    """Every table and figure of ``res`` into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, frame in (("long", res.long), ("scores", res.scores), ("effects", res.effects),
                        ("interactions", res.interactions), ("curves", res.curves), ("gaps", res.gaps)):
        frame.to_csv(folder / f"{name}.csv", index=False)
        out.append(folder / f"{name}.csv")
    (folder / "best.json").write_text(json.dumps(res.best, indent=2) + "\n")
    out.append(folder / "best.json")
    (folder / "summary.md").write_text(format_summary(res, doc, synthetic))
    out.append(folder / "summary.md")
    if not res.scores.empty and res.kind == "grid":
        for x, y in itertools.combinations(res.axes, 2):
            out.append(plot_heatmap(res, doc, x, y, folder / f"heatmap-{_slug(x)}-{_slug(y)}.png", synthetic))
    if not res.curves.empty:
        out.append(plot_curves(res, folder / "curves.png", synthetic))
    return out


def _num_format(values) -> str:
    """Three decimals for metrics on a 0..1 scale (AUC), one for percentages (macro recall)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return "{:.3f}" if len(finite) and np.abs(finite).max() <= 1.5 else "{:.1f}"


def _slug(key: str) -> str:
    return key.replace(".", "_")


def plot_heatmap(res: AblationResult, doc: dict, x: str, y: str, path: Path, synthetic: bool = False) -> Path:
    """Mean test score for each (x level, y level), averaged over seeds and the other axes, annotated."""
    from matplotlib.figure import Figure  # lazy: matplotlib only when plotting

    t = two_way(doc, res.scores, x, y)
    fig = Figure(figsize=(1.6 + 1.3 * len(t.columns), 1.2 + 0.7 * len(t.index)))
    ax = fig.add_subplot()
    im = ax.imshow(t.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(t.columns)), [str(c) for c in t.columns], rotation=30, ha="right")
    ax.set_yticks(range(len(t.index)), [str(i) for i in t.index])
    ax.set_xlabel(y)
    ax.set_ylabel(x)
    for (i, j), v in np.ndenumerate(t.to_numpy(dtype=float)):
        ax.text(j, i, "-" if not math.isfinite(v) else _num_format(t.to_numpy(dtype=float)).format(v), ha="center",
                va="center", color="white", fontsize="small")
    fig.colorbar(im, ax=ax, label=f"test {res.metric}")
    ax.set_title(f"test {res.metric}, mean over seeds and other axes" + (" (synthetic data)" if synthetic else ""),
                 fontsize="small")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def plot_curves(res: AblationResult, path: Path, synthetic: bool = False) -> Path:
    """Training loss and validation metric per epoch, one line per cell (means over seeds)."""
    from matplotlib.figure import Figure

    cols = [c for c in ("train_loss", f"val_{res.metric}") if c in res.curves.columns]
    fig = Figure(figsize=(6 * len(cols), 4))
    for k, col in enumerate(cols):
        ax = fig.add_subplot(1, len(cols), k + 1)
        for cell, c in res.curves.groupby("cell", sort=False):
            ax.plot(c["epoch"], c[col], marker="o", markersize=3, label=cell)  # epochs as the results record them
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel(col)
    fig.axes[0].legend(fontsize="x-small")
    fig.suptitle("learning curves, mean over seeds" + (" (synthetic data)" if synthetic else ""), fontsize="small")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def _f(x, fmt: str = "{:.3g}") -> str:
    return "-" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else fmt.format(x)


def _ci(r) -> str:
    return "-" if not math.isfinite(r["ci_low"]) else f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"


def format_summary(res: AblationResult, doc: dict, synthetic: bool = False) -> str:
    """Main effects, interactions, gaps and the best cell as Markdown, with what the numbers mean."""
    seeds = sorted(res.scores["seed"].unique().tolist()) if len(res.scores) else []
    lines = [
        f"{'Search' if res.kind == 'search' else 'Ablation'} of {doc.get('study')} row {doc.get('exp')} ({doc.get('preset')}): "
        f"{len(doc['cells'])} cells x {len(seeds)} seeds{' on synthetic data' if synthetic else ''}.",
        f"Score: test {res.metric}, mean over domains, at the epoch the trainer selected on training-domain "
        "validation (selection: train).",
    ]
    if res.missing:
        lines.append(f"Not finished, left out: {len(res.missing)} runs ({', '.join(res.missing[:4])}{' ...' if len(res.missing) > 4 else ''}).")
    if res.kind == "search":
        lines += ["", *_ranked(res)]
    else:
        lines += _effects(res)
    lines += _gaps_and_best(res)
    return "\n".join(lines) + "\n"


def _ranked(res: AblationResult, top: int = 10) -> list[str]:
    """A search's trials, best mean validation score first (test beside it, not used to rank)."""
    means = res.scores.groupby("cell", sort=False).agg(val=("val", "mean"), test=("test", "mean"), seeds=("seed", "nunique"))
    means = means.sort_values("val", ascending=False, kind="mergesort")
    lines = [f"Trials by mean validation {res.metric} (top {min(top, len(means))} of {len(means)}):", "",
             "| trial | val | test | seeds |", "|:--|--:|--:|--:|"]
    return lines + [f"| {cell} | {_f(r['val'])} | {_f(r['test'])} | {r['seeds']} |" for cell, r in means.head(top).iterrows()]


def _effects(res: AblationResult) -> list[str]:
    lines = []
    lines += ["", "Main effects (mean over the other axes and seeds; diff = paired by other axes and seed, vs the first level):",
              "", "| axis | level | mean | n | diff | 95% CI | t-test p |", "|:--|:--|--:|--:|--:|:-:|--:|"]
    for _, r in res.effects.iterrows():
        lines.append(f"| {r['axis']} | {r['level']} | {_f(r['mean'])} | {r['n_runs']} | "
                     f"{'(reference)' if r['level'] == r['vs'] else _f(r['diff'], '{:+.3g}')} | "
                     f"{'' if r['level'] == r['vs'] else _ci(r)} | {_p(r['t_p'])} |")
    if len(res.interactions):
        lines += ["", "Interactions (difference of differences against both first levels, paired):", "",
                  "| axes | levels | vs | contrast | 95% CI | t-test p | n |", "|:--|:--|:--|--:|:-:|--:|--:|"]
        for _, r in res.interactions.iterrows():
            lines.append(f"| {r['axis_a']} x {r['axis_b']} | {r['level_a']}, {r['level_b']} | {r['vs_a']}, {r['vs_b']} | "
                         f"{_f(r['diff'], '{:+.3g}')} | {_ci(r)} | {_p(r['t_p'])} | {r['n']} |")
    return lines


def _gaps_and_best(res: AblationResult) -> list[str]:
    lines = ["", "Overfitting gap (train - validation):"]
    if len(res.gaps) and res.gaps["gap"].isna().all():
        lines.append(f"not available: {res.gaps['gap_note'].iloc[0]}.")
    else:
        lines += [f"- {r['cell']}: {_f(r['gap'], '{:+.3g}')} ({_f(r['train'])} - {_f(r['val'])})" for _, r in res.gaps.iterrows()]
    b = res.best
    lines += ["", "Best cell by mean validation " + res.metric + " (test not used to choose):"]
    lines.append(f"{b['cell']}: validation {_f(b['val'])}, test {_f(b['test'])} over {b['seeds']} seeds; "
                 f"checkpoint (its best seed by validation): {b['checkpoint']}" if b else "none: no finished run")
    lines.append("A difference whose 95% CI contains 0 is not distinguishable from seed noise.")
    return lines
