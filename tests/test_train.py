"""The training engine end to end at the smoke preset on a small synthetic benchmark (CPU, seconds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SCALE
from domgen.engine.logging import read_results
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train

REPO = Path(__file__).resolve().parents[1]


def smoke_cfg(cache: Path, out: Path, exp: str = "A", seed: int = 0, extra=()):
    return resolve_config(exp, "smoke", seed, [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}", *extra])


def final_test(run_dir: Path) -> dict[str, float]:
    return {r["domain"]: r["macro_recall"] for r in read_results(run_dir) if r["stage"] == "final" and r["split"] == "test"}


@pytest.fixture(scope="module")
def finished(smoke_cache, seed_parents, tmp_path_factory):
    """A at the smoke preset, trained once per session (conftest.smoke_parents) and found done here."""
    out = tmp_path_factory.mktemp("runs")
    seed_parents(out, ["A"])
    return run_train(smoke_cfg(smoke_cache, out)), out


def test_run_folder_explains_itself_and_selects_best_epoch(finished):
    result, _ = finished
    rows = read_results(result.run_dir)
    val = [r for r in rows if r["stage"] == "val"]
    epochs = sorted({r["epoch"] for r in val})
    assert epochs == [1, 2]
    # Model selection with nsec=0: HAM's validation macro recall alone decides the best epoch.
    ham = {r["epoch"]: r["macro_recall"] for r in val if r["domain"] == "HAM"}
    assert result.summary["best_epoch"] == max(epochs, key=lambda e: (ham[e], -e))
    assert result.summary["best_val_score"] == pytest.approx(ham[result.summary["best_epoch"]])
    # After each epoch only what selection needs is evaluated: HAM's validation split (nsec = 0).
    assert sorted((r["epoch"], r["domain"]) for r in val) == [(1, "HAM"), (2, "HAM")]
    # Every domain is evaluated on validation and test with the best epoch's weights.
    final = [r for r in rows if r["stage"] == "final"]
    assert {(r["split"], r["domain"]) for r in final} == {(s, d) for s in ("val", "test") for d in ("HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON")}
    assert result.summary["test_macro_recall"] == final_test(result.run_dir)
    assert all(r["synthetic"] and r["data"].startswith("synthetic") for r in rows)
    done = json.loads((result.run_dir / "done").read_text())
    assert done["test_macro_recall"] == result.summary["test_macro_recall"]
    for name in ("config.yaml", "last.pt", "best.pt"):
        assert (result.run_dir / name).is_file()
    assert list((result.run_dir / "tb").glob("events.out.tfevents.*"))


def test_epoch_eval_all_records_every_domain_and_split_each_epoch_and_selects_the_same(finished, smoke_cache, tmp_path):
    result, _ = finished
    every = run_train(smoke_cfg(smoke_cache, tmp_path, extra=["epoch_eval=all"]))
    rows = [r for r in read_results(every.run_dir) if r["stage"] == "val"]
    assert len(rows) == 2 * 7 * 2 and {r["domain"] for r in rows} == {"HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON"}
    assert {(r["epoch"], r["split"]) for r in rows} == {(1, "val"), (2, "val"), (1, "test"), (2, "test")}
    # the epoch's test rows are the selected weights' final test rows: the same model, evaluated the same way
    best = every.summary["best_epoch"]
    at_best = {r["domain"]: r["macro_recall"] for r in rows if r["split"] == "test" and r["epoch"] == best}
    assert at_best == pytest.approx(every.summary["test_macro_recall"])
    # train selection recomputed afterwards from the recorded rows picks the trainer's epoch, and its
    # per-epoch test rows there are the final rows it reports (domgen.results.selection)
    from domgen.results.collect import collect
    from domgen.results.selection import select_rows, selected_epochs

    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    assert selected_epochs(df, "train")["epoch"].tolist() == [best]
    reported = select_rows(df, "train")
    assert dict(zip(reported["domain"], reported["macro_recall"])) == pytest.approx(at_best)
    assert every.run_dir.name == result.run_dir.name  # what is recorded, not what is computed
    assert every.summary["best_epoch"] == result.summary["best_epoch"]
    assert every.summary["test_macro_recall"] == pytest.approx(result.summary["test_macro_recall"])


def test_rerun_of_finished_config_does_nothing_unless_forced(finished, smoke_cache):
    result, out = finished
    before = (result.run_dir / "results.jsonl").read_bytes()
    again = run_train(smoke_cfg(smoke_cache, out))
    assert again.skipped and again.run_dir == result.run_dir
    assert (result.run_dir / "results.jsonl").read_bytes() == before


def test_same_seed_same_results_and_seed_matters(finished, smoke_cache, tmp_path):
    result, _ = finished
    twin = run_train(smoke_cfg(smoke_cache, tmp_path / "twin"))
    assert twin.run_dir.name == result.run_dir.name  # same config, same hash
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]
    assert strip(read_results(twin.run_dir)) == strip(read_results(result.run_dir))
    other = run_train(smoke_cfg(smoke_cache, tmp_path / "other", seed=1))
    assert other.run_dir.name != result.run_dir.name
    a = [r["macro_recall"] for r in read_results(result.run_dir) if r["stage"] != "train"]
    b = [r["macro_recall"] for r in read_results(other.run_dir) if r["stage"] != "train"]
    assert a != b


def _cli(cache: Path, out: Path, *extra: str, run: tuple[str, ...] = ("-m", "domgen.run")) -> list[str]:
    """The 4-epoch run of the killed-run test, on 1/20 of the synthetic benchmark (``cache``: tiny_cache)."""
    return [sys.executable, *run, "train", "--exp", "A", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache),
            "--scale", str(TINY_SCALE), "--workers", "0", "--set", "threads=1", "--set", "optim.epochs=4", "--set", "optim.lr_step=2", *extra]


# The CLI in a process that, once epoch 2's results are written and before its checkpoint, waits to be killed:
# where SIGKILL lands no longer depends on the machine's load (the run cannot finish first), and the resumed
# run must redo epoch 2 from last.pt's epoch 1 without duplicating the rows the killed one wrote.
WAIT_TO_BE_KILLED = ("import time, runpy\n"
                     "from domgen.engine.trainer import Trainer\n"
                     "log_epoch = Trainer._log_epoch\n"
                     "def logged(self, *args, **kwargs):\n"
                     "    log_epoch(self, *args, **kwargs)\n"
                     "    while self.epoch == 2:\n"
                     "        time.sleep(1)\n"
                     "Trainer._log_epoch = logged\n"
                     "runpy.run_module('domgen.run', run_name='__main__', alter_sys=True)\n")


def _val_epochs(out: Path) -> int:
    files = list(out.glob("A-s0-*/results.jsonl"))
    return len({r["epoch"] for r in read_results(files[0].parent)}) if files else 0


def test_killed_run_resumes_to_exactly_the_uninterrupted_metrics(tiny_cache, tmp_path):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    full = subprocess.run(_cli(tiny_cache, tmp_path / "full"), env=env, cwd=REPO, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(_cli(tiny_cache, tmp_path / "killed", run=("-c", WAIT_TO_BE_KILLED)), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _val_epochs(tmp_path / "killed") < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = next((tmp_path / "killed").glob("A-s0-*"))
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "done").exists(), "the run finished before it was killed"
    kept = sorted(p.name for p in run_dir.iterdir() if p.name != "running.json")  # the dead owner's lock
    again = subprocess.run(_cli(tiny_cache, tmp_path / "killed"), env=env, cwd=REPO, capture_output=True, text=True)
    assert f"took over {run_dir} from pid {proc.pid} on " in again.stdout  # the killed owner's lock
    assert again.returncode == 2 and "holds an unfinished run (validated up to epoch" in again.stderr  # not deleted
    assert again.stderr.rstrip().splitlines()[-2].strip().endswith("--resume")  # the command to type
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(kept + ["takeovers.jsonl"])
    resumed = subprocess.run(_cli(tiny_cache, tmp_path / "killed", "--resume"), env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after epoch 1 " in resumed.stdout  # killed before epoch 2's checkpoint: epoch 2 is redone
    takeovers = [json.loads(line) for line in (run_dir / "takeovers.jsonl").read_text().splitlines()]
    assert [t["dead_owner"]["pid"] for t in takeovers] == [proc.pid]
    full_dir = next((tmp_path / "full").glob("A-s0-*"))
    assert final_test(run_dir) == final_test(full_dir)
    # validation and test recalls, and each epoch's training losses: identical, none duplicated or lost
    rows = lambda d: [(r["epoch"], r["split"], r["domain"], r.get("macro_recall", r.get("train_loss"))) for r in read_results(d)]
    assert rows(run_dir) == rows(full_dir)  # and no duplicated or lost lines


def test_ccsa_warm_starts_from_reused_parent(finished, smoke_cache):
    result, out = finished
    parent_mtime = (result.run_dir / "best.pt").stat().st_mtime
    child = run_train(smoke_cfg(smoke_cache, out, exp="F"))
    assert (result.run_dir / "best.pt").stat().st_mtime == parent_mtime  # A was reused, not retrained
    rows = [r for r in read_results(child.run_dir) if r["stage"] == "final"]
    assert rows and all(r["algorithm"] == "ccsa" and r["loss"] == "ce" and r["nsec"] == "1" for r in rows)
    # Model selection averages the validation recall over every domain in the training pool.
    assert sorted(child.summary["train_domains"]) == sorted(["HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON"])


def test_cached_and_reference_inputs_give_the_same_eval_batches(smoke_cache, tmp_path):
    from domgen.engine.inputs import Inputs
    from domgen.data.run_data import prepare_data

    cfg = smoke_cfg(smoke_cache, tmp_path)
    data = prepare_data(cfg.data)
    paths, pos = data.manifest["path"].tolist(), np.arange(0, len(data.manifest), 97)[:8]
    cached = Inputs(paths, data.labels, cfg.transform, cfg.data, "cpu")
    reference = Inputs(paths, data.labels, cfg.transform, replace(cfg.data, cached=False), "cpu")
    (xa, ya), (xb, yb) = next(cached.eval_batches(pos, 8)), next(reference.eval_batches(pos, 8))
    assert xa.shape == xb.shape == (8, 3, cfg.transform.size, cfg.transform.size)
    assert (ya == yb).all() and (ya.numpy() == data.labels[pos]).all()
    assert float((xa - xb).abs().max()) < 1e-4


def test_done_records_the_training_time_summed_over_sessions_without_the_lost_epoch(tiny_cache, tmp_path, monkeypatch):
    """``train_s`` in ``done``: each epoch's wall time (here a clock that ticks 1 s per reading, so an epoch
    is exactly 1 s), carried by last.pt across a kill. Killed while logging epoch 2, the checkpoint holds 1 s
    (epoch 1); the resumed session trains epochs 2 and 3: 3 s, not 4 (the killed epoch 2 is redone, not
    counted twice) and not 2 (the first session's second is kept)."""
    import itertools
    import threading

    import torch

    from domgen.engine import trainer
    from domgen.errors import RunInterrupted
    from conftest import interrupt_at

    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))
    extra = [f"data.synthetic_scale={TINY_SCALE}", "optim.epochs=3"]
    full = run_train(smoke_cfg(tiny_cache, tmp_path / "full", extra=extra))
    assert json.loads((full.run_dir / "done").read_text())["train_s"] == 3.0 == full.summary["train_s"]
    cfg = smoke_cfg(tiny_cache, tmp_path / "killed", extra=extra)
    writers = lambda: sum(type(t).__name__ == "_AsyncWriterThread" and t.is_alive() for t in threading.enumerate())
    before = writers()
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(2))
    # the interrupted run closed its TensorBoard writer: no thread left writing into a folder that may be deleted
    assert writers() == before
    assert torch.load(next((tmp_path / "killed").glob("A-s0-*")) / "last.pt", weights_only=True)["train_s"] == 1.0
    resumed = run_train(cfg, resume=True)
    assert json.loads((resumed.run_dir / "done").read_text())["train_s"] == 3.0
