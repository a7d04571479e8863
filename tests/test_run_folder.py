"""A run folder is owned by one process, nothing in it is deleted, Ctrl-C and corrupt checkpoints are
answered in one line: real processes for the lock, in-process runs for the folder states."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_SCALE, interrupt_at
from domgen.data.catalog import load_catalog
from domgen.engine.logging import read_results
from domgen.engine.trainer import Hooks
from domgen.errors import CheckpointError, RunFolderError, RunInterrupted, RunLocked
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train
from domgen.lock import LOCK, TAKEOVERS, RunLock
from domgen.results.collect import collect

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def _holder(run_dir: Path, seconds: float = 60) -> subprocess.Popen:
    """A real process that takes the lock on ``run_dir`` and holds it; prints 'held' once it has it."""
    code = textwrap.dedent(f"""
        import sys, time
        from domgen.lock import RunLock
        with RunLock({str(run_dir)!r}):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_owner_refused_naming_the_first_then_dead_owner_taken_over(tmp_path):
    run_dir = tmp_path / "A-s0-x"
    proc = _holder(run_dir)
    try:
        with pytest.raises(RunLocked, match=f"in use by pid {proc.pid} on ") as err:
            RunLock(run_dir).acquire()
        assert err.value.retry_flag == "--wait"
        assert json.loads((run_dir / LOCK).read_text())["pid"] == proc.pid  # the refusal left the claim alone
    finally:
        proc.kill()
        proc.wait()
    taken = []
    with RunLock(run_dir, on_takeover=taken.append):
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    assert [t["pid"] for t in taken] == [proc.pid]
    records = [json.loads(line) for line in (run_dir / TAKEOVERS).read_text().splitlines()]
    assert len(records) == 1 and records[0]["dead_owner"]["pid"] == proc.pid and records[0]["by"]["pid"] == os.getpid()
    assert not (run_dir / LOCK).exists()  # released


def test_wait_waits_for_the_owner_to_finish(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir, seconds=1.5)
    told = []
    t0 = time.time()
    with RunLock(run_dir, wait=True, poll_s=0.1, on_wait=told.append):
        waited = time.time() - t0
    proc.wait()
    assert proc.returncode == 0 and waited > 0.5  # it waited for the holder rather than taking over
    assert [c["pid"] for c in told] == [proc.pid]
    assert not (run_dir / TAKEOVERS).exists()


def test_same_process_may_nest_and_only_the_outer_release_frees(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "keep.txt").write_text("x")
    with RunLock(run_dir):
        with RunLock(run_dir):  # a sweep job, then the driver it calls
            pass
        assert (run_dir / LOCK).exists()
    assert not (run_dir / LOCK).exists() and (run_dir / "keep.txt").exists()


def test_eight_processes_racing_for_one_lock_exactly_one_wins(tmp_path):
    run_dir = tmp_path / "run"
    start = time.time() + 2.0  # every process tries at the same instant
    code = textwrap.dedent(f"""
        import time
        from domgen.errors import RunLocked
        from domgen.lock import RunLock
        time.sleep(max(0, {start} - time.time()))
        try:
            RunLock({str(run_dir)!r}).acquire()
            print("won", flush=True)
            time.sleep(2)
        except RunLocked:
            print("lost", flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO, env=ENV) for _ in range(8)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["lost"] * 7 + ["won"]


# ---- the run folder through the drivers ---------------------------------------------------------


def smoke_cfg(cache: Path, out: Path, exp: str = "A", epochs: int = 2):
    """A smoke run on 1/20 of the synthetic benchmark (``cache``: the tiny_cache fixture): what a run folder
    holds, moves and refuses does not depend on how much data trained it."""
    return resolve_config(exp, "smoke", 0, [f"data.cache_dir={cache}", f"data.synthetic_scale={TINY_SCALE}", "data.workers=0",
                                            "threads=1", f"out={out}", f"optim.epochs={epochs}"])


@pytest.fixture(scope="module")
def interrupted(tiny_cache, tmp_path_factory):
    """A 3-epoch run stopped by Ctrl-C while logging epoch 3: last.pt holds epoch 2, last.prev.pt epoch 1."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(RunInterrupted) as err:
        run_train(smoke_cfg(tiny_cache, out, epochs=3), interrupt_at(3))
    return err.value, out


def test_ctrl_c_names_the_checkpointed_epoch_and_an_unfinished_run_is_never_silently_redone(interrupted, tiny_cache):
    err, out = interrupted
    assert err.epoch == 2 and (err.run_dir / "last.pt").exists() and not (err.run_dir / LOCK).exists()
    assert torch.load(err.run_dir / "last.pt", weights_only=True)["epoch"] == 2
    assert torch.load(err.run_dir / "last.prev.pt", weights_only=True)["epoch"] == 1
    before = sorted(p.name for p in err.run_dir.iterdir())
    with pytest.raises(RunFolderError, match=r"unfinished run \(validated up to epoch 3\): continue it with --resume") as refused:
        run_train(smoke_cfg(tiny_cache, out, epochs=3))
    assert refused.value.retry_flag == "--resume"
    assert sorted(p.name for p in err.run_dir.iterdir()) == before  # nothing touched


def test_best_checkpoint_has_no_optimiser_and_files_follow_the_umask(interrupted):
    err, _ = interrupted
    best = torch.load(err.run_dir / "best.pt", weights_only=True)
    assert "model" in best and "optimizer" not in best and "scheduler" not in best
    last = torch.load(err.run_dir / "last.pt", weights_only=True)
    assert "optimizer" in last
    # the fixture ran under the test process's umask (022 here): 0644, not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    for name in ("best.pt", "last.pt", "config.yaml"):
        assert stat.S_IMODE((err.run_dir / name).stat().st_mode) == 0o666 & ~mask, name


def test_restart_moves_the_unfinished_run_aside_and_force_moves_a_finished_one(tiny_cache, tmp_path):
    cfg = smoke_cfg(tiny_cache, tmp_path, epochs=2)
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(2))
    lines = []
    done = run_train(cfg, Hooks(log=lines.append), restart=True)
    aside = sorted(tmp_path.glob("A-s0-*.abandoned-*"))
    assert len(aside) == 1 and (aside[0] / "last.pt").exists() and not (aside[0] / "done").exists()
    assert any("--restart: moved the unfinished run (validated up to epoch 2)" in line for line in lines)
    # a run's first line names the data
    assert lines[0] == f"data: {load_catalog(cfg.data).identity} (the synthetic benchmark: no --data-root or $DOMGEN_DATA given)"
    assert sorted({r["epoch"] for r in read_results(done.run_dir) if r["stage"] == "val"}) == [1, 2]
    run_train(cfg, Hooks(), force=True)
    aside = sorted(tmp_path.glob("A-s0-*.abandoned-*"))
    assert len(aside) == 2 and sum((a / "done").exists() for a in aside) == 1
    assert collect(tmp_path)["run"].nunique() == 1  # tables read only the live run


def test_corrupt_last_falls_back_to_the_previous_and_tensorboard_keeps_every_epoch_and_temporaries_go(tiny_cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = smoke_cfg(tiny_cache, tmp_path, epochs=3)
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(3))
    run_dir = next(tmp_path.glob("A-s0-*"))
    (run_dir / "last.pt").write_bytes(b"")  # emptied by a full disk or a careless copy
    (run_dir / ".last.pt.k3j9x2.tmp").write_bytes(b"\0" * 2**20)  # a checkpoint write the kill cut short
    (run_dir / ".running.json.q8w1.tmp").write_text("{}")  # the lock's: a launcher may be writing it
    lines = []
    result = run_train(cfg, Hooks(log=lines.append), resume=True)
    assert any(f"removed 1 temporary file(s) a killed write left in {run_dir} (1.0 MiB)" in l for l in lines)
    assert not (run_dir / ".last.pt.k3j9x2.tmp").exists() and (run_dir / ".running.json.q8w1.tmp").exists()
    assert any("last.pt is not a loadable checkpoint (the file is empty): resuming from last.prev.pt (epoch 1)" in l for l in lines)
    assert (run_dir / "last.pt.corrupt").exists() and not (run_dir / "last.prev.pt").exists()
    val = [r for r in read_results(result.run_dir) if r["stage"] == "val" and r["domain"] == "HAM"]
    assert [r["epoch"] for r in val] == [1, 2, 3]  # epochs 2 and 3 redone once, not duplicated
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/selection_score")] == [1, 2, 3]


def test_unloadable_checkpoint_is_one_line_without_unsafe_advice(tiny_cache, tmp_path):
    cfg = smoke_cfg(tiny_cache, tmp_path, epochs=2)
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(2))  # last.pt holds epoch 1; there is no previous one yet
    run_dir = next(tmp_path.glob("A-s0-*"))
    (run_dir / "last.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as err:
        run_train(cfg, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and "weights_only=False" not in msg
    assert "last.pt is not a loadable checkpoint (4096 bytes" in msg and "--restart" in msg



def test_any_damaged_bytes_are_a_checkpoint_error_never_a_traceback(tmp_path):
    """Random bytes reach different corners of the weights-only unpickler (IndexError, KeyError, struct
    and Unicode errors, not only UnpicklingError): every one is the one-line CheckpointError."""
    import numpy as np

    from domgen.engine.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    for seed in range(200):
        path.write_bytes(np.random.default_rng(seed).bytes(64 + seed * 16))
        with pytest.raises(CheckpointError, match=r"last\.pt is not a loadable checkpoint \(\d+ bytes"):
            load_checkpoint(path)
