"""Checkpoints as plain state dicts: written atomically, verified loadable, read with ``weights_only=True``.

A checkpoint holds model, optimizer, scheduler, epoch, best score so far, every RNG state (python,
numpy, torch CPU and CUDA) and the algorithm's state (its sampler's, and anything it learns beside the model), so
``--resume`` continues exactly.

A new checkpoint is read back before it replaces the old one, and with ``keep_previous`` the old one
stays as ``<name>.prev.pt`` (a hard link, so it costs nothing until the new file replaces it): a
checkpoint found corrupt later (an emptied or overwritten file) falls back to it.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domgen.atomic import atomic_path
from domgen.errors import CheckpointError


def previous(path: Path) -> Path:
    """``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write to a temp file beside ``path``, read it back, then rename: a run killed mid-write never
    leaves a torn file, and a file that does not load never replaces a good one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        load_checkpoint(tmp)  # raises CheckpointError: the old file stays untouched
        if keep_previous and path.exists():
            _keep(path, previous(path))


def _keep(path: Path, prev: Path) -> None:
    with atomic_path(prev) as tmp:
        tmp.unlink()
        try:
            os.link(path, tmp)  # same inode: no copy of a 100 MB file
        except OSError:  # a file system without hard links
            shutil.copyfile(path, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state dict at ``path``; :class:`CheckpointError` (one line, never torch's advice to unpickle
    unsafely) when the file is empty, truncated or not a weights-only checkpoint."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except PermissionError:
        raise
    except Exception as err:  # noqa: BLE001 - damaged bytes reach the unpickler's internals (IndexError, KeyError, ...)
        raise CheckpointError(f"{path} is not a loadable checkpoint ({_why(path, err)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a loadable checkpoint (it holds a {type(state).__name__}, not a state dict)")
    return state


def _why(path: Path, err: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return "the file is empty"
    if "weights_only" in str(err) or isinstance(err, pickle.UnpicklingError):
        return f"{size} bytes that are not a weights-only torch checkpoint; refused rather than unpickled"
    return f"{size} bytes, truncated or not a torch checkpoint"


def rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain lists (allowed by ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
