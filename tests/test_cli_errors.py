"""The command line's one error boundary: each expected failure is one line saying what, which file, why
and what to do (exit 2), Ctrl-C says how to resume (exit 130), a bug shows its traceback and asks for a
report (exit 1); a second `train` on a live run folder refuses naming the owner, or waits with --wait."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_SCALE
from domgen import cli_common as cc
from domgen import run
from domgen.engine.logging import read_results
from domgen.lock import LOCK

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def train_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "smoke", "--out", str(out), "--cache-dir", str(cache), "--workers", "0", "--set", "threads=1", *extra]


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("error", "interrupted"))]


@pytest.mark.parametrize("override, says", [
    ("optim.epochs=0", "optim.epochs=0 (must be > 0)"),
    ("optim.batch_size=0", "optim.batch_size=0 (must be > 0)"),
    ("optim.lr=-1", "optim.lr=-1.0 (must be > 0)"),
    ("algorithm.p_same=1.5", "algorithm.p_same=1.5 (a probability: must be in [0, 1])"),
    ("loss.name=triplet", "loss.name='triplet' (a registered classification loss: ce"),
    ("algorithm.name=triplet", "unknown algorithm 'triplet' (known: ccsa, cdann, coral, dann, erm, erm_pairs,"),
    ("algorithm.margn=5", "algorithm 'ccsa' has no hyperparameter 'margn'; its keys: alpha, exclude_own_domain, margin,"),
    ("algorithm.sampler=uniform", "algorithm.sampler='uniform' (draws 1 image(s) per sample; ccsa needs 2)"),
])
def test_bad_config_values_fail_in_one_line_before_any_folder_exists(smoke_cache, tmp_path, capsys, override, says):
    out = tmp_path / "runs"
    assert run.main(train_args(smoke_cache, out, "--exp", "K", "--set", override)) == 2
    lines = errors(capsys.readouterr().err)
    assert len(lines) == 1 and says in lines[0]
    assert not out.exists()


def test_out_that_is_a_file_is_one_line_naming_it(smoke_cache, tmp_path, capsys):
    out = tmp_path / "runs"
    out.write_text("not a folder")
    assert run.main(train_args(smoke_cache, out)) == 2
    lines = errors(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: Not a directory: " + str(out))
    assert "choose another --out" in lines[0]


@pytest.mark.parametrize("command", [["table"], ["compare", "coral", "erm"], ["table", "--by", "algorithm"]])
def test_results_commands_name_a_missing_runs_folder(tmp_path, capsys, command):
    missing = tmp_path / "rnus"  # a typo: before, "no finished runs of experiment 'coral'"
    assert run.main([*command, "--runs", str(missing)]) == 2
    assert errors(capsys.readouterr().err) == [f"error: --runs {missing}: no such folder (the runs are where "
                                               "train/loo/sweep wrote them: --out, default runs)"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(smoke_cache, tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    out.chmod(0o555)
    assert run.main(train_args(smoke_cache, out)) == 2
    assert errors(capsys.readouterr().err)[0].startswith("error: Permission denied: " + str(out))


@pytest.mark.parametrize("err, line", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.csv"),
     "error: No such file or directory: /data/x.csv (check the path (and --data-root / DOMGEN_DATA))"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/runs"),
     "error: Read-only file system: /ro/runs (the file system is read-only: choose another --out / --cache-dir)"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/runs"),
     "error: Permission denied: /srv/runs (check its permissions, or choose another --out / --cache-dir)"),
    (KeyError("unknown experiment 'Z'"), "error: unknown experiment 'Z'"),
])
def test_os_errors_say_what_and_where_not_errno(err, line):
    assert cc.error_message(err, ["train"]) == (line, 2)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys):
    def broken(args):
        return 1 / 0

    parser = run.parser
    try:
        run.parser = lambda: _Stub(broken)
        assert run.main(["list"]) == 1
    finally:
        run.parser = parser
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "This is a bug in domgen" in err


class _Stub:
    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        return type("Args", (), {"func": staticmethod(self.func)})()


def test_empty_and_ragged_metadata_name_file_and_line(tmp_path, capsys):
    ham = tmp_path / "data" / "HAM10000"
    ham.mkdir(parents=True)
    meta = ham / "HAM10000_metadata.csv"
    base = ["summary", "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "s")]
    meta.write_text("")
    assert run.main(base) == 2
    assert errors(capsys.readouterr().err) == [f"error: HAM10000: {meta} is empty (no header line). Expected layout: "
                                               + run.__dict__.get("_", "") + _ham_layout()]
    meta.write_text("lesion_id,image_id,dx,dx_type,age,sex,localization\nL1,I1,nv,histo,40,male,back\nL2,I2,nv,histo,40,male,back,extra\n")
    assert run.main(base) == 2
    line = errors(capsys.readouterr().err)[0]
    assert line.startswith(f"error: HAM10000: {meta} line 3: 8 fields where the header has 7; fix or remove that row")


def _ham_layout() -> str:
    from domgen.data.sources.ham10000 import Ham10000

    return Ham10000.layout


# ---- real processes -----------------------------------------------------------------------------
def _popen(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "domgen.run", *train_args(cache, out, *extra)]
    # SIGINT back to its default in the child: a suite started in the background by a non-interactive shell
    # (`pytest &`, nohup) ignores SIGINT, the child inherits that, and Python then installs no Ctrl-C handler
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert predicate(), "the first process ended before the condition held"


# The first `train`, holding its run folder's lock, waits for a gate file before it trains: whatever the load on
# the machine, it cannot finish before the second process is refused and the third is waiting (a margin of
# epochs could run out; a gate cannot). Same process, same pid: `python -c` runs the CLI's main in it.
GATED = ("import sys, time, pathlib, runpy, domgen.runs.train as t\n"
         "gate, finish = pathlib.Path(sys.argv.pop(1)), t.finish_run\n"
         "def gated(trainer, resume):\n"
         "    while not gate.exists():\n"
         "        time.sleep(0.05)\n"
         "    return finish(trainer, resume)\n"
         "t.finish_run = gated\n"
         "runpy.run_module('domgen.run', run_name='__main__', alter_sys=True)\n")


@pytest.mark.slow
def test_second_train_on_a_live_folder_refuses_naming_the_owner_and_wait_waits(tiny_cache, tmp_path):
    out, gate = tmp_path / "runs", tmp_path / "gate"
    args = lambda *extra: train_args(tiny_cache, out, "--scale", str(TINY_SCALE), "--set", "optim.epochs=1", *extra)
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe nobody reads while it runs
    first = subprocess.Popen([sys.executable, "-c", GATED, str(gate), *args()], cwd=REPO, env=ENV, stdout=log,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(out.glob(f"A-s0-*/{LOCK}")), first)
        # the second (refused) and the third (--wait) start together: neither's start waits on the other's
        second, third = (subprocess.Popen([sys.executable, "-m", "domgen.run", *args(*extra)], cwd=REPO, env=ENV,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                         for extra in ((), ("--wait",)))
        _, second_err = second.communicate(timeout=300)
        run_dir = next(out.glob("A-s0-*"))
        assert second.returncode == 2
        line = errors(second_err)[0]
        assert line.startswith(f"error: {run_dir} is in use by pid {first.pid} on {socket.gethostname()}") and "--wait" in line
        said = []
        for said_line in third.stdout:  # until it says it waits (or ends without saying so)
            said.append(said_line)
            if f"waiting for pid {first.pid}" in said_line:
                break
        assert first.poll() is None, "the first process ended before the third one waited"
    finally:
        gate.touch()
    third_out, third_err = third.communicate(timeout=300)
    first.wait(timeout=300)
    log.close()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert third.returncode == 0, third_err[-2000:]
    assert f"waiting for pid {first.pid}" in "".join(said) and "already done" in third_out
    final = [r for r in read_results(run_dir) if r["stage"] == "final"]
    assert len(final) == 14 and len({(r["split"], r["domain"]) for r in final}) == 14  # written once, by the first


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command_and_exits_130(smoke_cache, tmp_path):
    out = tmp_path / "runs"
    proc = _popen(smoke_cache, out, "--set", "optim.epochs=40")
    _wait_for(lambda: any(out.glob("A-s0-*/last.pt")), proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    run_dir = next(out.glob("A-s0-*"))
    saved = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    assert proc.returncode == 130
    assert errors(stderr) == [f"interrupted after epoch {saved}: resume with python -m domgen.run "
                              + " ".join(train_args(smoke_cache, out, "--set", "optim.epochs=40")) + " --resume"]
    assert not (run_dir / LOCK).exists()


def test_seeds_are_a_count_a_list_a_range_or_one_seed():
    from domgen.run import parse_seeds

    assert parse_seeds("3") == 3 and parse_seeds("0,3,7") == [0, 3, 7] and parse_seeds("2-4") == [2, 3, 4]
    assert parse_seeds("2,") == [2] and parse_seeds("0,2-3,2") == [0, 2, 3]
    with pytest.raises(ValueError, match="one seed"):
        parse_seeds("two")
