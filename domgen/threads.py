"""One thread rule for every run: the cores this process may use, and how they are shared.

A shared workstation or a cluster node gives a job fewer cores than ``os.cpu_count()`` says: the
affinity mask (``taskset``, Slurm's cpusets), a container's cgroup CPU quota and Slurm's
``SLURM_CPUS_PER_TASK`` each bound it, and :func:`usable_cores` takes the smallest. :func:`thread_budget`
then shares those cores between torch's intra-op threads, the cached path's prefetch thread, the
processes that build the image cache and the reference path's DataLoader workers, so that nothing asks
for more threads than there are cores.

OpenMP (torch's CPU backend here is GNU libgomp) spin-waits for work by default: with one other busy
process on a 2-core machine the batched input path fell from 39 to 2-10 batches/s, against 30 with
``OMP_WAIT_POLICY=PASSIVE`` (issue 17). libgomp reads the variable once, when torch loads it, so
:func:`set_wait_policy` runs at ``import domgen``, before any domgen module imports torch; a policy the
user set is kept, and so is libgomp's default when a GPU is visible (the GPU path is unmeasured).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _own_cgroups(proc_cgroup: Path) -> list[str]:
    """Paths of this process's cgroups (``/proc/self/cgroup``: ``id:controllers:/path`` per line)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/a/b``, ``root/a``, ``root``: a quota on any ancestor bounds this cgroup too."""
    parts = [p for p in rel.strip("/").split("/") if p and p != ".."]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read_quota(quota: str, period: str) -> float | None:
    if quota in ("max", "-1") or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``),
    the smallest over this process's cgroup and its ancestors; ``None`` when unlimited."""
    limits = []
    for rel in _own_cgroups(proc_cgroup) or ["/"]:
        for d in _ancestors(root, rel):
            v2 = d / "cpu.max"
            if v2.is_file():
                limits.append(_read_quota(*v2.read_text().split()[:2]))
        for v1 in _V1_DIRS:
            for d in _ancestors(root / v1, rel):
                q, p = d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"
                if q.is_file() and p.is_file():
                    limits.append(_read_quota(q.read_text().strip(), p.read_text().strip()))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def usable_cores(environ: Mapping[str, str] = os.environ, cgroup_root: Path = CGROUP_ROOT,
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """min(affinity mask, floor(cgroup quota), ``SLURM_CPUS_PER_TASK``), at least 1. A quota of 1.5
    CPUs gives 1: a second busy thread would only be throttled."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        n = min(n, math.floor(quota))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


@dataclass(frozen=True)
class ThreadBudget:
    """How ``cores`` are shared. ``prefetch``: the cached path's batch-reading thread (0 or 1);
    ``loader_workers``: DataLoader processes of the reference path (each runs torch with one thread);
    ``cache_workers``: processes decoding the image cache, which runs before training, alone."""

    cores: int
    torch: int
    prefetch: int
    loader_workers: int
    cache_workers: int


def thread_budget(cached: bool, workers: int, threads: int = 0, cores: int | None = None) -> ThreadBudget:
    """The one rule. ``workers``: the configured ``data.workers``; ``threads``: torch threads the user
    asked for (0 = decide here); ``cores``: override :func:`usable_cores` (a sweep's per-job share).

    Cached path: torch gets every core. The prefetch thread reads one batch per step with
    GIL-releasing copies and sleeps otherwise, so it needs no core of its own once OpenMP waits
    passively (measured in the README's performance table). Reference path: the DataLoader workers
    decode JPEGs all the time, so torch gets the cores they leave. Workers never exceed the cores; the
    cache is decoded in this process when there is one core (a pool would only add overhead).
    """
    cores = cores or usable_cores()
    loader = 0 if cached else min(max(workers, 0), cores)
    auto = cores if cached else cores - loader
    return ThreadBudget(cores=cores, torch=threads if threads > 0 else max(1, auto), prefetch=int(cached),
                        loader_workers=loader, cache_workers=min(max(workers, 0), cores) if cores > 1 else 0)


def gpu_visible(environ: Mapping[str, str] = os.environ, dev_glob: str = "/dev/nvidia[0-9]*") -> bool:
    """Whether a CUDA device is likely visible, decided without importing torch (which would be too late
    for :func:`set_wait_policy`)."""
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob(dev_glob))


def set_wait_policy(environ: MutableMapping[str, str] = os.environ, gpu: bool | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy or a GPU is visible; return the
    value set (``None`` when nothing was). Takes effect only if torch is not yet imported."""
    if "OMP_WAIT_POLICY" in environ:
        return None
    if gpu_visible(environ) if gpu is None else gpu:
        return None
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "PASSIVE"
