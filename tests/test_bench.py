"""The benchmark commands' quick variants: they measure what they claim and report consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from domgen.bench.train import QUICK, bench_train

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_quick_compares_pipeline_with_model_only(tmp_path):
    r = bench_train(tmp_path, quick=True, workers=0, device="cpu")
    assert r["pipeline_steps_per_s"] > 0 and r["model_only_steps_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["pipeline_steps_per_s"] / r["model_only_steps_per_s"])
    assert r["sizes"] == list(QUICK["sizes"]) and r["batch_pairs"] == QUICK["batch_size"]
    assert r["precision"] == "fp32" and r["device"] == "cpu"
    assert len(list((tmp_path / "images").glob("*.jpg"))) == QUICK["n_images"]
    assert "contended" not in r  # no busy processes unless asked


def test_bench_pipeline_cli_json_idle_and_contended(tmp_path):
    out = subprocess.run([sys.executable, "-m", "domgen.run", "bench", "pipeline", "--quick", "--json", "--root", str(tmp_path),
                          "--contention", "1"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    for cond in (r, r["contended"]):
        assert cond["ratio"] == pytest.approx(cond["cached_batches_per_s"] / cond["reference_batches_per_s"])
    assert r["busy_processes"] == 0 and r["contended"]["busy_processes"] == 1
    assert r["cache_build_s"] > 0
