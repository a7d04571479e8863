"""Ablation planning: the grid is exactly the product of its axes, every cell x seed is one hashed run,
finished runs are skipped; a random search draws from its declared distributions, seeded, and a longer
search keeps the trials (and runs) of a shorter one; a study's ablation: block is read and checked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from domgen.errors import ConfigError
from domgen.sweep.ablate import plan_ablation, read_cells, write_cells
from domgen.sweep.grid import Dimension, grid_cells, load_space, parse_axis, search_cells
from domgen.sweep.launch import select_jobs
from domgen.sweep.plan import DataSize

IDENTITY = "synthetic:test"
SIZES = lambda d: DataSize(pool=100, val=30, test=60)  # noqa: E731


def test_grid_is_the_product_of_the_axes_last_axis_fastest():
    axes = [parse_axis("optim.lr=1e-3,1e-2,0.1"), parse_axis("loss.name=ce,focal"), parse_axis("model.arch=resnet18,resnet50")]
    cells = grid_cells(axes)
    assert len(cells) == 3 * 2 * 2 and len(set(cells)) == 12
    assert cells[0].items == ("optim.lr=1e-3", "loss.name=ce", "model.arch=resnet18")
    assert cells[1].items == ("optim.lr=1e-3", "loss.name=ce", "model.arch=resnet50")
    assert cells[-1].label == "optim.lr=0.1,loss.name=focal,model.arch=resnet50"
    # every combination once
    assert {tuple(v for _, v in c.values) for c in cells} == {
        (a, b, c) for a in ("1e-3", "1e-2", "0.1") for b in ("ce", "focal") for c in ("resnet18", "resnet50")}
    with pytest.raises(ConfigError, match="twice"):
        parse_axis("optim.lr=1e-3,1e-3")
    with pytest.raises(ConfigError, match="KEY=V1"):
        parse_axis("optim.lr")
    with pytest.raises(ConfigError, match="given twice"):
        grid_cells([parse_axis("optim.lr=1"), parse_axis("optim.lr=2")])


def test_each_cell_and_seed_is_one_hashed_run_and_done_runs_are_skipped(tmp_path):
    cells = grid_cells([parse_axis("optim.lr=1e-3,1e-2"), parse_axis("loss.name=ce,focal")])
    ab = plan_ablation(cells, "A", 3, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=SIZES)
    names = [n for c in cells for n in ab.runs[c].values()]
    assert len(ab.plan.jobs) == 4 * 3 == len(set(names)) and set(names) == {j.name for j in ab.plan.jobs}
    for cell in cells:  # the run carries its cell's settings
        for seed, name in ab.runs[cell].items():
            job = ab.plan.job(name)
            assert job.cfg.seed == seed and job.cfg.optim.lr == float(cell.get("optim.lr"))
            assert job.cfg.loss.name == cell.get("loss.name")
    # a finished run is skipped by the launcher; planning again gives the same folders (resumable)
    done = ab.runs[cells[2]][1]
    (tmp_path / "runs" / done).mkdir(parents=True)
    (tmp_path / "runs" / done / "done").write_text("{}")
    again = plan_ablation(cells, "A", 3, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=SIZES)
    assert again.runs == ab.runs and again.plan.job(done).state == "done"
    todo, report = select_jobs(again.plan, retry_failed=False, slurm=False)
    assert len(todo) == 11 and done not in {j.name for j in todo} and report.skipped == {done: "done"}
    # cells.json names every run of every cell
    doc = read_cells(write_cells(again))
    assert [c["values"] for c in doc["cells"]] == [dict(c.values) for c in cells]
    assert doc["cells"][2]["runs"]["1"] == done and doc["exp"] == "A" and doc["preset"] == "smoke"


def test_two_values_that_are_the_same_run_are_refused(tmp_path):
    cells = grid_cells([parse_axis("optim.lr=1e-3,0.001")])
    with pytest.raises(ConfigError, match="same run"):
        plan_ablation(cells, "A", 1, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=SIZES)


SPACE = """
optim.lr: {log_uniform: [1.0e-5, 1.0e-1]}
optim.weight_decay: {uniform: [0.0, 0.5]}
optim.batch_size: {int: [8, 12]}
loss.name: {choice: [ce, focal, asymmetric]}
"""


def test_search_draws_from_the_declared_distributions_with_the_seed(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    assert [d.kind for d in space] == ["log_uniform", "uniform", "int", "choice"]
    cells = search_cells(space, 400, seed=3)
    assert search_cells(space, 400, seed=3) == cells and search_cells(space, 400, seed=4) != cells
    lr = np.array([float(c.get("optim.lr")) for c in cells])
    wd = np.array([float(c.get("optim.weight_decay")) for c in cells])
    bs = [int(c.get("optim.batch_size")) for c in cells]
    loss = [c.get("loss.name") for c in cells]
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1 and wd.min() >= 0 and wd.max() <= 0.5
    # log-uniform: log10(lr) ~ U(-5, -1), mean -3, sd 4 / sqrt(12) = 1.155; the decades are equally filled
    assert abs(np.log10(lr).mean() + 3) < 0.2 and abs(np.log10(lr).std() - 4 / math.sqrt(12)) < 0.1
    assert abs(wd.mean() - 0.25) < 0.03  # uniform
    assert set(bs) == {8, 9, 10, 11, 12}  # int: both ends included
    assert set(loss) == {"ce", "focal", "asymmetric"} and min(loss.count(x) for x in set(loss)) > 100
    # trial i depends only on (seed, i): a longer search starts with the shorter one's trials
    assert search_cells(space, 5, seed=3) == cells[:5]
    # the draw itself, by hand: trial 0's generator, key by key in file order
    from domgen.seeds import derive_seed

    rng = np.random.default_rng(derive_seed(3, 0, "search"))
    lr0 = math.exp(rng.uniform(math.log(1e-5), math.log(1e-1)))
    assert float(cells[0].get("optim.lr")) == pytest.approx(lr0, rel=1e-5)


def test_search_is_resumable_finished_trials_skipped(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n")
    first = plan_ablation(search_cells(load_space(path), 3), "A", 1, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=SIZES)
    for name in (n for r in first.runs.values() for n in r.values()):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "done").write_text("{}")
    more = plan_ablation(search_cells(load_space(path), 5), "A", 1, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=SIZES)
    todo, _ = select_jobs(more.plan, retry_failed=False, slurm=False)
    assert len(more.plan.jobs) == 5 and len(todo) == 2  # the 3 finished trials are skipped


def test_bad_spaces_name_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    for text, match in (("optim.lr: {log_uniform: [0, 1]}", "both > 0"), ("optim.lr: {normal: [0, 1]}", "one of"),
                        ("optim.batch_size: {int: [8.5, 12]}", "integers"), ("[1, 2]", "mapping")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_space(path)
    assert Dimension("k", "int", (3, 3.5)).kind == "int"


def test_study_ablation_block(tmp_path):
    from domgen.studies import load_study

    path = tmp_path / "mine.yaml"
    path.write_text("study: mine\nexperiments:\n  - {name: base}\n  - {name: other}\n"
                    "ablation:\n  exp: other\n  seeds: 3\n  metric: balanced_acc\n"
                    "  axes:\n    optim.lr: [1.0e-3, 1.0e-2]\n    loss.name: [ce, focal]\n")
    spec = load_study(path).ablation
    assert spec.exp == "other" and spec.seeds == "3" and spec.metric == "balanced_acc"
    assert spec.axes == (("optim.lr", ("0.001", "0.01")), ("loss.name", ("ce", "focal")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  - {name: base}\nablation:\n  exp: nope\n  axes: {optim.lr: [1]}\n")
    with pytest.raises(ConfigError, match="unknown row 'nope'"):
        load_study(bad)


# ---- end to end: a 2 x 2 smoke ablation on the synthetic BreastMNIST stand-in, through the CLI ----
@pytest.mark.slow
def test_smoke_ablation_end_to_end(tmp_path, monkeypatch, capsys):
    from domgen.engine.logging import read_results
    from domgen.run import main

    monkeypatch.setenv("DOMGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DOMGEN_DATA", raising=False)
    argv = ["ablate", "--study", "breastmnist-ablation", "--preset", "smoke", "--seeds", "2", "--out", str(tmp_path / "runs"),
            "--axis", "optim.lr=1e-3,3e-3", "--axis", "loss.name=ce,focal", "--scale", "0.1", "--workers", "0",
            "--set", "optim.epochs=1", "--max-parallel", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = next((tmp_path / "runs" / "ablations").iterdir())
    doc = read_cells(folder)
    assert len(doc["cells"]) == 4 and all(len(c["runs"]) == 2 for c in doc["cells"]) and doc["metric"] == "ovr_auc"
    long = __import__("pandas").read_csv(folder / "long.csv")
    # 4 cells x 2 seeds x (val, test) x 1 domain, for each metric recorded
    assert set(long["domain"]) == {"synthetic_breastmnist"} and len(long[long["metric"] == "ovr_auc"]) == 4 * 2 * 2
    best = json.loads((folder / "best.json").read_text())
    run = Path(best["checkpoint"]).parent
    assert Path(best["checkpoint"]).name == "best.pt" and (run / "best.pt").is_file()
    # the best cell's validation AUC is the mean over its seeds of what the runs recorded
    vals = [r["ovr_auc"] for s, name in next(c for c in doc["cells"] if ",".join(f"{k}={v}" for k, v in c["values"].items())
                                         == best["cell"])["runs"].items()
            for r in read_results(tmp_path / "runs" / name) if r["stage"] == "final" and r["split"] == "val"]
    assert best["val"] == pytest.approx(sum(vals) / len(vals))
    assert (folder / "heatmap-optim_lr-loss_name.png").stat().st_size > 0 and (folder / "curves.png").is_file()
    assert "synthetic data" in out and "Main effects" in out
    # again: every run is done, nothing is launched
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "launched 0 run(s)" in again and "skipped: 8 done" in again
