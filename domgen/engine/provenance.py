"""What a run ran on: ``environment.json`` in every run folder, and the ``deterministic`` switch.

The record names the library versions that decide a result (python, torch, torchvision, timm, numpy,
scikit-learn), CUDA and cuDNN (None when the run is not on a GPU), the device, the platform, and the git
commit of the domgen source that ran with whether its tracked files had uncommitted changes (``dirty``;
untracked files are not counted, since run folders and caches often sit untracked inside a checkout).
Where git is absent or the source is not a checkout (an installed wheel), ``git_commit`` and
``git_dirty`` are None. A resumed run keeps the sessions before it under ``earlier`` (a run continued on
another machine says so).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from domgen.atomic import write_text_atomic

ENVIRONMENT = "environment.json"
# distribution -> module: an imported module's own __version__ keeps the build tag (torch 2.x+cu130), which
# the distribution's metadata drops; modules not imported yet are read from metadata (no import cost)
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy", "scikit-learn": "sklearn"}
# cuBLAS needs a fixed workspace to be deterministic (PyTorch's "Reproducibility" notes)
CUBLAS_WORKSPACE = ":4096:8"


def _version(package: str, module: str) -> str | None:
    version = getattr(sys.modules.get(module), "__version__", None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows (often only the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _git(args: list[str], cwd: Path) -> str | None:
    """``git args`` in ``cwd``: its stdout, or None when git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(source: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding ``source`` (default: the domgen package); (None, None)
    without git or outside a checkout."""
    source = Path(source) if source is not None else Path(__file__).resolve().parents[1]
    commit = _git(["rev-parse", "HEAD"], source)
    if commit is None:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return commit, (None if status is None else bool(status))


def environment(device: torch.device, deterministic: bool = False, source: Path | None = None) -> dict[str, Any]:
    """The record written as ``environment.json`` (module docstring)."""
    cuda = device.type == "cuda"
    commit, dirty = git_state(source)
    return {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **{p.replace("-", "_"): _version(p, mod) for p, mod in PACKAGES.items()},
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "device_type": device.type,
        "platform": platform.platform(),
        "executable": sys.executable,
        "deterministic": bool(deterministic),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def write_environment(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``run_dir/environment.json``; the sessions already recorded there (a resumed
    run's) move under ``earlier``, oldest first."""
    path = Path(run_dir) / ENVIRONMENT
    earlier: list[dict] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            earlier = [*old.pop("earlier", []), old]
        except (json.JSONDecodeError, AttributeError):
            earlier = []  # a torn file from a killed write cannot be recovered; the new record stands
    write_text_atomic(path, json.dumps(record | ({"earlier": earlier} if earlier else {}), indent=1) + "\n")
    return path


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (``torch.use_deterministic_algorithms``, cuDNN deterministic, no cuDNN
    autotuning) when ``on``; PyTorch's defaults when off, so a process running several runs does not carry
    one run's setting into the next.

    ``warn_only``: an operation that has no deterministic kernel warns (naming it) instead of raising.
    Every ResNet needs this on CUDA: ``adaptive_avg_pool2d``'s backward has no deterministic CUDA kernel
    (PyTorch's list of such operations; pytorch/pytorch#149130), so the strict mode would stop every GPU
    run at its first backward pass. Such a run is deterministic except in those operations, which the
    warnings name."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False if on else torch.backends.cudnn.benchmark
