"""Real processes at once on shared state: four building the same image cache (each image decoded once,
every copy identical), four sweep workers claiming the same runs (each run trained once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domgen.config import to_dict
from domgen.data.cache import decode, open_cache
from domgen.lock import LOCK
from domgen.sweep.plan import DataSize, plan_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def _run_all(code: str, n: int = 4) -> list[str]:
    """Start ``n`` processes running ``code`` together; their stdout, in start order."""
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return outs


@pytest.mark.slow
def test_four_processes_building_one_cache_decode_each_image_once(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    log, start = tmp_path / "decoded.log", time.time() + 3.0
    code = textwrap.dedent(f"""
        import os, time
        import domgen.data.cache as cache
        real = cache.decode
        def counting(path, resize, crop):
            with open({str(log)!r}, "a") as f:
                f.write(path + "\\n")
            time.sleep(0.01)  # widen the window in which a second builder could start
            return real(path, resize, crop)
        cache.decode = counting
        time.sleep(max(0, {start} - time.time()))
        print(cache.build_cache({paths!r}, 32, 24, {str(tmp_path / 'cache')!r}))
    """)
    outs = _run_all(code)
    assert len(set(outs)) == 1  # every process got the same cache
    assert sorted(log.read_text().splitlines()) == sorted(paths)  # each image decoded once, by one builder
    images = open_cache(Path(outs[0]))
    expected = np.stack([decode(p, 32, 24) for p in paths])
    assert images.shape == (24, 24, 24, 3) and np.array_equal(np.asarray(images), expected)  # nothing torn
    assert sorted(p.name for p in (tmp_path / "cache" / "images").iterdir() if not p.name.endswith(".lock")) == \
        sorted([Path(outs[0]).name, Path(outs[0]).with_suffix(".json").name])  # no temp file left


@pytest.mark.slow
def test_four_sweep_workers_on_the_same_runs_train_each_once(tmp_path):
    plan = plan_sweep("A-C", 1, "smoke", [], tmp_path / "runs", identity="synthetic:test",
                      sizes=lambda d: DataSize(pool=100, val=30, test=60))
    jobs = [(to_dict(j.cfg), str(j.run_dir)) for j in plan.jobs]
    start = time.time() + 3.0
    code = textwrap.dedent(f"""
        import json, os, time
        from pathlib import Path
        from domgen.engine.logging import write_done
        from domgen.sweep.launch import run_job

        def train(cfg, run_dir):
            with open(Path(run_dir) / "trained.log", "a") as f:
                f.write(str(os.getpid()) + "\\n")
            time.sleep(0.5)
            write_done(run_dir, {{"exp": cfg.exp}})
            return {{"exp": cfg.exp}}

        time.sleep(max(0, {start} - time.time()))
        ran = [r for r in (run_job(cfg, d, train) for cfg, d in {jobs!r}) if "summary" in r]
        print(len(ran))
    """)
    _run_all(code)
    for job in plan.jobs:
        assert len((job.run_dir / "trained.log").read_text().splitlines()) == 1, job.name
        assert json.loads((job.run_dir / "done").read_text()) == {"exp": job.cfg.exp}
        assert not (job.run_dir / LOCK).exists()
