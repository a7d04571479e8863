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
by a plain re-run of the sweep; failed ones only with ``retry_failed``. The tables built from a plan's
states are in :mod:`domgen.sweep.report`, so that this module, which the plan and the launcher use,
imports neither of them.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from domgen import lock
from domgen.atomic import write_text_atomic
from domgen.engine.logging import is_done
from domgen.lock import read_json

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
    write_text_atomic(Path(run_dir) / FAILED, json.dumps(record, indent=2, default=str) + "\n")


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
