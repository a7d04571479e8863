"""Drivers of issues 4 and 5 at the smoke preset: leave-one-domain-out, the sampler report, pruning, table."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from domgen.data.labels import CLASSES
from domgen.engine.logging import read_results
from domgen.data.run_data import prepare_data
from domgen.runs.loo import format_loo, loo_experiments, run_loo
from domgen.runs.registry import resolve_config
from domgen.runs.sampler_report import format_sampler_report, sampler_report

REPO = Path(__file__).resolve().parents[1]


def overrides(cache: Path, out: Path) -> list[str]:
    return [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, seed_parents):
    """The module's run folder, holding A and K (trained once per session: conftest.smoke_parents)."""
    out = tmp_path_factory.mktemp("runs")
    seed_parents(out)
    return out


@pytest.fixture(scope="module")
def loo_ph2(smoke_cache, runs):
    return run_loo("PH2", "smoke", 0, overrides(smoke_cache, runs))[0]


def test_loo_names_experiments():
    assert loo_experiments("PH2") == ["R"] and loo_experiments("ph2") == ["R"]
    assert loo_experiments("all") == ["O", "P", "Q", "R", "S", "T"]
    with pytest.raises(ValueError, match="HAM"):
        loo_experiments("HAM")


def test_loo_holds_ph2_out_of_training_and_selection_but_evaluates_it(loo_ph2, smoke_cache, runs):
    s = loo_ph2.summary
    assert s["exp"] == "R" and s["holdout"] == ["PH2"]
    assert "PH2" not in s["train_domains"] and len(s["train_domains"]) == 6
    data = prepare_data(resolve_config("R", "smoke", 0, overrides(smoke_cache, runs)).data)
    assert "PH2" not in set(data.manifest["domain"].to_numpy()[data.pool])
    rows = read_results(loo_ph2.run_dir)
    # Selection score of the best epoch = mean validation recall over the six training domains only.
    # A run holding a domain out records every domain's validation and test after each epoch (for the
    # oracle and lodo selection methods), PH2 included; the score averages the training domains only.
    best = [r for r in rows if r["stage"] == "val" and r["epoch"] == s["best_epoch"]]
    assert sorted((r["split"], r["domain"]) for r in best) == sorted((sp, d) for sp in ("val", "test") for d in s["train_domains"] + ["PH2"])
    expected = np.mean([r["macro_recall"] for r in best if r["domain"] != "PH2" and r["split"] == "val"])
    assert s["best_val_score"] == pytest.approx(expected)
    ph2_val = next(r["macro_recall"] for r in best if r["domain"] == "PH2" and r["split"] == "val")
    assert expected != pytest.approx(np.mean([r["macro_recall"] for r in best if r["split"] == "val"])) or ph2_val == pytest.approx(expected)
    final = {(r["split"], r["domain"]) for r in rows if r["stage"] == "final"}
    assert ("val", "PH2") in final and ("test", "PH2") in final and len(final) == 14
    line = format_loo([loo_ph2]).splitlines()[1]
    assert f"{s['test_macro_recall']['PH2']:5.1f}*" in line
    assert line.count("*") == 1


def test_sampler_report_exact_p1_is_the_pool_class_frequency(smoke_cache, runs):
    cfg = resolve_config("K", "smoke", 0, overrides(smoke_cache, runs))
    report = sampler_report(cfg, n_pairs=20_000)
    data = prepare_data(cfg.data)
    counts = Counter(data.manifest["label"].to_numpy()[data.pool])
    n = len(data.pool)
    assert report["exact"]["p1"] == pytest.approx([counts[c] / n for c in CLASSES])
    # Each x1 appears once per epoch, so the empirical y1 frequency is exact, not approximate.
    assert report["empirical"]["p1"] == pytest.approx(report["exact"]["p1"])
    assert report["empirical"]["p_equal"] == pytest.approx(report["exact"]["p_equal"], abs=0.02)
    # Exclusive negatives (the default): exactly a quarter of the pairs are positives, all same-class.
    assert report["exact"]["p_equal"] == pytest.approx(0.25) and report["exact"]["p_positive"] == 0.25
    assert report["empirical"]["p_positive"] == pytest.approx(report["empirical"]["p_equal"])
    # Max-normalised (the authors'): the rarest class has weight 1, and w1 * p1 is p_min for every class.
    p1, w1 = np.array(report["exact"]["p1"]), np.array(report["weights"]["class_w1"])
    present = p1 > 0
    assert w1.max() == 1.0 and np.allclose(w1[present] * p1[present], p1[present].min())
    joint, pw = np.array(report["exact"]["joint"]), np.array(report["weights"]["pair_w"])
    assert report["weights"]["expected"]["pair_w"] == pytest.approx(float((joint * pw).sum()))
    assert report["weights"]["expected"]["pair_w"] < 1  # the rarest pair has weight 1, the rest less


def test_sampler_report_measures_terms_at_the_warm_start(loo_ph2, smoke_cache, runs):
    cfg = resolve_config("K", "smoke", 0, overrides(smoke_cache, runs))  # A was trained by the LOO fixture
    ws = sampler_report(cfg, n_pairs=1000, warm_batches=2)["warm_start"]
    assert ws["batches"] == 2 and "A-s0-" in ws["status"]
    # Cross-entropy of a 7-class model is positive; the separation term at margin 50 dominates alignment.
    assert 0 < ws["cls"] and 0 <= ws["align"] and ws["sep"] > 0 and ws["gn_sep"] > 0
    missing = sampler_report(resolve_config("K", "smoke", 1, overrides(smoke_cache, runs)), n_pairs=1000)
    assert "not trained yet" in missing["warm_start"]["status"]


def test_table_cli_reads_the_loo_run(loo_ph2, runs):
    out = subprocess.run([sys.executable, "-m", "domgen.run", "table", "--runs", str(runs), "--format", "csv"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    md = subprocess.run([sys.executable, "-m", "domgen.run", "table", "--runs", str(runs)], cwd=REPO, capture_output=True, text=True).stdout
    r_line = next(l for l in md.splitlines() if l.startswith("| R "))
    assert f"{loo_ph2.summary['test_macro_recall']['PH2']:.1f}*" in r_line
    assert "synthetic" in md.lower()


@pytest.mark.slow
def test_prune_u_smoke_shrinks_reloads_and_records(smoke_cache, runs):
    from domgen.runs.prune import PRUNED, run_prune
    from domgen.prune import count_params_macs, load_pruned

    cfg = resolve_config("U", "smoke", 0, overrides(smoke_cache, runs))
    result = run_prune(cfg)
    s = result.summary
    assert s["params"] < s["params_before"] == 11_180_103 and s["macs"] < s["macs_before"]
    model = load_pruned("resnet18", result.run_dir / PRUNED)
    size = (3, cfg.transform.size, cfg.transform.size)
    assert count_params_macs(model, size)[0] == s["params"]
    kept = {name: module.out_channels for name, module in model.named_modules() if name.endswith(".conv1") and "layer" in name}
    assert kept == s["channels_kept"]
    rows = [r for r in read_results(result.run_dir) if r["stage"] == "final"]
    assert rows and all(r["params"] == s["params"] for r in rows)
    # The fine-tuned best checkpoint loads into the pruned architecture and runs.
    state = torch.load(result.run_dir / "best.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    assert model.eval()(torch.zeros(2, *size)).shape == (2, 7)


def test_sampler_report_of_a_one_image_sampler_gives_exact_and_drawn_frequencies(smoke_cache, runs):
    cfg = resolve_config("E", "smoke", 0, overrides(smoke_cache, runs) + ["algorithm.sampler=sqrt_frequency"])
    report = sampler_report(cfg, n_pairs=30_000)
    counts = np.array(report["pool_classes"], dtype=float)
    root = np.sqrt(counts)
    assert report["kind"] == "single" and report["exact"]["p_class"] == pytest.approx(root / root.sum())
    # 30,000 draws: each frequency within 5 binomial standard deviations of the exact probability
    p, emp = np.array(report["exact"]["p_class"]), np.array(report["empirical"]["p_class"])
    assert np.all(np.abs(emp - p) <= 5 * np.sqrt(p * (1 - p) / report["empirical"]["draws"]) + 1e-12)
    # inverse-probability weights give every present class the same share of the weighted loss
    share = np.array(report["weights"]["effective_class_mass"])[counts > 0]
    assert share == pytest.approx(np.full(len(share), 1 / len(share)))
    assert sum(report["exact"]["p_domain"]) == pytest.approx(1.0)
    assert "sampler sqrt_frequency" in format_sampler_report(report).splitlines()[0]
