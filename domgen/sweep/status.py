"""What each run of a sweep is doing, read from files in its run folder; status tables for the CLI.

Besides the trainer's ``done`` marker, a sweep leaves two small JSON files in a run folder:

- ``running.json``: a claim. The launcher writes one when it submits (the Slurm job id, or the local
  job's controller pid); the job rewrites it when it starts (host, pid) and refreshes ``heartbeat``
  every minute. It is removed when the job ends, however it ends.
- ``failed.json``: the failure record, written by the job (or by the local launcher when the job died
  without writing one): ``kind`` ("error" for an exception, "interrupted" for a kill, a timeout or a
  preemption), the error line, the traceback, host/pid/job id and the paths of the job's logs.

A run is then ``done`` (marker), ``running`` (a live claim), ``failed`` or ``interrupted`` (a record,
or a claim whose process is gone), else ``pending``. Interrupted runs are resumable and are relaunched
by a plain re-run of the sweep; failed ones only with ``retry_failed``.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from domgen import lock
from domgen.config import write_atomic
from domgen.engine.logging import is_done
from domgen.lock import clear_claim, pid_alive, read_json, write_claim  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from domgen.sweep.launch import LaunchReport
    from domgen.sweep.plan import Plan

RUNNING = lock.LOCK
FAILED = "failed.json"
STATES = ("done", "running", "failed", "interrupted", "blocked", "pending")
HEARTBEAT_S, STALE_S = lock.HEARTBEAT_S, lock.STALE_S
# sacct states of a job that is still coming or going; the others mean it ended.
_SLURM_LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
# ended without a Python error (so the run can resume from last.pt): counted as interrupted
_SLURM_INTERRUPTED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


# ---- records -------------------------------------------------------------------------------------
# Claims are the run-folder lock (domgen.lock): one mechanism for sweep jobs and hand-started commands.
def write_failure(run_dir: Path, context: dict[str, Any], err: BaseException | None = None, message: str = "",
                  kind: str | None = None) -> None:
    """``err`` raised in the job (its traceback is kept), or ``message`` from the launcher when the job
    died without a Python exception. A kill, timeout or preemption is ``interrupted``, the rest ``error``."""
    if err is not None:
        error, trace = f"{type(err).__name__}: {err}", "".join(traceback.format_exception(err))
        kind = kind or ("interrupted" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "error")
    else:
        lines = [line for line in message.strip().splitlines() if line.strip()]
        error, trace = (lines[-1] if lines else "the job ended without finishing"), message
    record = dict(context) | {"kind": kind or "error", "error": error, "traceback": trace, "time": time.time()}
    write_atomic(Path(run_dir) / FAILED, json.dumps(record, indent=2, default=str) + "\n")


def clear_failure(run_dir: Path) -> None:
    (Path(run_dir) / FAILED).unlink(missing_ok=True)


# ---- state ---------------------------------------------------------------------------------------
def read_state(run_dir: Path, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """(state, record) of one run from its folder; ``record`` is the claim or failure behind the state."""
    return read_states([run_dir], now)[0]


def read_states(run_dirs: list[Path], now: float | None = None) -> list[tuple[str, dict[str, Any]]]:
    """:func:`read_state` for many runs, asking Slurm about all their jobs in one ``sacct`` call."""
    claims = [None if is_done(d) else read_json(Path(d) / RUNNING) for d in run_dirs]
    slurm = slurm_states([str(c["slurm_job_id"]) for c in claims if c and c.get("slurm_job_id")])
    return [_state(Path(d), c, slurm, now) for d, c in zip(run_dirs, claims)]


def _state(run_dir: Path, claim: dict | None, slurm: dict[str, str], now: float | None) -> tuple[str, dict]:
    if is_done(run_dir):
        return "done", {}
    if claim is not None and claim_alive(claim, slurm, now):
        return "running", claim
    failure = read_json(run_dir / FAILED)
    if failure is not None:
        return ("interrupted" if failure.get("kind") == "interrupted" else "failed"), failure
    if claim is None:
        return "pending", {}
    ended = slurm.get(str(claim.get("slurm_job_id")))
    if ended:  # Slurm knows how it ended (out of memory, cancelled, timed out ...)
        kind = "interrupted" if ended in _SLURM_INTERRUPTED else "failed"
        return kind, claim | {"error": f"Slurm job {claim['slurm_job_id']} ended {ended} without finishing the run"}
    return "interrupted", claim | {"error": "its job is gone (killed, preempted or its machine died)"}


def claim_alive(claim: dict[str, Any], slurm: dict[str, str] | None = None, now: float | None = None) -> bool:
    """:func:`domgen.lock.claim_alive` with the Slurm states that mean a job is still coming or going."""
    return lock.claim_alive(claim, slurm, now, live_states=_SLURM_LIVE)


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> sacct state ("RUNNING", "CANCELLED", ...) through submitit's watcher, one sacct call
    for all; empty where this machine has no sacct."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmJob

    watcher = SlurmJob.watcher
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()
    # "CANCELLED by 123" -> "CANCELLED"; ids sacct does not know (yet) come back as UNKNOWN (= live)
    return {j: watcher.get_state(j, mode="cache").split()[0].upper() for j in job_ids}


# ---- tables --------------------------------------------------------------------------------------
def sweep_status(plan: "Plan") -> pd.DataFrame:
    """One row per run of the plan, states re-read from disk. A pending or interrupted run whose parent
    failed (or is itself blocked) shows as ``blocked``: it cannot start until the parent is retried."""
    plan.refresh()
    state = {}
    for job in plan.jobs:  # parents come first
        s = job.state
        if s in ("pending", "interrupted") and any(state[p] in ("failed", "blocked") for p in job.parents):
            s = "blocked"
        state[job.name] = s
    rows = []
    for job in plan.jobs:
        rec = job.record
        rows.append(
            {
                "run": job.name, "exp": job.cfg.exp, "seed": job.cfg.seed, "state": state[job.name],
                "requested": job.requested, "after": ",".join(job.parents),
                "job_id": rec.get("slurm_job_id") or rec.get("job_id") or "", "host": rec.get("host") or "",
                "error": rec.get("error", "") if state[job.name] != "running" else "",
                "log": rec.get("stderr") or "", "run_dir": str(job.run_dir),
            }
        )
    return pd.DataFrame(rows, columns=["run", "exp", "seed", "state", "requested", "after", "job_id",
                                       "host", "error", "log", "run_dir"])


def status_counts(jobs: pd.DataFrame) -> pd.DataFrame:
    """Experiment x state counts (columns in ``STATES`` order, plus total), and an ``all`` row."""
    table = pd.crosstab(jobs["exp"], jobs["state"]).reindex(columns=list(STATES), fill_value=0)
    table = table.reindex(list(dict.fromkeys(jobs["exp"])))  # plan order: parents' experiments first
    table["total"] = table.sum(axis=1)
    table.loc["all"] = table.sum(axis=0)
    table.columns.name, table.index.name = None, "exp"
    return table.astype(int)


def format_status(jobs: pd.DataFrame) -> str:
    """Counts per experiment, then one line per run that needs attention (failed, interrupted, blocked)
    or is running, with where to look."""
    lines = [status_counts(jobs).to_string(), ""]
    for row in jobs.itertuples():
        if row.state == "running":
            where = f"job {row.job_id}" + (f" on {row.host}" if row.host else "")
            lines.append(f"running      {row.run}  ({where})")
        elif row.state in ("failed", "interrupted"):
            lines.append(f"{row.state:<12} {row.run}  {row.error}")
            lines.append(f"{'':<12} record: {Path(row.run_dir) / FAILED}" + (f"  log: {row.log}" if row.log else ""))
        elif row.state == "blocked":
            lines.append(f"blocked      {row.run}  (waits for {row.after})")
    done = int((jobs["state"] == "done").sum())
    lines.append(f"{done}/{len(jobs)} runs done")
    return "\n".join(lines).rstrip() + "\n"


def format_plan(plan: "Plan") -> str:
    """What ``--dry-run`` shows: every run with its state, what it waits for and its estimated GPU-hours."""
    from domgen.sweep.plan import GPU_HOURS_ASSUMPTION

    rows = [
        {"run": j.name, "state": j.state, "wave": j.depth, "after": ",".join(j.parents) or "-",
         "requested": "yes" if j.requested else "parent", "gpu_h": f"{j.gpu_hours:.2f}"}
        for j in plan.jobs
    ]
    todo = [j for j in plan.jobs if j.state != "done"]
    head = (
        f"sweep: {len(plan.jobs)} runs ({sum(j.requested for j in plan.jobs)} requested, "
        f"{sum(not j.requested for j in plan.jobs)} added parents), preset {plan.preset}, data {plan.identity}, out {plan.out}"
    )
    total = sum(j.gpu_hours for j in plan.jobs)
    left = sum(j.gpu_hours for j in todo)
    tail = f"estimated GPU-hours: {total:.1f} in all, {left:.1f} for the {len(todo)} runs not done\n({GPU_HOURS_ASSUMPTION})"
    return "\n".join([head, pd.DataFrame(rows).to_string(index=False), tail]) + "\n"


def format_report(report: "LaunchReport") -> str:
    """What one launch did: runs launched (or, on a dry run, that would be), skipped and blocked."""
    verb = "would launch" if report.dry_run else "launched"
    lines = [f"{verb} {len(report.planned)} run(s)" + (":" if report.planned else "")]
    lines += [f"  {name}" + (f"  job {report.submitted[name]}" if name in report.submitted else "") for name in report.planned]
    if report.outcomes:
        ended = pd.Series(report.outcomes).value_counts()
        lines.append("ended: " + ", ".join(f"{n} {state}" for state, n in ended.items()))
    reasons = pd.Series(report.skipped, dtype=object).str.split(r"[:( ]", n=1, regex=True).str[0].value_counts()
    if len(reasons):
        lines.append("skipped: " + ", ".join(f"{n} {why}" for why, n in reasons.items()))
    lines += [f"  failed   {name}: {why.split(': ', 1)[1]}" for name, why in report.skipped.items() if why.startswith("failed:")]
    lines += [f"  blocked  {name}: {why}" for name, why in report.blocked.items()]
    return "\n".join(lines) + "\n"
