"""The ablation analysis against hand computations on constructed results files: the long table, main
effects with their paired differences, the 2 x 2 interaction contrasts, the learning curves, the gap
note, the best cell (chosen on validation) with its checkpoint, and the report files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from domgen.results.ablation import NO_TRAIN_ROWS, analyse
from domgen.results.ablation_report import write_report
from domgen.results.collect import collect

X, Y, SEEDS, DOMAINS = ("x0", "x1", "x2"), ("y0", "y1"), (0, 1, 2), ("D1", "D2")


def score(x: int, y: int, seed: int) -> float:
    """Test macro recall, mean over D1, D2: an x effect, a y effect, an x1-y1 interaction and seed noise."""
    return 50 + 5 * x + 3 * y + (4 if (x, y) == (1, 1) else 0) + [0.0, 1.0, -2.5][seed] * (1 + x) + 0.3 * x * seed * y


def val(x: int, y: int, seed: int) -> float:
    return 60 - 2 * x + y + 0.1 * seed  # validation prefers x0, y1: the best cell is not the best on test


def write_runs(root: Path, with_train_split: bool = False) -> dict:
    cells = []
    for i, xv in enumerate(X):
        for j, yv in enumerate(Y):
            runs = {}
            for s in SEEDS:
                name = f"A-s{s}-{i}{j}cafe00"
                rd = root / name
                rd.mkdir(parents=True)
                base = {"exp": "A", "seed": s, "preset": "smoke", "study": "yoon2019", "data": "synthetic:t", "synthetic": True,
                        "train_domains": list(DOMAINS)}
                rows = []
                for epoch in range(3):
                    rows.append(base | {"stage": "train", "split": "train", "domain": "pool", "epoch": epoch,
                                        "train_loss": 1.0 / (epoch + 1) + i + 0.1 * s})
                    rows += [base | {"stage": "val", "split": "val", "domain": d, "epoch": epoch,
                                     "macro_recall": 10 * epoch + j + (1 if d == "D2" else -1) + s} for d in DOMAINS]
                for k, d in enumerate(DOMAINS):  # D1 and D2 differ by +-1.5 around the mean
                    off = 1.5 if k else -1.5
                    rows.append(base | {"stage": "final", "split": "test", "domain": d, "epoch": 2, "macro_recall": score(i, j, s) + off,
                                        "balanced_acc": 0.5})
                    rows.append(base | {"stage": "final", "split": "val", "domain": d, "epoch": 2, "macro_recall": val(i, j, s) + off,
                                        "balanced_acc": 0.5})
                    if with_train_split:
                        rows.append(base | {"stage": "final", "split": "train", "domain": d, "epoch": 2,
                                            "macro_recall": val(i, j, s) + 7 + i + off})
                (rd / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                (rd / "done").write_text("{}")
                runs[str(s)] = name
            cells.append({"values": {"optim.lr": xv, "loss.name": yv}, "runs": runs})
    return {"study": "yoon2019", "exp": "A", "preset": "smoke", "metric": "macro_recall", "runs_dir": str(root), "cells": cells}


def frame(root):
    return collect(root, stages=("train", "val", "final"), splits=("train", "val", "test"))


def test_main_effects_and_interactions_by_hand(tmp_path):
    doc = write_runs(tmp_path)
    res = analyse(doc, frame(tmp_path))
    s = np.array([[[score(i, j, k) for k in SEEDS] for j in range(2)] for i in range(3)])  # [x, y, seed]
    # long table: 6 cells x 3 seeds x 2 splits x 2 domains x 2 metrics present (auc, accuracy absent)
    assert len(res.long) == 6 * 3 * 2 * 2 * 2 and set(res.long["metric"]) == {"macro_recall", "balanced_acc"}
    assert res.scores.set_index(["optim.lr", "loss.name", "seed"]).loc[("x1", "y1", 2), "test"] == pytest.approx(s[1, 1, 2])
    eff = res.effects.set_index(["axis", "level"])
    # main effect of x1: mean over y and seeds; paired against x0 on (y, seed) units
    assert eff.loc[("optim.lr", "x1"), "mean"] == pytest.approx(s[1].mean())
    d = (s[1] - s[0]).ravel()
    assert eff.loc[("optim.lr", "x1"), "diff"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert eff.loc[("optim.lr", "x1"), "ci_low"] == pytest.approx(d.mean() - half)
    assert eff.loc[("optim.lr", "x1"), "t_p"] == pytest.approx(stats.ttest_rel(s[1].ravel(), s[0].ravel()).pvalue)
    assert eff.loc[("loss.name", "y1"), "diff"] == pytest.approx((s[:, 1] - s[:, 0]).mean()) and eff.loc[("loss.name", "y1"), "n"] == 9
    assert math.isnan(eff.loc[("optim.lr", "x0"), "sd"]) or eff.loc[("optim.lr", "x0"), "diff"] == 0
    # interaction (x1, y1) vs (x0, y0): per seed [s11 - s01] - [s10 - s00]
    inter = res.interactions.set_index(["level_a", "level_b"])
    c11 = (s[1, 1] - s[0, 1]) - (s[1, 0] - s[0, 0])
    c21 = (s[2, 1] - s[0, 1]) - (s[2, 0] - s[0, 0])
    assert inter.loc[("x1", "y1"), "diff"] == pytest.approx(c11.mean())
    assert inter.loc[("x1", "y1"), "sd"] == pytest.approx(c11.std(ddof=1))
    assert inter.loc[("x2", "y1"), "diff"] == pytest.approx(c21.mean()) and len(inter) == 2 and (inter["n"] == 3).all()
    # learning curves: cell x0,y0 at epoch 1 = mean over seeds of train_loss and of the val metric
    cur = res.curves.set_index(["cell", "epoch"])
    assert cur.loc[("optim.lr=x0,loss.name=y0", 1), "train_loss"] == pytest.approx(0.5 + 0.1)
    assert cur.loc[("optim.lr=x0,loss.name=y1", 1), "val_macro_recall"] == pytest.approx(10 + 1 + 1)
    assert cur.loc[("optim.lr=x0,loss.name=y1", 1), "seeds"] == 3
    # no training-split rows: the gap says so
    assert res.gaps["gap"].isna().all() and (res.gaps["gap_note"] == NO_TRAIN_ROWS).all()
    # best by validation (x0, y1; its best seed by validation is 2), not by test (which favours x2)
    assert res.best["cell"] == "optim.lr=x0,loss.name=y1" and res.best["values"] == {"optim.lr": "x0", "loss.name": "y1"}
    assert res.best["val"] == pytest.approx(np.mean([val(0, 1, k) for k in SEEDS]))
    assert res.best["test"] == pytest.approx(s[0, 1].mean())
    assert res.best["checkpoint"] == str(tmp_path / "A-s2-01cafe00" / "best.pt") and len(res.best["checkpoints"]) == 3
    assert res.missing == []


def test_gap_with_train_rows_missing_runs_and_report_files(tmp_path):
    runs = tmp_path / "runs"
    doc = write_runs(runs, with_train_split=True)
    doc["cells"][0]["runs"]["3"] = "A-s3-never-run"  # planned, not run
    res = analyse(doc, frame(runs))
    gaps = res.gaps.set_index("cell")
    # train - val = 7 + i at every seed and domain
    assert gaps.loc["optim.lr=x2,loss.name=y0", "gap"] == pytest.approx(9.0) and (gaps["gap_note"] == "").all()
    assert res.missing == ["A-s3-never-run"]
    paths = write_report(res, doc, tmp_path / "report", synthetic=True)
    names = {p.name for p in paths}
    assert {"long.csv", "effects.csv", "interactions.csv", "curves.csv", "gaps.csv", "best.json", "summary.md",
            "heatmap-optim_lr-loss_name.png", "curves.png"} <= names
    assert all(p.stat().st_size > 0 for p in paths)
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "synthetic data" in text and "A-s3-never-run" in text and "checkpoint" in text


def test_a_search_ranks_its_trials_by_validation(tmp_path):
    from domgen.results.ablation_report import format_summary

    doc = write_runs(tmp_path) | {"kind": "search"}
    res = analyse(doc, frame(tmp_path))
    assert res.effects.empty and res.interactions.empty and res.kind == "search"
    text = format_summary(res, doc)
    rows = [line for line in text.splitlines() if line.startswith("| optim.lr=")]
    # validation 60 - 2x + y: (x0, y1) 61, (x0, y0) 60, (x1, y1) 59, ... ranked in that order
    assert [r.split(" | ")[0][2:] for r in rows[:3]] == [
        "optim.lr=x0,loss.name=y1", "optim.lr=x0,loss.name=y0", "optim.lr=x1,loss.name=y1"]
    assert text.startswith("Search of yoon2019 row A") and res.best["cell"] == "optim.lr=x0,loss.name=y1"
    assert not any(p.name.startswith("heatmap") for p in write_report(res, doc, tmp_path / "report"))
