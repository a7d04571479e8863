"""DCP's threshold -> size curve: ``prune --thresholds 1e-5,...,1e-3 [--target-params 8.5M]``.

Eq. 10's threshold is not a size: on a quick-preset model 1e-4 kept 1.7M parameters where the paper
reports 8.5M. This driver trains or reuses the parent (K), selects channels once for all thresholds
(``domgen.prune.sweep_channels_dcp``: one greedy trajectory per unit and distinct model, each
threshold's stopping point read off it, so each threshold's selection is exactly what ``prune
--threshold`` alone would select) and records, per threshold, parameters, MACs and the validation
macro recall of the pruned model *before* fine-tuning (the fine-tuning of U/V would cost a CCSA stage
per point). ``target_params`` then picks the threshold whose model is the largest within the budget,
refining it by bisection in log(threshold) between the listed thresholds that bracket the budget.
A threshold's row depends only on the parent's weights, the data and the config (the threshold aside), so
rows an earlier run recorded in ``curve.json`` from the same parent checkpoint (its SHA-256) are reused, not
selected again: ``--target-params`` after a plain curve only selects at the thresholds it adds.

Files go to ``<out>/<exp>-curve-s<seed>-<hash>/`` (the hash ignores the threshold): ``curve.csv``,
``curve.json`` (rows, the parent, the choice) and ``curve.png`` (params vs threshold, recall vs params).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from domgen.atomic import atomic_path, write_text_atomic
from domgen.config import RunConfig, config_hash, to_dict
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.loop import predict
from domgen.engine.metrics import evaluate_domains
from domgen.engine.trainer import BEST, Hooks, Trainer
from domgen.data.run_data import RunData, prepare_data
from domgen.runs.prune import prepare_selection, unit_progress
from domgen.runs.train import parent_config, run_train
from domgen.models import build_model
from domgen.prune import apply_selection, count_params_macs, sweep_channels_dcp
from domgen.seeds import derive_seed

DEFAULT_THRESHOLDS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


@dataclass
class CurveResult:
    out_dir: Path
    rows: list[dict[str, Any]]  # one per threshold, sorted by threshold
    params_before: int
    macs_before: int
    recall_before: float  # the unpruned model's validation macro recall
    chosen: dict[str, Any] | None  # the row picked for target_params


def curve_dir(cfg: RunConfig, identity: str) -> Path:
    neutral = replace(cfg, prune=replace(cfg.prune, threshold=0.0))
    return Path(cfg.out) / f"{cfg.exp}-curve-s{cfg.seed}-{config_hash(neutral, identity)}"


class _Evaluator:
    """Everything a threshold's evaluation needs: the parent's weights, calibration data, heads."""

    def __init__(self, cfg: RunConfig, data: RunData, state: dict, out_dir: Path, hooks: Hooks):
        self.cfg, self.data, self.state, self.hooks = cfg, data, state, hooks
        model = self.fresh()
        self.probe = Trainer(cfg, data, out_dir, {}, hooks, model=model)  # inputs and device only
        self.size = (3, cfg.transform.size, cfg.transform.size)
        self.params0, self.macs0 = count_params_macs(self.probe.model, self.size)
        self.batches, self.heads = prepare_selection(cfg, self.probe, data, self.probe.model, hooks)
        self.val = data.positions("val")
        self.recall0 = self._recall(self.probe.model)["val_macro_recall"]

    def fresh(self) -> torch.nn.Module:
        model = build_model(self.cfg.model.arch, "none")
        model.load_state_dict(self.state)
        return model

    def rows(self, thresholds: Sequence[float]) -> list[dict[str, Any]]:
        """One DCP sweep over ``thresholds``; a row per threshold (thresholds sharing a model share it)."""
        model = self.fresh().to(self.probe.device)
        branches = sweep_channels_dcp(model, self.batches, self.cfg.prune, thresholds, heads=self.heads,
                                      progress=unit_progress(self.hooks, f"[{self.cfg.exp} s{self.cfg.seed}]"),
                                      seed=derive_seed(self.cfg.seed, "prune-aux-heads"))
        measured: dict[int, dict[str, Any]] = {}
        for branch in {id(b): b for b in branches.values()}.values():
            example = torch.zeros((1, *self.size), device=self.probe.device)
            pruned = apply_selection(branch.model, branch.kept, example)
            params, macs = count_params_macs(pruned, self.size)
            measured[id(branch)] = {"params": params, "macs": macs, **self._recall(pruned),
                                    "channels_kept": {k: len(v) for k, v in branch.kept.items()}}
        return [{"threshold": t} | measured[id(branches[t])] for t in sorted(branches)]

    def _recall(self, model) -> dict[str, Any]:
        """Validation macro recall per training domain and their mean (the selection score)."""
        m = self.data.manifest
        batches = self.probe.inputs.eval_batches(self.val, 2 * self.cfg.optim.batch_size)
        probs, y, _ = predict(model, batches, self.probe.device, precision=self.cfg.precision)
        rows, _ = evaluate_domains(y, probs, m["domain"].to_numpy()[self.val], m["split"].to_numpy()[self.val],
                                   classes=self.data.classes)
        per = {r["domain"]: float(r["macro_recall"]) for r in rows if r["domain"] in self.data.train_domains}
        return {"val_macro_recall": float(np.nanmean(list(per.values()))), "val_recall_by_domain": per}


def run_prune_curve(cfg: RunConfig, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, target_params: int | None = None,
                    refine: int = 4, hooks: Hooks = Hooks()) -> CurveResult:
    if not thresholds or min(thresholds) <= 0:
        raise ValueError(f"thresholds must be positive, got {list(thresholds)}")
    if cfg.prune.method != "dcp":
        raise ValueError(f"a threshold curve needs prune.method=dcp, not {cfg.prune.method!r} (which prunes by a ratio)")
    data = prepare_data(cfg.data, bar=hooks.bar, log=hooks.log)
    parent = run_train(parent_config(cfg), hooks, catalog=data.catalog, wait=True)
    out_dir = curve_dir(cfg, data.identity)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(parent.run_dir / BEST)
    curve = _Curve(cfg, lambda: _Evaluator(cfg, data, load_checkpoint(parent.run_dir / BEST)["model"], out_dir, hooks),
                   _recorded(out_dir, digest))
    rows = curve.rows(sorted(set(thresholds)))
    chosen = None
    if target_params is not None:
        rows, chosen = _refine_to_budget(curve, rows, target_params, refine, hooks)
    result = CurveResult(out_dir, rows, *curve.before(), chosen)
    _write(result, cfg, parent.run_dir, target_params, digest)
    return result


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _recorded(out_dir: Path, parent_sha256: str) -> dict:
    """What an earlier run wrote to ``curve.json`` from the same parent weights, else {}. The folder's name
    already hashes the config (the threshold aside) and the data; the parent may have been trained again."""
    try:
        record = json.loads((out_dir / "curve.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if record.get("parent_sha256") == parent_sha256 else {}


class _Curve:
    """Rows by threshold: those recorded from the same parent weights, the rest selected here (the
    evaluator, with its calibration batches and heads, is built only when a threshold is missing)."""

    def __init__(self, cfg: RunConfig, evaluator: Callable[[], _Evaluator], record: dict):
        self.cfg, self._make, self._ev, self.record = cfg, evaluator, None, record
        self.recorded = {float(r["threshold"]): r for r in record.get("rows", [])}

    @property
    def ev(self) -> _Evaluator:
        if self._ev is None:
            self._ev = self._make()
        return self._ev

    def rows(self, thresholds: Sequence[float]) -> list[dict[str, Any]]:
        todo = [t for t in thresholds if t not in self.recorded]
        fresh = {r["threshold"]: r for r in self.ev.rows(todo)} if todo else {}
        return [self.recorded[t] if t in self.recorded else fresh[t] for t in thresholds]

    def before(self) -> tuple[int, int, float]:
        """The unpruned model's parameters, MACs and validation macro recall."""
        if self._ev is None and self.record:
            r = self.record
            return r["params_before"], r["macs_before"], r["val_macro_recall_before"]
        return self.ev.params0, self.ev.macs0, self.ev.recall0


def _refine_to_budget(curve: _Curve, rows: list[dict], target: int, steps: int, hooks: Hooks):
    """The largest model within ``target`` parameters; bisection in log(threshold) toward the budget
    between the threshold that fits and the next smaller one that does not (the invariant holds even
    where the curve is not monotone)."""
    fits = [r for r in rows if r["params"] <= target]
    if not fits:
        largest = max(r["threshold"] for r in rows)
        raise ValueError(f"no threshold reaches {target:,} parameters (at {largest:g}: "
                         f"{min(r['params'] for r in rows):,}); add larger thresholds")
    for _ in range(steps):
        best = max(fits, key=lambda r: r["params"])
        over = [r for r in rows if r["params"] > target and r["threshold"] < best["threshold"]]
        if not over:
            break
        lo = max(over, key=lambda r: r["threshold"])
        mid = math.exp((math.log(lo["threshold"]) + math.log(best["threshold"])) / 2)
        (row,) = curve.rows([mid])
        hooks.log(f"[{curve.cfg.exp} s{curve.cfg.seed}] threshold {mid:.3g}: {row['params'] / 1e6:.2f}M parameters")
        rows = sorted(rows + [row], key=lambda r: r["threshold"])
        if row["params"] <= target:
            fits.append(row)
    return rows, max(fits, key=lambda r: r["params"])


def _write(result: CurveResult, cfg: RunConfig, parent_dir: Path, target: int | None, parent_sha256: str) -> None:
    flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in result.rows]
    write_text_atomic(result.out_dir / "curve.csv", pd.DataFrame(flat).to_csv(index=False))
    record = {"exp": cfg.exp, "seed": cfg.seed, "preset": cfg.preset, "parent_run": str(parent_dir),
              "parent_sha256": parent_sha256,
              "params_before": result.params_before, "macs_before": result.macs_before,
              "val_macro_recall_before": result.recall_before,
              "target_params": target, "chosen": result.chosen, "rows": result.rows, "config": to_dict(cfg)}
    write_text_atomic(result.out_dir / "curve.json", json.dumps(record, indent=1))
    plot_curve(result, result.out_dir / "curve.png", title=f"{cfg.exp} s{cfg.seed} ({cfg.preset}), DCP before fine-tuning")


def plot_curve(result: CurveResult, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["threshold"] for r in result.rows]
    p = [r["params"] / 1e6 for r in result.rows]
    rec = [r["val_macro_recall"] for r in result.rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.semilogx(t, p, "o-")
    a.axhline(result.params_before / 1e6, color="grey", ls=":", label="unpruned")
    a.set(xlabel="DCP threshold", ylabel="parameters (M)", title="size vs threshold")
    b.plot(p, rec, "o-")
    for x, y, th in zip(p, rec, t):
        b.annotate(f"{th:.0e}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    b.axhline(result.recall_before, color="grey", ls=":", label=f"unpruned ({result.params_before / 1e6:.1f}M)")
    b.legend()
    b.set(xlabel="parameters (M)", ylabel="validation macro recall (%)", title="recall vs size")
    if result.chosen is not None:
        a.plot([result.chosen["threshold"]], [result.chosen["params"] / 1e6], "r*", ms=12, label="chosen")
        b.plot([result.chosen["params"] / 1e6], [result.chosen["val_macro_recall"]], "r*", ms=12)
    a.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
