"""The benchmark commands' quick variants: they measure what they claim and report consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from domgen.bench.train import QUICK, bench_matrix, bench_train

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_quick_compares_pipeline_with_model_only(tmp_path):
    r = bench_train(tmp_path, quick=True, workers=0, device="cpu")
    assert r["pipeline_steps_per_s"] > 0 and r["model_only_steps_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["pipeline_steps_per_s"] / r["model_only_steps_per_s"])
    assert r["sizes"] == list(QUICK["sizes"]) and r["batch_pairs"] == QUICK["batch_size"]
    assert r["algorithm"] == "ccsa" and r["batch_unit"] == "pairs"  # the default: the paper's method, on pairs
    assert r["precision"] == "fp32" and r["device"] == "cpu"
    assert len(list((tmp_path / "images").glob("*.jpg"))) == QUICK["n_images"]
    assert "contended" not in r  # no busy processes unless asked
    assert r["channels_last"] is False and r["compiled"] is False and r["peak_gpu_mem_mb"] is None  # CPU: no GPU memory


def test_bench_train_cli_names_the_algorithm_it_measured(tmp_path, capsys):
    from domgen import run

    assert run.main(["bench", "train", "--quick", "--steps", "1", "--workers", "0", "--device", "cpu",
                     "--algorithm", "erm", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ERM steps/s with the full pipeline" in out and "CCSA" not in out
    assert f"{QUICK['batch_size']} images/step)" in out  # ERM draws one image per sample, not pairs


def test_bench_matrix_covers_every_precision_and_memory_format_in_order(tmp_path):
    rows = bench_matrix(tmp_path, archs=("resnet18",), quick=True, workers=0, device="cpu", n_steps=1)
    assert [(r["arch"], r["precision"], r["channels_last"], r["compiled"]) for r in rows] == [
        ("resnet18", "bf16", True, False), ("resnet18", "bf16", False, False),
        ("resnet18", "fp32", True, False), ("resnet18", "fp32", False, False)]
    assert all(r["pipeline_steps_per_s"] > 0 and r["model_only_steps_per_s"] > 0 for r in rows)


def test_bench_pipeline_cli_json_idle_and_contended(tmp_path):
    out = subprocess.run([sys.executable, "-m", "domgen.run", "bench", "pipeline", "--quick", "--json", "--root", str(tmp_path),
                          "--contention", "1"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    for cond in (r, r["contended"]):
        assert cond["ratio"] == pytest.approx(cond["cached_batches_per_s"] / cond["reference_batches_per_s"])
    assert r["busy_processes"] == 0 and r["contended"]["busy_processes"] == 1
    assert r["cache_build_s"] > 0
