"""What the CLI prints about a sweep: the state of every planned run, counts per experiment, the plan of
a dry run and what one launch did. Built from a :class:`~domgen.sweep.plan.Plan` whose states
:mod:`domgen.sweep.status` reads from the run folders; the top of the sweep package (plan, launch and
status never import it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from domgen.sweep.launch import LaunchReport
from domgen.sweep.plan import GPU_HOURS_ASSUMPTION, Plan
from domgen.engine.logging import DONE
from domgen.sweep.status import FAILED, STATES


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
                "run": job.name, "exp": job.cfg.exp, "algorithm": job.cfg.algorithm.name, "seed": job.cfg.seed, "state": state[job.name],
                "requested": job.requested, "after": ",".join(job.parents),
                "job_id": rec.get("slurm_job_id") or rec.get("job_id") or "", "host": rec.get("host") or "",
                "error": rec.get("error", "") if state[job.name] != "running" else "",
                "log": rec.get("stderr") or "", "run_dir": str(job.run_dir),
                "train_s": _train_s(job.run_dir) if state[job.name] == "done" else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["run", "exp", "algorithm", "seed", "state", "requested", "after", "job_id",
                                       "host", "error", "log", "run_dir", "train_s"])


def _train_s(run_dir) -> float:
    """The training wall time a finished run recorded in ``done`` (NaN: recorded before it was kept)."""
    try:
        return float(json.loads((Path(run_dir) / DONE).read_text()).get("train_s", math.nan))
    except (OSError, ValueError, AttributeError):
        return math.nan


def status_counts(jobs: pd.DataFrame) -> pd.DataFrame:
    """Experiment x state counts (columns in ``STATES`` order, plus total), and an ``all`` row. When one
    experiment is trained with several algorithms (``--algorithms``), each (experiment, algorithm) is a row."""
    several = "algorithm" in jobs and (jobs.groupby("exp")["algorithm"].nunique() > 1).any()
    key = jobs["exp"] + " " + jobs["algorithm"] if several else jobs["exp"]
    table = pd.crosstab(key, jobs["state"]).reindex(columns=list(STATES), fill_value=0)
    table = table.reindex(list(dict.fromkeys(key)))  # plan order: parents' experiments first
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
    took = jobs.loc[jobs["state"] == "done", "train_s"].dropna() if "train_s" in jobs else pd.Series(dtype=float)
    timed = "" if took.empty else (
        f"; training took {took.sum() / 3600:.1f} h in all, a median {took.median() / 60:.1f} min per run"
        + (f" ({len(took)} of the {done} recorded it)" if len(took) < done else ""))
    lines.append(f"{done}/{len(jobs)} runs done{timed}")
    return "\n".join(lines).rstrip() + "\n"


def other_runs_line(jobs: pd.DataFrame, out: Path) -> str | None:
    """When none of the plan's runs has started but ``out`` holds other run folders: a status asked with
    other options than the sweep's (``sweep status`` re-plans from its own options; by default, every row
    of the study at the paper preset), which would otherwise read as a sweep that has done nothing."""
    if len(jobs) and not (jobs["state"] == "pending").all():
        return None
    ours = {Path(d).name for d in jobs["run_dir"]}
    others = [d for d in Path(out).glob("*/config.yaml") if d.parent.name not in ours] if Path(out).is_dir() else []
    if not others:
        return None
    return (f"None of these runs has started, but {out} holds {len(others)} other run folder(s): `sweep status` "
            "reports the plan its options describe, so give it the sweep's own (--exps or --holdout, --algorithms, "
            "--seeds, --preset, --set).")


def format_plan(plan: "Plan") -> str:
    """What ``--dry-run`` shows: every run with its state, what it waits for and its estimated GPU-hours."""
    rows = [
        {"run": j.name, "algorithm": j.cfg.algorithm.name, "state": j.state, "wave": j.depth, "after": ",".join(j.parents) or "-",
         "requested": "yes" if j.requested else "parent", "gpu_h": f"{j.gpu_hours:.2f}"}
        for j in plan.jobs
    ]
    if any(j.cfg.data.folds or j.cfg.data.split_seed for j in plan.jobs):  # split variance: say which split each run is on
        for row, j in zip(rows, plan.jobs):
            d = j.cfg.data
            row["split"] = (f"fold {d.fold}/{d.folds}" if d.folds else "paper") + f" seed {d.split_seed}"
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
