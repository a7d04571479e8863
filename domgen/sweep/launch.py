"""Launch a planned sweep: local processes (one per GPU, or N CPU processes) or a Slurm cluster, both
through submitit. Re-running a launch is safe: what is done is skipped, what runs is left alone, what
was interrupted resumes from its ``last.pt``, and failed runs wait for ``retry_failed``.

Order: a run starts only after the run it warm-starts from is done (A before F-T, K before U/V).
Locally a small scheduler starts each run as soon as its parent is done, and marks the children of a
failed parent ``blocked``. On Slurm the jobs of one wave (dependency depth) that wait for the same
parents go out as one job array (``executor.batch()``) with ``--dependency=afterok:<parent job ids>``
and ``--kill-on-invalid-dep=yes``, so a failed parent cancels its children instead of leaving them
pending forever; the next launch resubmits them once the parent is retried.

submitit is used here and nowhere else; its logs go to ``<out>/.submitit/<job id>/``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from domgen.config import RunConfig, from_dict, to_dict
from domgen.engine.logging import is_done
from domgen.errors import LaunchError, RunLocked
from domgen.lock import RunLock, clear_claim, read_json, write_claim
from domgen.sweep.status import FAILED, RUNNING, claim_alive, clear_failure, read_state, write_failure
from domgen.threads import usable_cores

if TYPE_CHECKING:  # the job process imports this module: keep it light (no torch until training)
    from domgen.sweep.plan import Plan, SweepJob

TrainFn = Callable[[RunConfig, Path], dict]  # (config, planned run folder) -> the done marker's contents
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's LocalExecutor kills a job after 2 min unless told otherwise


# ---- the job -------------------------------------------------------------------------------------
def train_run(cfg: RunConfig, run_dir: Path) -> dict:
    """Train (or prune) one run with ``resume=True``, so a resubmitted interrupted job continues."""
    from domgen.data.catalog import load_catalog
    from domgen.engine.trainer import Hooks
    from domgen.runs.registry import study_of
    from domgen.runs.train import run_dir_for, run_train

    expected = run_dir_for(cfg, load_catalog(cfg.data).identity)
    if expected.resolve() != Path(run_dir).resolve():  # checked before hours of training go elsewhere
        raise LaunchError(
            f"this job would write {expected}, but the sweep planned {run_dir}: the data identity differs "
            "between the machine that planned the sweep and this one (set data.root / DOMGEN_DATA the same on both)"
        )
    driver = run_train
    if study_of(cfg).experiments.get(cfg.exp).driver == "prune":
        try:
            from domgen.runs.prune import run_prune
        except ImportError as err:
            raise LaunchError(f"experiment {cfg.exp} prunes, but domgen.runs.prune is not available: {err}") from err
        driver = run_prune
    return driver(cfg, Hooks(log=_job_log), resume=True).summary


def _job_log(line: str) -> None:
    # A job's stdout is its submitit log file: this is the job process's own edge, like the CLI's.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_job(cfg_dict: dict, run_dir: str | None = None, train_fn: TrainFn | None = None) -> dict:
    """Entry point of one sweep job (top level, so it pickles): claim the run folder, train, release.

    On any exception ``failed.json`` gets the traceback and log paths, and the exception is re-raised
    so submitit records the job as failed.
    """
    cfg = from_dict(cfg_dict)
    if run_dir is None:
        from domgen.data.catalog import load_catalog
        from domgen.runs.train import run_dir_for

        run_dir = run_dir_for(cfg, load_catalog(cfg.data).identity)
    run_dir = Path(run_dir)
    claim = job_context()
    lock = RunLock(run_dir, claim, adopt_reservation=True)
    try:
        lock.acquire()
    except RunLocked as err:  # a twin of this job (or a hand-started command) trains it: leave it alone
        _job_log(f"not started: {err}")
        return {"run_dir": str(run_dir), "skipped": str(err)}
    leave = None
    try:
        if is_done(run_dir):  # finished by a twin that held the lock before us
            return {"run_dir": str(run_dir), "summary": read_json(run_dir / "done") or {}}
        clear_failure(run_dir)  # a retry starts clean; the old record's traceback is in the old job's log
        summary = (train_fn or train_run)(cfg, run_dir)
    except BaseException as err:
        write_failure(run_dir, claim, err)
        if claim.get("slurm_job_id") and isinstance(err, (KeyboardInterrupt, SystemExit)):
            # a timeout or preemption: submitit may have requeued this job under the same id. Leave a
            # claim without pid (so it outlives this process) that sacct confirms or refutes.
            keep = ("slurm_job_id", "job_id", "folder", "stdout", "stderr")
            leave = {k: claim[k] for k in keep if k in claim} | {"host": None, "requeued": time.time()}
        raise
    finally:
        lock.release(leave=leave)
    return {"run_dir": str(run_dir), "summary": summary}


def job_context() -> dict[str, Any]:
    """Who runs this job: host, pid, and under submitit its job id and log files."""
    ctx: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    if "SUBMITIT_FOLDER" in os.environ:
        import submitit

        env = submitit.JobEnvironment()
        ctx.update(job_id=env.job_id, stdout=str(env.paths.stdout), stderr=str(env.paths.stderr), folder=str(env.paths.folder))
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            ctx["slurm_job_id"] = env.job_id
    return ctx


class SweepTask:
    """What is submitted: ``run_job``, with ``cpu_share`` cores for this job when several CPU jobs share
    a machine (``RunConfig.threads``, not hashed; left alone when set). Checkpointable, so submitit
    requeues it on a Slurm timeout or preemption, and the requeued job resumes from ``last.pt``."""

    def __init__(self, train_fn: TrainFn | None = None, cpu_share: int | None = None):
        self.train_fn, self.cpu_share = train_fn, cpu_share

    def __call__(self, cfg_dict: dict, run_dir: str) -> dict:
        if self.cpu_share and not cfg_dict.get("threads"):
            from domgen.threads import thread_budget  # the one thread rule, on this job's share of cores

            data = cfg_dict.get("data", {})
            budget = thread_budget(bool(data.get("cached", True)), int(data.get("workers", 0)), cores=self.cpu_share)
            cfg_dict = {**cfg_dict, "threads": budget.torch}
        return run_job(cfg_dict, run_dir, self.train_fn)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# ---- choosing what to launch ---------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 720  # per job; a job that times out is requeued and resumes
    gpus: int = 1
    cpus: int = 8
    mem_gb: float = 32
    array_parallelism: int = 64  # most array tasks running at once
    folder: str | None = None  # submitit folder; default <out>/.submitit/%j (must be on a shared disk)
    extra: dict[str, str] = field(default_factory=dict)  # more sbatch options, e.g. {"account": "lab"}


@dataclass
class LaunchReport:
    planned: list[str] = field(default_factory=list)  # runs this launch submits (or would, on a dry run)
    submitted: dict[str, str] = field(default_factory=dict)  # run -> submitit job id
    skipped: dict[str, str] = field(default_factory=dict)  # run -> why not launched (done, running, failed)
    blocked: dict[str, str] = field(default_factory=dict)  # run -> the parent it cannot start without
    outcomes: dict[str, str] = field(default_factory=dict)  # local launcher: run -> state when it ended
    dry_run: bool = False


def select_jobs(plan: Plan, retry_failed: bool, slurm: bool) -> tuple[list[SweepJob], LaunchReport]:
    """The jobs to launch now, parents first, and why the others are left out. A parent added only for
    its children is launched only when a child still needs it."""
    report = LaunchReport()
    todo: dict[str, SweepJob] = {}
    for job in plan.jobs:  # parents come first
        if job.state == "done" or job.state == "running":
            report.skipped[job.name] = job.state + (f" (job {_job_id(job)})" if job.state == "running" else "")
        elif job.state == "failed" and not retry_failed:
            report.skipped[job.name] = f"failed: {job.record.get('error', '?')} (retry with --retry-failed)"
        else:
            why = _blocker(plan, job, todo, report, slurm)
            if why:
                report.blocked[job.name] = why
            else:
                todo[job.name] = job
    for job in reversed(plan.jobs):  # drop parents no child needs any more
        if job.name in todo and not job.requested and not any(c.name in todo for c in plan.children(job.name)):
            del todo[job.name]
            report.skipped[job.name] = "parent not needed: its requested children are done"
    return list(todo.values()), report


def _blocker(plan: Plan, job: SweepJob, todo: dict, report: LaunchReport, slurm: bool) -> str:
    for p in job.parents:
        parent = plan.job(p)
        if parent.state == "done" or p in todo:
            continue
        if parent.state == "running" and slurm and parent.record.get("slurm_job_id"):
            continue  # afterok on the parent's job id
        if p in report.blocked:
            return f"parent {p} is blocked"
        return f"parent {p} is {parent.state}" + (" (retry with --retry-failed)" if parent.state == "failed" else "")
    return ""


def _job_id(job: SweepJob) -> str:
    return str(job.record.get("slurm_job_id") or job.record.get("job_id") or job.record.get("pid") or "?")


def launch(
    plan: Plan,
    launcher: str = "local",
    retry_failed: bool = False,
    dry_run: bool = False,
    max_parallel: int | None = None,
    slurm: SlurmOptions | None = None,
    job_fn: TrainFn | None = None,
    poll_s: float = 1.0,
) -> LaunchReport:
    """Launch every run of ``plan`` that is not done, running, or failed (unless ``retry_failed``);
    interrupted runs are relaunched and resume from their last checkpoint.

    ``launcher="local"`` blocks until all are finished: one process per GPU when there are GPUs (each
    sees only its own through ``CUDA_VISIBLE_DEVICES``; ``max_parallel`` caps how many), else
    ``max_parallel`` CPU processes (default 1). ``launcher="slurm"`` submits and returns; follow with
    :func:`domgen.sweep.report.sweep_status`. ``dry_run`` only reports what would be launched. ``job_fn`` replaces
    :func:`train_run` inside the job; it must pickle (a module-level function).
    """
    if launcher not in ("local", "slurm"):
        raise ValueError(f"unknown launcher {launcher!r}; use local or slurm")
    plan.refresh()
    todo, report = select_jobs(plan, retry_failed, slurm=launcher == "slurm")
    report.planned, report.dry_run = [j.name for j in todo], dry_run
    if dry_run or not todo:
        return report
    opts = slurm or SlurmOptions()
    folder = Path(opts.folder) if opts.folder else plan.out / ".submitit" / "%j"
    if launcher == "local":
        run_local(plan, todo, SweepTask(job_fn), folder, max_parallel, poll_s, report)
    else:
        submit_slurm(plan, todo, SweepTask(job_fn), folder, opts, report)
    plan.refresh()
    return report


def payload(job: SweepJob) -> tuple[dict, str]:
    return to_dict(job.cfg), str(job.run_dir)


# ---- Slurm ---------------------------------------------------------------------------------------
def submit_slurm(plan: Plan, todo: list[SweepJob], task: SweepTask, folder: Path, opts: SlurmOptions,
                 report: LaunchReport) -> None:
    """One job array per (wave, parents' job ids), each with ``afterok`` on those ids."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as err:
        raise LaunchError(f"cannot submit to Slurm from this machine ({err}); use launcher='local'") from err
    base = dict(timeout_min=int(opts.time_min), gpus_per_node=opts.gpus, cpus_per_task=opts.cpus,
                mem_gb=opts.mem_gb, name="domgen", slurm_partition=opts.partition,
                slurm_array_parallelism=opts.array_parallelism)
    ids: dict[str, str] = {}
    for depth in sorted({j.depth for j in todo}):
        groups: dict[tuple[str, ...], list[SweepJob]] = defaultdict(list)
        for job in (j for j in todo if j.depth == depth):
            groups[tuple(sorted(_parent_ids(plan, job, ids)))].append(job)
        for deps, jobs in groups.items():
            extra = dict(opts.extra)
            if deps:
                extra |= {"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"}
            executor.update_parameters(**base, slurm_additional_parameters=extra)
            with executor.batch():
                subs = [executor.submit(task, *payload(j)) for j in jobs]
            for job, sub in zip(jobs, subs):
                ids[job.name] = report.submitted[job.name] = sub.job_id
                if (read_json(job.run_dir / RUNNING) or {}).get("pid") is None:  # the job may have started
                    write_claim(job.run_dir, {"slurm_job_id": sub.job_id, "job_id": sub.job_id, "host": None,
                                          "folder": str(folder), "submitted": time.time(),
                                          "stderr": str(sub.paths.stderr)})


def _parent_ids(plan: Plan, job: SweepJob, ids: dict[str, str]) -> list[str]:
    """Slurm ids this job waits for: parents submitted now, or parents already queued or running."""
    out = []
    for p in job.parents:
        if p in ids:
            out.append(ids[p])
        elif plan.job(p).state == "running":
            out.append(str(plan.job(p).record["slurm_job_id"]))
    return out


# ---- local ---------------------------------------------------------------------------------------
def run_local(plan: Plan, todo: list[SweepJob], task: SweepTask, folder: Path, max_parallel: int | None,
              poll_s: float, report: LaunchReport) -> None:
    """Run ``todo`` as submitit local jobs (real subprocesses), each as soon as its parent is done and a
    GPU (or CPU slot) is free; children of a run that fails are marked blocked and not run."""
    import submitit

    slots = _local_slots(max_parallel)
    if slots[0] is None:  # CPU jobs share the cores instead of each taking all of them
        task.cpu_share = max(1, usable_cores() // len(slots))  # the thread rule's cores, not os.cpu_count()
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    waiting, running = list(todo), {}
    try:
        while waiting or running:
            for name, (sub, slot) in list(running.items()):
                if sub.done():
                    report.outcomes[name] = _finish_local(plan.job(name), sub)
                    slots.append(slot)
                    del running[name]
            for job in list(waiting):
                ready = _parents_ready(plan, job, report)
                if ready is None:
                    report.blocked[job.name] = next(f"parent {p} {report.outcomes.get(p) or 'is blocked'}"
                                                    for p in job.parents if p in report.outcomes or p in report.blocked)
                    waiting.remove(job)
                elif ready and slots:
                    running[job.name] = (_submit_local(executor, task, job, slots[0]), slots.pop(0))
                    report.submitted[job.name] = running[job.name][0].job_id
                    waiting.remove(job)
            if running:
                time.sleep(poll_s)
            elif waiting and slots:  # cannot happen when parents precede children; never spin on it
                report.blocked.update((j.name, "a parent is not part of this launch") for j in waiting)
                waiting.clear()
    except BaseException:  # Ctrl-C: stop the jobs; each records itself as interrupted and resumes later
        for sub, _ in running.values():
            sub.cancel(check=False)
        raise


def _local_slots(max_parallel: int | None) -> list[int | None]:
    """GPU indices to hand out one per job, or ``max_parallel`` CPU slots (``None``) without GPUs."""
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        return [None] * max(1, max_parallel or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [int(v) for v in visible.split(",")] if visible.replace(",", "").isdigit() else list(range(n))
    return ids[: min(n, max_parallel or n)]


def _parents_ready(plan: Plan, job: SweepJob, report: LaunchReport) -> bool | None:
    """True when every parent is done, False while one is still to run, None when one failed or is blocked."""
    ready = True
    for p in job.parents:
        if plan.job(p).state == "done" or report.outcomes.get(p) == "done":
            continue
        if p in report.outcomes or p in report.blocked:
            return None
        ready = False
    return ready


def _submit_local(executor, task: SweepTask, job: SweepJob, gpu: int | None):
    # Claimed before submitting (by this launcher's pid), so the job's own claim is never overwritten.
    write_claim(job.run_dir, {"pid": os.getpid(), "host": socket.gethostname(), "launcher": "local",
                              "submitted": time.time()})
    if gpu is None:
        executor.update_parameters(gpus_per_node=0, visible_gpus=())
    else:
        executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
    return executor.submit(task, *payload(job))


def _finish_local(job: SweepJob, sub) -> str:
    """State of a local job that just ended; a failure record is written when the job could not."""
    state, _ = read_state(job.run_dir)
    if state != "done" and not (job.run_dir / FAILED).exists():
        killed = sub.state == "INTERRUPTED"  # the process died from a signal
        ctx = {"job_id": sub.job_id, "stdout": str(sub.paths.stdout), "stderr": str(sub.paths.stderr)}
        write_failure(job.run_dir, ctx, message=_job_error(sub), kind="interrupted" if killed else "error")
    claim = read_json(job.run_dir / RUNNING)
    if claim is not None and (claim.get("pid") == os.getpid() or not claim_alive(claim)):
        clear_claim(job.run_dir)  # our submission claim, or the claim of the job's dead process
    return read_state(job.run_dir)[0]


def _job_error(sub) -> str:
    if sub.paths.result_pickle.exists():
        err = sub.exception()
        return str(err) if err is not None else "the job returned without writing its done marker"
    log = sub.stderr() or ""
    return "the job ended without a result; last lines of its log:\n" + "\n".join(log.splitlines()[-40:])
