"""The transfusion study's summary (``table --study transfusion --by transfusion``), from run folders alone:
``results.jsonl`` (final and per-epoch rows), ``config.yaml`` (the initialisation, ``model.weights``, and
``data.train_fraction``, which the result lines do not carry) and ``similarity.json`` (written by the
``similarity`` command). Nothing is recomputed.

One line per study row, over its finished seeds (mean; +/- the standard deviation over seeds for recall):
- in-domain / out-of-domain: test macro recall averaged over the run's training domains (``train_domains``:
  HAM alone for the ERM rows; HAM and five others for a leave-one-out CCSA row), and over the domains it
  never trained on (the six others; the held-out one), each with the weights its model selection chose;
- ep90 / ep95: convergence epochs (:mod:`domgen.results.convergence`), mean over seeds;
- <layer>: similarity of the trained model to its own initialisation per layer (``similarity --vs-init``;
  the metric asked for, the probe with the most images when several were recorded), mean over the seeds
  that have it; "-" where no seed has one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from domgen.results.convergence import FRACTIONS, convergence

LAYER_ORDER = ("conv1",) + tuple(f"layer{i}" for i in range(1, 10)) + ("features",)


def run_facts(run_dir: Path) -> dict:
    """What config.yaml says that the result lines do not: initialisation and HAM's training fraction."""
    path = Path(run_dir) / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {"init": (cfg.get("model") or {}).get("weights", "?"),
            "fraction": float((cfg.get("data") or {}).get("train_fraction", 1.0))}


def similarity_to_init(run_dir: Path, metric: str = "cka") -> dict[str, float]:
    """Per-layer similarity to the initialisation from ``similarity.json`` ({} when not computed)."""
    path = Path(run_dir) / "similarity.json"
    if not path.is_file():
        return {}
    entries = [e for e in json.loads(path.read_text())["comparisons"].values()
               if e["against"] == "init" and e["metric"] == metric]
    if not entries:
        return {}
    return dict(max(entries, key=lambda e: e["probe"]["images"])["layers"])


def _recall(final: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run: in-domain and out-of-domain mean test ``metric``."""
    test = final[(final["stage"] == "final") & (final["split"] == "test")]
    rows = []
    for run, g in test.groupby("run", sort=True):
        own = np.array([d in tuple(t) for d, t in zip(g["domain"], g["train_domains"])])
        rows.append({"run": run, "run_dir": g["run_dir"].iloc[0], "exp": g["exp"].iloc[0], "seed": int(g["seed"].iloc[0]),
                     "arch": g["arch"].iloc[0], "algorithm": g["algorithm"].iloc[0],
                     "holdout": ",".join(g["holdout"].iloc[0]) or "-",
                     "in_domain": float(g.loc[own, metric].mean()) if own.any() else np.nan,
                     "out_of_domain": float(g.loc[~own, metric].mean()) if (~own).any() else np.nan})
    return pd.DataFrame(rows)


def per_run(df: pd.DataFrame, metric: str = "macro_recall", similarity_metric: str = "cka") -> pd.DataFrame:
    """One row per finished run: recall in and out of domain, convergence epochs, similarity to init."""
    runs = _recall(df, metric)
    if runs.empty:
        return runs
    conv = convergence(df).drop(columns=["exp", "seed"])
    runs = runs.merge(conv, on="run", how="left")
    facts = pd.DataFrame([run_facts(Path(d)) | {f"sim_{k}": v for k, v in similarity_to_init(Path(d), similarity_metric).items()}
                          for d in runs["run_dir"]])
    return pd.concat([runs.reset_index(drop=True), facts], axis=1)


def summarise(df: pd.DataFrame, metric: str = "macro_recall", similarity_metric: str = "cka") -> pd.DataFrame:
    """One row per study row (experiment), in order of first appearance: means (and recall stds) over seeds."""
    runs = per_run(df, metric, similarity_metric)
    if runs.empty:
        return runs
    sims = sorted((c for c in runs.columns if c.startswith("sim_")),
                  key=lambda c: LAYER_ORDER.index(c[4:]) if c[4:] in LAYER_ORDER else len(LAYER_ORDER))
    eps = [f"epochs_to_{round(100 * f):d}" for f in FRACTIONS]
    keys = ["exp", "arch", "init", "algorithm", "holdout", "fraction"]
    agg = runs.groupby(keys, sort=False, dropna=False).agg(
        seeds=("seed", "nunique"), in_domain=("in_domain", "mean"), in_domain_std=("in_domain", "std"),
        out_of_domain=("out_of_domain", "mean"), out_of_domain_std=("out_of_domain", "std"),
        **{e: (e, "mean") for e in eps}, **{s: (s, "mean") for s in sims})
    return agg.reset_index()


def format_summary(summary: pd.DataFrame, metric: str = "macro_recall", similarity_metric: str = "cka") -> str:
    """A Markdown table and a caption saying what each column is."""
    if summary.empty:
        return "no finished run"
    pm = lambda m, s: f"{m:.1f}" + (f" ± {s:.1f}" if np.isfinite(s) else "")  # noqa: E731
    sims = [c for c in summary.columns if c.startswith("sim_")]
    eps = [c for c in summary.columns if c.startswith("epochs_to_")]
    head = ["row", "arch", "init", "algorithm", "held out", "HAM share", "seeds", "in-domain", "out-of-domain",
            *[f"ep{c.split('_')[-1]}" for c in eps], *[c[4:] for c in sims]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [r["exp"], r["arch"], r["init"], r["algorithm"], r["holdout"], f"{r['fraction']:g}", str(r["seeds"]),
                 pm(r["in_domain"], r["in_domain_std"]), pm(r["out_of_domain"], r["out_of_domain_std"]),
                 *[f"{r[c]:.1f}" if pd.notna(r[c]) else "-" for c in eps],
                 *[f"{r[c]:.2f}" if pd.notna(r[c]) else "-" for c in sims]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append(f"\n{metric} x100 on each domain's test split (the trainer's selected weights), mean ± std over seeds: "
                 "in-domain = the run's training domains, out-of-domain = the domains it never trained on. "
                 f"ep90/ep95: first epoch reaching 90%/95% of the run's best validation score. Layer columns: "
                 f"{similarity_metric.upper()} of the trained model to its initialisation (similarity --vs-init), '-' = not computed.")
    return "\n".join(lines)
