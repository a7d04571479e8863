"""Shared fixtures: tiny images for native-layout fixtures, and the real HAM10000 data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The real data beside the checkout (CI's ../shared), or wherever $DOMGEN_SHARED_DATA says (a worktree
# elsewhere); tests that need it skip when it is absent. Never copied into the repository.
SHARED_DATA = Path(os.environ.get("DOMGEN_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

# Tests run on the synthetic default and on data they write; a researcher's real data root must not leak
# in (subprocesses inherit this environment).
os.environ.pop("DOMGEN_DATA", None)


@pytest.fixture
def make_image():
    """``make_image(h=8, w=8, seed=0)`` -> a random H x W x 3 uint8 image (reproducible per seed)."""

    def make(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)

    return make


@pytest.fixture
def shared_data() -> Path:
    """:data:`SHARED_DATA` (real HAM10000 sample and full metadata); skips the test when absent."""
    if not (SHARED_DATA / "ham10000_sample").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def real_ham_root(tmp_path, shared_data) -> Path:
    """A data root holding only the real HAM10000 sample (linked, never copied), as a user lays it out."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "HAM10000").symlink_to(shared_data / "ham10000_sample")
    return root


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """A cache folder holding the smoke-scale synthetic benchmark (generated once per test session)."""
    from domgen.config import DataConfig
    from domgen.data.catalog import load_catalog

    cache = tmp_path_factory.mktemp("domgen-cache")
    load_catalog(DataConfig(cache_dir=str(cache), synthetic_scale=0.25))
    return cache


TINY_SCALE = 0.05  # 1/20 of the synthetic benchmark: runs whose assertions do not depend on its size


def interrupt_at(epoch: int):
    """Hooks whose log raises Ctrl-C when epoch ``epoch`` is logged, before its checkpoint: last.pt then
    holds epoch - 1 (and last.prev.pt epoch - 2)."""
    from domgen.engine.trainer import Hooks

    def log(line: str) -> None:
        if f"] epoch {epoch}/" in line:
            raise KeyboardInterrupt

    return Hooks(log=log)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A cache folder holding the synthetic benchmark at ``TINY_SCALE`` (generated once per test session);
    a run on it sets ``data.synthetic_scale`` to ``TINY_SCALE``."""
    from domgen.config import DataConfig
    from domgen.data.catalog import load_catalog

    cache = tmp_path_factory.mktemp("domgen-cache-tiny")
    load_catalog(DataConfig(cache_dir=str(cache), synthetic_scale=TINY_SCALE))
    return cache


@pytest.fixture(scope="session")
def smoke_parents(smoke_cache, tmp_path_factory) -> Path:
    """A folder holding experiments A and K (K warm-started from A), seed 0, trained once per session at the
    smoke preset: the parents of F-V. Modules copy them with ``seed_parents`` rather than each training
    them again; a run finds its parent done by the parent's config hash, wherever it was trained."""
    from domgen.runs.registry import resolve_config
    from domgen.runs.train import run_train

    out = tmp_path_factory.mktemp("smoke-parents")
    overrides = [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1", f"out={out}"]  # none is hashed
    # A first, on its own: a parent trained by its child's run_train gets threads from its own preset
    # (parent_config), not the child's threads=1, and the thread count changes the float results
    for exp in ("A", "K"):
        run_train(resolve_config(exp, "smoke", 0, overrides))
    return out


@pytest.fixture(scope="session")
def seed_parents(smoke_parents):
    """``seed_parents(out, exps=("A", "K"))`` copies the session's finished runs of ``exps`` into ``out``
    (copies, not links: a test may change them)."""
    import shutil

    from domgen.lock import LOCK

    def copy(out: Path, exps=("A", "K")) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for exp in exps:
            (src,) = smoke_parents.glob(f"{exp}-s0-*")
            shutil.copytree(src, out / src.name, ignore=shutil.ignore_patterns(LOCK, f".{LOCK}*"))

    return copy


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``plugin(registry, name, text)``: ``text`` written to ``<name>.py`` and imported as a module of its
    own, the way a user adds a dataset, an algorithm or a loss in one file; ``registry`` is restored after
    the test."""
    import importlib.util
    import sys

    def load(registry, name: str, text: str):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
