"""What a run folder records beyond Table 2's numbers: the training subsample's rows (overfitting gap),
per-case test predictions (bootstrap intervals), environment.json, and ``deterministic``. One smoke run of
experiment D (HAM plus 5 images per class of each other source) with and one without the new keys."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SCALE
from domgen.engine.logging import read_results
from domgen.engine.predictions import TEST_PREDICTIONS, load_predictions, stratified_subsample
from domgen.engine.provenance import ENVIRONMENT, git_state, set_deterministic, write_environment
from domgen.results.bootstrap import grouped_bootstrap, run_intervals
from domgen.runs.train import run_train
from test_train import smoke_cfg

REPO = Path(__file__).resolve().parents[1]


def test_stratified_subsample_by_hand():
    # sizes A 100, B 3, C 10 and n = 30: equal shares of 10; B has 3, so its 7 go on; C is then full at 10,
    # so A takes them all: A 17, B 3, C 10.
    domains = np.array(["A"] * 100 + ["B"] * 3 + ["C"] * 10)
    pick = stratified_subsample(domains, 30, seed=5)
    names, counts = np.unique(domains[pick], return_counts=True)
    assert dict(zip(names, counts)) == {"A": 17, "B": 3, "C": 10}
    assert len(set(pick)) == 30 and np.array_equal(pick, stratified_subsample(domains, 30, seed=5))
    assert not np.array_equal(pick, stratified_subsample(domains, 30, seed=6))
    assert len(stratified_subsample(domains, 500, seed=0)) == 113  # more than there is: everything


@pytest.fixture(scope="module")
def pair(tiny_cache, tmp_path_factory):
    """(with train_eval=40 and deterministic, without); the deterministic one first, so the plain one also
    shows the switch going back off. On 1/20 of the synthetic benchmark (conftest.tiny_cache): what is
    checked does not depend on its size."""
    out = tmp_path_factory.mktemp("record")
    tiny = [f"data.synthetic_scale={TINY_SCALE}"]
    on = run_train(smoke_cfg(tiny_cache, out / "on", exp="D", extra=[*tiny, "train_eval=40", "deterministic=true"]))
    deterministic_during = torch.are_deterministic_algorithms_enabled()
    off = run_train(smoke_cfg(tiny_cache, out / "off", exp="D", extra=tiny))
    return on, off, deterministic_during, out


def test_train_eval_adds_train_rows_and_changes_nothing_else(pair):
    on, off, _, _ = pair
    assert on.run_dir.name == off.run_dir.name  # neither key is hashed
    rows_on, rows_off = read_results(on.run_dir), read_results(off.run_dir)
    other = [r for r in rows_on if not (r["stage"] == "val" and r["split"] == "train")]
    assert other == rows_off  # the same weights, evaluated in the same batches: every other row identical
    a = torch.load(on.run_dir / "best.pt", weights_only=True)["model"]
    b = torch.load(off.run_dir / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    train = [r for r in rows_on if r["stage"] == "val" and r["split"] == "train"]
    assert sorted({r["epoch"] for r in train}) == [1, 2]
    domains = on.summary.get("train_domains") or train[0]["train_domains"]
    for epoch in (1, 2):
        got = {r["domain"]: r["n"] for r in train if r["epoch"] == epoch}
        assert set(got) == set(domains) and sum(got.values()) == 40
        # the secondary sources hold a few images each; each gets an equal share or all it has
        assert got["HAM"] >= max(v for d, v in got.items() if d != "HAM")
    # the gap is readable from results alone: train minus validation, per domain and epoch
    val = {(r["epoch"], r["domain"]): r["macro_recall"] for r in rows_on if r["stage"] == "val" and r["split"] == "val"}
    assert all((r["epoch"], r["domain"]) in val for r in train)


def test_test_predictions_reproduce_the_final_rows(pair):
    on, _, _, _ = pair
    pred = load_predictions(on.run_dir / TEST_PREDICTIONS)
    final = {r["domain"]: r for r in read_results(on.run_dir) if r["stage"] == "final" and r["split"] == "test"}
    assert sorted(set(pred["domain"])) == sorted(final)
    assert pred["probs"].shape == (len(pred["label"]), len(pred["classes"])) and len(set(pred["case"])) == len(pred["case"])
    for d, row in final.items():
        m = pred["domain"] == d
        assert m.sum() == row["n"]
        ci = grouped_bootstrap(pred["label"][m], pred["probs"][m], pred["group"][m], n_boot=100)
        assert ci.value == pytest.approx(row["macro_recall"]) and ci.low <= ci.value <= ci.high
    assert [r["domain"] for r in run_intervals(on.run_dir, n_boot=20)][0] == "HAM"


def test_environment_json(pair):
    on, off, deterministic_during, _ = pair
    env = json.loads((on.run_dir / ENVIRONMENT).read_text())
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["numpy"] == np.__version__ and env["torchvision"] and "timm" in env
    assert env["cuda"] is None and env["cudnn"] is None and env["device_type"] == "cpu" and env["device"]
    assert env["deterministic"] is True and deterministic_during is True
    assert json.loads((off.run_dir / ENVIRONMENT).read_text())["deterministic"] is False
    assert torch.are_deterministic_algorithms_enabled() is False  # the plain run switched it back off
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    assert env["git_commit"] == head and env["git_dirty"] is dirty


def test_environment_without_git_and_on_resume(tmp_path, monkeypatch):
    assert git_state(tmp_path) == (None, None)  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_state(REPO) == (None, None)
    write_environment(tmp_path, {"python": "3.0", "started": "a"})
    write_environment(tmp_path, {"python": "3.1", "started": "b"})
    write_environment(tmp_path, {"python": "3.2", "started": "c"})
    env = json.loads((tmp_path / ENVIRONMENT).read_text())
    assert env["python"] == "3.2" and [e["started"] for e in env["earlier"]] == ["a", "b"]


def test_table_ci_from_the_command_line(pair):
    from domgen.run import main

    _, _, _, out = pair
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["table", "--runs", str(out / "on"), "--preset", "smoke", "--ci", "--n-boot", "50"]) == 0
    text = buf.getvalue()
    assert "bootstrap intervals over patients" in text and "50 resamples" in text
    line = next(l for l in text.splitlines() if l.startswith("| D s0 |"))
    assert line.count("[") == 7  # one interval per domain


def test_deterministic_switch_round_trips():
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert torch.is_deterministic_algorithms_warn_only_enabled()  # ResNet's pooling backward has no such CUDA kernel
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_gap_frame_reads_the_gap_from_results(pair):
    from domgen.results.collect import collect
    from domgen.results.gap import gap_frame

    on, _, _, out = pair
    rows = read_results(on.run_dir)
    pick = lambda split: {(r["epoch"], r["domain"]): r["macro_recall"] for r in rows if r["stage"] == "val" and r["split"] == split}
    train, val = pick("train"), pick("val")
    gap = gap_frame(collect(out, stages=("val",), splits=("train", "val")))
    assert len(gap) == len(train) == 2 * len(rows[0]["train_domains"]) and set(gap["run"]) == {on.run_dir.relative_to(out).as_posix()}
    for r in gap.to_dict("records"):
        assert r["gap"] == pytest.approx(train[(r["epoch"], r["domain"])] - val[(r["epoch"], r["domain"])])


@pytest.mark.parametrize("argv", [["train"], ["loo", "--holdout", "PH2"], ["sweep"], ["prune"]])
def test_deterministic_flag_becomes_an_unhashed_set(argv):
    from domgen import cli_common as cc
    from domgen.config import RunConfig, apply_overrides, config_hash
    from domgen.run import parser

    args = parser().parse_args([*argv, "--deterministic", "--set", "optim.lr=0.1"])
    cc.deterministic_override(args)
    assert args.set == ["optim.lr=0.1", "deterministic=true"]
    cfg = apply_overrides(RunConfig(), args.set)
    assert cfg.deterministic is True and config_hash(cfg) == config_hash(apply_overrides(RunConfig(), ["optim.lr=0.1"]))
    plain = parser().parse_args(argv)
    cc.deterministic_override(plain)
    assert plain.set == []
