"""The one thread rule: usable cores from affinity, cgroup quota and Slurm; how they are shared; the
OpenMP wait policy set before torch loads; busy processes for contended benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from domgen import threads
from domgen.bench.contention import busy_processes
from domgen.threads import ThreadBudget, cgroup_cpu_limit, gpu_visible, set_wait_policy, thread_budget, usable_cores

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))


def test_cgroup_v2_quota_of_own_cgroup_and_ancestors(tmp_path):
    _write(tmp_path / "proc", "0::/job/step\n")
    _write(tmp_path / "cg/job/step/cpu.max", "max 100000\n")  # unlimited itself
    _write(tmp_path / "cg/job/cpu.max", "300000 100000\n")  # the parent allows 3 CPUs
    _write(tmp_path / "cg/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") == 3.0


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    _write(tmp_path / "proc", "4:cpu,cpuacct:/\n")
    _write(tmp_path / "cg/cpu,cpuacct/cpu.cfs_quota_us", "250000\n")
    _write(tmp_path / "cg/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") == 2.5
    _write(tmp_path / "cg/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_usable_cores_takes_the_smallest_bound(tmp_path, eight_cores):
    proc, cg = tmp_path / "proc", tmp_path / "cg"
    _write(proc, "0::/\n")
    assert usable_cores({}, cg, proc) == 8  # affinity alone
    _write(cg / "cpu.max", "150000 100000\n")
    assert usable_cores({}, cg, proc) == 1  # 1.5 CPUs of quota: one busy thread, not two throttled ones
    _write(cg / "cpu.max", "600000 100000\n")
    assert usable_cores({"SLURM_CPUS_PER_TASK": "3"}, cg, proc) == 3
    assert usable_cores({"SLURM_CPUS_PER_TASK": "12"}, cg, proc) == 6


def test_usable_cores_follows_the_affinity_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 5, 7})
    assert usable_cores({}, tmp_path / "none", tmp_path / "none") == 3


@pytest.mark.parametrize("cached, workers, asked, cores, expected", [
    (True, 2, 0, 2, ThreadBudget(cores=2, torch=2, prefetch=1, loader_workers=0, cache_workers=2)),
    (True, 4, 0, 2, ThreadBudget(cores=2, torch=2, prefetch=1, loader_workers=0, cache_workers=2)),
    (True, 2, 0, 1, ThreadBudget(cores=1, torch=1, prefetch=1, loader_workers=0, cache_workers=0)),
    (False, 4, 0, 2, ThreadBudget(cores=2, torch=1, prefetch=0, loader_workers=2, cache_workers=2)),
    (False, 1, 0, 4, ThreadBudget(cores=4, torch=3, prefetch=0, loader_workers=1, cache_workers=1)),
    (True, 2, 5, 2, ThreadBudget(cores=2, torch=5, prefetch=1, loader_workers=0, cache_workers=2)),
])
def test_thread_budget(cached, workers, asked, cores, expected):
    assert thread_budget(cached, workers, asked, cores=cores) == expected


def test_thread_budget_defaults_to_usable_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    assert thread_budget(False, 2).torch == 1 and thread_budget(True, 2).torch == 3


def test_wait_policy_set_unless_user_chose_or_gpu(tmp_path):
    env: dict[str, str] = {}
    assert set_wait_policy(env, gpu=False) == "PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert set_wait_policy(env, gpu=False) is None and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {}
    assert set_wait_policy(env, gpu=True) is None and env == {}
    (tmp_path / "nvidia0").touch()
    assert gpu_visible({}, str(tmp_path / "nvidia[0-9]*"))
    assert not gpu_visible({"CUDA_VISIBLE_DEVICES": ""}, str(tmp_path / "nvidia[0-9]*"))
    assert not gpu_visible({}, str(tmp_path / "none[0-9]*"))


def _omp_policy_seen_by_libgomp(env: dict[str, str]) -> str:
    """libgomp prints its settings at initialisation with OMP_DISPLAY_ENV: what torch's OpenMP really uses."""
    code = "import domgen, torch; torch.ones(64, 64) @ torch.ones(64, 64)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=env | {"OMP_DISPLAY_ENV": "TRUE", "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(l for l in out.stderr.splitlines() if "OMP_WAIT_POLICY" in l)
    return line.split("=")[1].strip().strip("'")


def test_import_domgen_makes_torch_openmp_wait_passively():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _omp_policy_seen_by_libgomp(env) == "PASSIVE"
    assert _omp_policy_seen_by_libgomp(env | {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[1].split()[0] != "Z"


def test_busy_processes_spin_and_are_stopped_even_on_error():
    with pytest.raises(RuntimeError):
        with busy_processes(2) as pids:
            assert len(set(pids)) == 2 and all(_alive(p) for p in pids)
            raise RuntimeError("benchmark failed")
    assert not any(_alive(p) for p in pids)
    with pytest.raises(ValueError):
        with busy_processes(99):
            pass
