"""Sweeps: experiment parsing, planning with warm-start parents, states from run-folder markers, the
GPU-hour model by hand, a dry run, a real local sweep through submitit's LocalExecutor (stand-in
training, then real training in the slow test) and Slurm submission against a fake ``sbatch``."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conftest import TINY_SCALE
from domgen.runs.train import parent_config, run_dir_for
from domgen.sweep.launch import SlurmOptions, launch, run_job
from domgen.sweep.plan import DataSize, algorithm_variants, estimate_gpu_hours, parse_exps, plan_sweep
from domgen.sweep.report import format_plan, format_status, other_runs_line, status_counts, sweep_status
from domgen.sweep.status import FAILED, RUNNING, STALE_S, read_state

IDENTITY = "synthetic:test"
SIZES = DataSize(pool=1000, val=300, test=600)


def make_plan(exps, seeds, tmp_path, overrides=()):
    return plan_sweep(exps, seeds, "smoke", list(overrides), tmp_path / "runs", identity=IDENTITY, sizes=lambda d: SIZES)


def short(plan) -> dict[str, str]:
    """'A-s0' -> state, for readable assertions."""
    return {f"{j.cfg.exp}-s{j.cfg.seed}": j.state for j in plan.refresh().jobs}


def names(plan) -> dict[str, str]:
    return {f"{j.cfg.exp}-s{j.cfg.seed}": j.name for j in plan.jobs}


# ---- parsing and planning ------------------------------------------------------------------------
def test_parse_exps_ranges_lists_and_errors():
    assert len(parse_exps("A-V")) == 22
    assert parse_exps("F-K,U") == ["F", "G", "H", "I", "J", "K", "U"]
    assert parse_exps("R,A,K") == ["A", "K", "R"]  # registry order
    assert parse_exps("A-C,B") == ["A", "B", "C"]  # deduplicated
    with pytest.raises(ValueError, match="backwards"):
        parse_exps("K-F")
    with pytest.raises(KeyError, match="unknown experiment 'Z'"):
        parse_exps("A,Z")
    with pytest.raises(ValueError):
        parse_exps(" , ")


def test_plan_adds_parents_with_the_hash_run_train_reuses(tmp_path):
    plan = make_plan("F", 1, tmp_path)
    a, f = plan.jobs
    assert (a.cfg.exp, a.requested, a.depth, f.cfg.exp, f.requested, f.depth) == ("A", False, 0, "F", True, 1)
    assert f.parents == (a.name,)
    assert a.run_dir == run_dir_for(parent_config(f.cfg), IDENTITY)  # the folder run_train would reuse
    assert f.run_dir == run_dir_for(f.cfg, IDENTITY) and f.run_dir.parent == tmp_path / "runs"

    u_plan = make_plan("U", [3], tmp_path)  # U <- K <- A, each one wave later
    assert [(j.cfg.exp, j.cfg.seed, j.depth) for j in u_plan.jobs] == [("A", 3, 0), ("K", 3, 1), ("U", 3, 2)]
    assert u_plan.jobs[2].parents == (u_plan.jobs[1].name,) and u_plan.jobs[1].parents == (u_plan.jobs[0].name,)


def test_plan_deduplicates_by_run_folder(tmp_path):
    plan = make_plan("A,F,K,U", 2, tmp_path)
    # 4 experiments x 2 seeds; A (parent of F and K) and K (parent of U) are the requested runs themselves
    assert len(plan.jobs) == 8 and all(j.requested for j in plan.jobs)
    assert [j.cfg.exp for j in plan.jobs] == ["A", "A", "F", "F", "K", "K", "U", "U"]
    # an override the parent does not inherit gives the requested A another hash: two A runs per seed
    lr = make_plan("A,F", [0], tmp_path, overrides=["optim.lr=0.5"])
    assert sorted((j.cfg.exp, j.requested, j.cfg.optim.lr) for j in lr.jobs) == [
        ("A", False, 1e-3), ("A", True, 0.5), ("F", True, 0.5)
    ]


def test_algorithms_and_random_trials_plan_one_hashed_run_each_sharing_the_parent(tmp_path):
    variants = algorithm_variants("erm,ccsa", "random", n_hparams=3)
    # trial 0 = the defaults, trials 1 and 2 marked (the regime's draws come at planning): erm declares
    # nothing to search, so its trials differ only in the mark, and under ft they plan one run (below)
    assert variants[:4] == [("algorithm.name=erm",), ("algorithm.name=erm", "hparams.trial=1"),
                            ("algorithm.name=erm", "hparams.trial=2"), ("algorithm.name=ccsa",)]
    assert len(variants) == 6 and variants[5][-1] == "hparams.trial=2"
    assert algorithm_variants("erm,ccsa", "random", n_hparams=3) == variants  # the same command plans the same trials
    plan = plan_sweep("R", 2, "smoke", [], tmp_path / "runs", identity=IDENTITY, sizes=lambda d: SIZES, variants=variants)
    requested = [j for j in plan.jobs if j.requested]
    assert len(requested) == 2 * 4 and len({j.name for j in requested}) == 8  # each trial its own folder
    assert sorted(j.cfg.exp for j in plan.jobs if not j.requested) == ["A", "A"]  # one parent per seed, shared
    drawn = [j.cfg.algorithm for j in requested if j.cfg.seed == 0 and j.cfg.algorithm.name == "ccsa"]
    margins = sorted(a.margin for a in drawn)
    assert 50.0 in margins and all(10 <= m <= 100 for m in margins) and len(set(margins)) == 3  # 10^U(1, 2)
    assert all(0.1 <= a.p_same <= 0.5 for a in drawn)
    assert algorithm_variants(None) == [()]
    with pytest.raises(ValueError, match="--algorithms"):
        algorithm_variants(None, "random")
    with pytest.raises(KeyError, match="unknown algorithm 'corral'"):
        algorithm_variants("erm,corral")


def test_gpu_hours_by_hand():
    from domgen.runs.registry import resolve_config

    # A, paper: 135 epochs x (1000 train + 300 val / 3) + (300 + 600) / 3 = 148,800 images at 2000/s
    assert estimate_gpu_hours(resolve_config("A", "paper"), SIZES) == pytest.approx(148_800 / 2000 / 3600)
    # B is resnet50: same images at 800/s
    assert estimate_gpu_hours(resolve_config("B", "paper"), SIZES) == pytest.approx(148_800 / 800 / 3600)
    # K (CCSA): 20 epochs x (2 x 1000 pair images + 100) + 300 = 42,300
    assert estimate_gpu_hours(resolve_config("K", "paper"), SIZES) == pytest.approx(42_300 / 2000 / 3600)
    # U (pruning): (20 fine-tune + 1 selection) x 2100 + 300 = 44,400
    assert estimate_gpu_hours(resolve_config("U", "paper"), SIZES) == pytest.approx(44_400 / 2000 / 3600)
    # smoke images are 28 px: (224 / 28)^2 = 64x faster; 2 epochs x 1100 + 300 = 2,500
    assert estimate_gpu_hours(resolve_config("A", "smoke"), SIZES) == pytest.approx(2_500 / (2000 * 64) / 3600)
    # only the selection domains' 150 validation images after each epoch: 135 x (1000 + 50) + 300 = 142,050
    fewer = DataSize(pool=1000, val=300, test=600, val_epoch=150)
    assert estimate_gpu_hours(resolve_config("A", "paper"), fewer) == pytest.approx(142_050 / 2000 / 3600)
    # every domain's validation and test after each epoch: 135 x (1000 + 300) + 300 = 175,800
    every = resolve_config("A", "paper", 0, ["epoch_eval=all"])
    assert estimate_gpu_hours(every, fewer) == pytest.approx(175_800 / 2000 / 3600)
    # auto: all for a run that holds a domain out (R: warm stage, 20 epochs x (1000 x 2 + 900 / 3) + 300)
    assert estimate_gpu_hours(resolve_config("R", "paper"), fewer) == pytest.approx(46_300 / 2000 / 3600)


# ---- states from disk ----------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_states_read_from_markers(tmp_path):
    plan = make_plan("A-E", [0, 1], tmp_path)
    d = {k: plan.job(v).run_dir for k, v in names(plan).items()}
    host, now = socket.gethostname(), time.time()
    _write(d["A-s0"] / "done", {"best_epoch": 1})
    _write(d["A-s1"] / FAILED, {"kind": "error", "error": "ValueError: boom"})
    _write(d["B-s0"] / RUNNING, {"host": host, "pid": os.getpid(), "heartbeat": now})
    _write(d["B-s1"] / RUNNING, {"host": host, "pid": _dead_pid()})  # its process is gone
    _write(d["C-s0"] / RUNNING, {"host": "elsewhere", "pid": 1, "heartbeat": now - 60})  # fresh elsewhere
    _write(d["C-s1"] / RUNNING, {"host": "elsewhere", "pid": 1, "heartbeat": now - STALE_S - 1})  # stale
    _write(d["D-s0"] / FAILED, {"kind": "interrupted", "error": "KeyboardInterrupt: "})
    _write(d["D-s1"] / RUNNING, {"slurm_job_id": "77_1", "host": None})  # queued; no sacct here to ask
    assert short(plan) == {
        "A-s0": "done", "A-s1": "failed", "B-s0": "running", "B-s1": "interrupted", "C-s0": "running",
        "C-s1": "interrupted", "D-s0": "interrupted", "D-s1": "running", "E-s0": "pending", "E-s1": "pending",
    }
    assert read_state(d["A-s1"])[1]["error"] == "ValueError: boom"


def test_status_counts_and_blocked_children(tmp_path):
    plan = make_plan("A,F", [0, 1], tmp_path)
    d = {k: plan.job(v).run_dir for k, v in names(plan).items()}
    _write(d["A-s0"] / "done", {})
    _write(d["A-s1"] / FAILED, {"kind": "error", "error": "RuntimeError: nan loss", "stderr": "/logs/1_0_log.err"})
    jobs = sweep_status(plan)
    assert dict(zip(jobs["run"].str[:4], jobs["state"])) == {"A-s0": "done", "A-s1": "failed", "F-s0": "pending",
                                                             "F-s1": "blocked"}
    counts = status_counts(jobs)
    assert counts.loc["A", ["done", "failed", "total"]].tolist() == [1, 1, 2]
    assert counts.loc["F", ["pending", "blocked", "total"]].tolist() == [1, 1, 2]
    assert counts.loc["all", "total"] == 4
    text = format_status(jobs)
    assert "RuntimeError: nan loss" in text and str(d["A-s1"] / FAILED) in text and "/logs/1_0_log.err" in text
    assert "1/4 runs done\n" in text  # a done marker without train_s (written before it was kept): no time said
    _write(d["A-s0"] / "done", {"train_s": 90.0})
    _write(d["A-s1"] / "done", {"train_s": 270.0})
    assert "2/4 runs done; training took 0.1 h in all, a median 3.0 min per run\n" in format_status(sweep_status(plan))
    _write(d["A-s1"] / "done", {})
    jobs = sweep_status(plan)
    assert jobs.set_index("run")["train_s"].dropna().tolist() == [90.0]
    assert "2/4 runs done; training took 0.0 h in all, a median 1.5 min per run (1 of the 2 recorded it)" in format_status(jobs)


def test_status_of_another_plan_says_the_folder_holds_other_runs(tmp_path):
    plan, out = make_plan("A,F", [0, 1], tmp_path), tmp_path / "runs"
    assert other_runs_line(sweep_status(plan), out) is None  # no other runs: nothing to point at
    for name in ("O-s0-aaaaaaaaaa", "O-s1-bbbbbbbbbb"):  # a leave-one-out sweep's runs, planned with other options
        _write(out / name / "config.yaml", {})
    line = other_runs_line(sweep_status(plan), out)
    assert line.startswith(f"None of these runs has started, but {out} holds 2 other run folder(s)")
    _write(plan.jobs[0].run_dir / "done", {})
    assert other_runs_line(sweep_status(plan), out) is None  # this plan has begun: its counts say enough


def test_dry_run_submits_nothing_and_skips_unneeded_parents(tmp_path):
    plan = make_plan("A,F", [0, 1], tmp_path)
    d = {k: plan.job(v).run_dir for k, v in names(plan).items()}
    _write(d["F-s0"] / "done", {})  # F-s0 done: its parent A-s0 is not requested, so nothing needs it
    plan = make_plan("F", [0, 1], tmp_path)
    report = launch(plan, dry_run=True)
    assert report.dry_run and report.submitted == {}
    assert sorted(report.planned) == sorted([names(plan)["A-s1"], names(plan)["F-s1"]])
    assert "parent not needed" in report.skipped[names(plan)["A-s0"]]
    # smoke (28 px, 64x the 224 px rate): A 2 x 1100 + 300 = 2,500 images, F 2 x 2100 + 300 = 4,500; x 2 seeds
    assert plan.gpu_hours == pytest.approx(2 * (2_500 + 4_500) / (2000 * 64) / 3600)
    assert "estimated GPU-hours" in format_plan(plan) and names(plan)["F-s1"] in format_plan(plan)
    assert not (tmp_path / "runs" / ".submitit").exists()
    assert not any(p.name == RUNNING for p in (tmp_path / "runs").rglob("*"))


# ---- a real local sweep, with a stand-in for training --------------------------------------------
def fake_train(cfg, run_dir: Path) -> dict:
    """Stand-in for train_run: logs the call, checks the parent finished first, fails on request."""
    out = Path(cfg.out)
    key = f"{cfg.exp}-s{cfg.seed}"
    with open(out / "calls.txt", "a") as f:
        f.write(key + "\n")
    if cfg.warm_start and not list(out.glob(f"{cfg.warm_start}-s{cfg.seed}-*/done")):
        raise RuntimeError(f"{key} started before its parent was done")
    control = json.loads((out / "control.json").read_text())
    if key in control.get("kill", []):  # dies without a Python exception (like the OOM killer)
        os.kill(os.getpid(), 9)
    if key in control.get("fail", []):
        raise RuntimeError(f"planned failure of {key}")
    (Path(run_dir) / "done").write_text(json.dumps({"exp": cfg.exp}))
    return {"exp": cfg.exp}


# pickled by value, so the job processes need not import this test module (and torch with it)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def calls(out: Path) -> list[str]:
    return sorted((out / "calls.txt").read_text().split()) if (out / "calls.txt").exists() else []


def test_local_sweep_resumes_records_failures_and_retries(tmp_path):
    out = tmp_path / "runs"
    plan = make_plan("A,F", [0, 1], tmp_path)
    n = names(plan)
    out.mkdir()
    (out / "control.json").write_text(json.dumps({"fail": ["A-s1"], "kill": ["F-s0"]}))

    report = launch(plan, max_parallel=2, job_fn=fake_train, poll_s=0.2)
    assert short(plan) == {"A-s0": "done", "A-s1": "failed", "F-s0": "failed", "F-s1": "pending"}
    assert report.outcomes == {n["A-s0"]: "done", n["A-s1"]: "failed", n["F-s0"]: "failed"}
    assert report.blocked == {n["F-s1"]: f"parent {n['A-s1']} failed"}
    assert calls(out) == ["A-s0", "A-s1", "F-s0"]
    record = json.loads((plan.job(n["A-s1"]).run_dir / FAILED).read_text())
    assert record["kind"] == "error" and record["error"] == "RuntimeError: planned failure of A-s1"
    assert "Traceback" in record["traceback"] and "fake_train" in record["traceback"]
    assert Path(record["stderr"]).parent.parent == out / ".submitit" and Path(record["stdout"]).exists()
    killed = json.loads((plan.job(n["F-s0"]).run_dir / FAILED).read_text())  # written by the launcher
    assert killed["error"].startswith("the job ended without a result") and killed["job_id"] == report.submitted[n["F-s0"]]
    assert sweep_status(plan).set_index("run").loc[n["F-s1"], "state"] == "blocked"
    assert not any(p.name == RUNNING for p in out.rglob("*"))  # every claim released

    again = launch(plan, max_parallel=2, job_fn=fake_train, poll_s=0.2)  # nothing new to do
    assert again.submitted == {} and calls(out) == ["A-s0", "A-s1", "F-s0"]
    assert again.skipped[n["A-s1"]].startswith("failed") and n["F-s1"] in again.blocked

    (out / "control.json").write_text("{}")
    retry = launch(plan, retry_failed=True, max_parallel=2, job_fn=fake_train, poll_s=0.2)
    assert sorted(retry.submitted) == sorted([n["A-s1"], n["F-s0"], n["F-s1"]])
    assert calls(out) == ["A-s0", "A-s1", "A-s1", "F-s0", "F-s0", "F-s1"]  # the failed runs and the blocked child
    assert set(short(plan).values()) == {"done"} and not (plan.job(n["A-s1"]).run_dir / FAILED).exists()


def test_run_job_records_failure_and_releases_claim(tmp_path):
    plan = make_plan("A", [0], tmp_path)
    job = plan.jobs[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "control.json").write_text(json.dumps({"fail": ["A-s0"]}))
    from domgen.config import to_dict

    with pytest.raises(RuntimeError, match="planned failure"):
        run_job(to_dict(job.cfg), str(job.run_dir), fake_train)  # in process: no submitit
    record = json.loads((job.run_dir / FAILED).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not (job.run_dir / RUNNING).exists() and read_state(job.run_dir)[0] == "failed"


# ---- Slurm, against a fake sbatch ----------------------------------------------------------------
FAKE_SBATCH = """#!/bin/sh
n=$(($(cat "$REC/count" 2>/dev/null || echo 0) + 1))
echo $n > "$REC/count"
cp "$1" "$REC/$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_waves_arrays_and_afterok(tmp_path, monkeypatch):
    bin_dir, rec = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir(), rec.mkdir()
    for tool, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\n")):
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("REC", str(rec))
    plan = make_plan("F,U", [0, 1], tmp_path)  # adds A and K per seed
    n = names(plan)
    opts = SlurmOptions(partition="gpu", time_min=600, gpus=1, cpus=8, mem_gb=32, extra={"account": "lab"})
    report = launch(plan, launcher="slurm", slurm=opts)
    # wave 0: both A in one array (job 1); wave 1: F and K of one seed wait for that seed's A (jobs 2, 3);
    # wave 2: each U waits for its K (jobs 4, 5, single jobs)
    assert report.submitted == {
        n["A-s0"]: "1_0", n["A-s1"]: "1_1", n["F-s0"]: "2_0", n["K-s0"]: "2_1", n["F-s1"]: "3_0",
        n["K-s1"]: "3_1", n["U-s0"]: "4", n["U-s1"]: "5",
    }
    scripts = {int(p.stem): p.read_text() for p in rec.glob("*.sh")}
    deps = {k: [l.split("=", 1)[1] for l in s.splitlines() if l.startswith("#SBATCH --dependency")] for k, s in scripts.items()}
    assert deps == {1: [], 2: ["afterok:1_0"], 3: ["afterok:1_1"], 4: ["afterok:2_1"], 5: ["afterok:3_1"]}
    assert "#SBATCH --array=0-1%2" in scripts[1] and "#SBATCH --kill-on-invalid-dep=yes" in scripts[4]
    for line in ("--partition=gpu", "--time=600", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--account=lab"):
        assert f"#SBATCH {line}" in scripts[2]
    assert set(short(plan).values()) == {"running"}  # queued: claimed by their Slurm job ids
    again = launch(plan, launcher="slurm", slurm=opts)
    assert again.submitted == {} and (rec / "count").read_text().strip() == "5"

    # V also starts from K: K is queued (job 2_1 / 3_1), so V waits for it by job id
    more = make_plan("F,U,V", [0, 1], tmp_path)
    v = launch(more, launcher="slurm", slurm=opts)
    assert v.submitted == {names(more)["V-s0"]: "6", names(more)["V-s1"]: "7"}
    assert "#SBATCH --dependency=afterok:2_1" in (rec / "6.sh").read_text()

    # sacct now says how some jobs ended; ids it does not list stay queued
    (bin_dir / "sacct").write_text(
        "#!/bin/sh\nprintf 'JobID|State|NodeList\\n1_0|RUNNING|n1\\n1_1|OUT_OF_MEMORY|n2\\n2_0|CANCELLED by 0|n3\\n'\n"
    )
    (bin_dir / "sacct").chmod(stat.S_IRWXU)
    states = short(plan)
    assert (states["A-s0"], states["A-s1"], states["F-s0"], states["K-s0"]) == ("running", "failed", "interrupted", "running")
    assert "OUT_OF_MEMORY" in plan.job(n["A-s1"]).record["error"]
    # a relaunch resubmits only the cancelled F-s0, after its still-running parent A-s0 (job 1_0)
    third = launch(plan, launcher="slurm", slurm=opts)
    assert third.submitted == {n["F-s0"]: "8"} and "afterok:1_0" in (rec / "8.sh").read_text()
    assert n["A-s1"] in third.skipped


# ---- end to end: real training through run_job ---------------------------------------------------
@pytest.mark.slow
def test_local_sweep_trains_for_real(tiny_cache, tmp_path, monkeypatch):
    from domgen.engine.logging import read_results

    monkeypatch.setenv("DOMGEN_CACHE", str(tiny_cache))  # 1/20 of the synthetic benchmark, generated once per session
    monkeypatch.delenv("DOMGEN_DATA", raising=False)
    sets = [f"data.synthetic_scale={TINY_SCALE}", "data.workers=0", "optim.epochs=1"]
    plan = plan_sweep("A,D", [0, 1], "smoke", sets, tmp_path / "runs")  # identity from the real catalog
    assert plan.identity.startswith("synthetic:") and all(j.gpu_hours > 0 for j in plan.jobs)
    report = launch(plan, max_parallel=2, poll_s=0.5)
    assert set(report.outcomes.values()) == {"done"} and len(report.outcomes) == 4
    for job in plan.jobs:
        rows = read_results(job.run_dir)
        final = [r for r in rows if r["stage"] == "final" and r["split"] == "test"]
        assert {r["exp"] for r in rows} == {job.cfg.exp} and {r["seed"] for r in rows} == {job.cfg.seed}
        assert len(final) == 7 and rows[0]["config_hash"] == job.name.rsplit("-", 1)[1]
        assert not (job.run_dir / RUNNING).exists() and not (job.run_dir / FAILED).exists()
    assert launch(plan, max_parallel=2).submitted == {}
    # table and compare read these results: per-domain means over both seeds and seed-matched differences.
    from domgen.results.collect import collect
    from domgen.results.compare import compare
    from domgen.results.tables import table2_frame

    df = collect(tmp_path / "runs")
    ham = {(j.cfg.exp, j.cfg.seed): next(r["macro_recall"] for r in read_results(j.run_dir)
                                         if r["stage"] == "final" and r["split"] == "test" and r["domain"] == "HAM")
           for j in plan.jobs}
    frame = table2_frame(df)
    for exp in ("A", "D"):
        assert frame.loc[exp, "seeds"] == 2
        assert frame.loc[exp, "HAM_mean"] == pytest.approx((ham[exp, 0] + ham[exp, 1]) / 2)
    diff = compare(df, "D", "A")
    assert diff.loc["HAM", "n"] == 2
    assert diff.loc["HAM", "diff"] == pytest.approx(((ham["D", 0] - ham["A", 0]) + (ham["D", 1] - ham["A", 1])) / 2)


def preempted_train(cfg, run_dir: Path) -> dict:
    raise SystemExit(-1)  # what submitit does after requeueing a timed-out or preempted job


def test_slurm_job_interrupted_keeps_a_claim_for_its_requeue(tmp_path, monkeypatch):
    plan = make_plan("A", [0], tmp_path)
    job = plan.jobs[0]
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "sub" / "%j"))
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    from domgen.config import to_dict

    with pytest.raises(SystemExit):
        run_job(to_dict(job.cfg), str(job.run_dir), preempted_train)
    assert json.loads((job.run_dir / FAILED).read_text())["kind"] == "interrupted"
    claim = json.loads((job.run_dir / RUNNING).read_text())
    assert claim["slurm_job_id"] == "42" and "pid" not in claim
    assert read_state(job.run_dir)[0] == "running"  # requeued, as far as anyone can tell without sacct
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nprintf 'JobID|State|NodeList\\n42|CANCELLED by 7|n1\\n'\n")
    (bin_dir / "sacct").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert read_state(job.run_dir)[0] == "interrupted"  # Slurm says it was cancelled, not requeued


def test_a_random_search_draws_the_regimes_hyperparameters_too(tmp_path):
    """Trial 0 is the regime's defaults; trial i draws each searched field of its Hparams, in field order, from
    one generator seeded by (regime, i, "hparams"), the algorithms' rule, whatever the number of trials."""
    import dataclasses

    import numpy as np

    from domgen.regimes import REGIMES
    from domgen.seeds import derive_seed
    from domgen.studies import load_study
    from domgen.sweep.plan import resolve_variant

    study = load_study("yoon2019")

    def trials(n: int) -> list:
        return [resolve_variant("A", "smoke", 0, ["regime.name=l2sp"], v, study).regime
                for v in algorithm_variants("erm", "random", n_hparams=n)]

    regimes = trials(3)
    hp = REGIMES.get("l2sp").Hparams
    searched = [f for f in dataclasses.fields(hp) if f.metadata.get("search")]
    assert [f.name for f in searched] == ["alpha", "beta"]
    assert regimes[0] == hp()  # trial 0: the defaults
    for trial, got in enumerate(regimes[1:], start=1):
        rng = np.random.default_rng(derive_seed("l2sp", trial, "hparams", bits=32))
        expected = {f.name: f.metadata["search"](rng) for f in searched}
        assert {f.name: getattr(got, f.name) for f in searched} == pytest.approx(expected, rel=1e-12)
    assert regimes[1] != regimes[2] and len({(r.alpha, r.beta) for r in regimes}) == 3
    assert trials(2) == regimes[:2]  # trial 1 is the same in a shorter search
    plan = plan_sweep("A", [0], "smoke", ["regime.name=l2sp"], tmp_path / "runs", identity=IDENTITY,
                      sizes=lambda d: SIZES, variants=algorithm_variants("erm", "random", n_hparams=3))
    assert sorted(j.cfg.regime.alpha for j in plan.jobs) == sorted(r.alpha for r in regimes)  # three runs
