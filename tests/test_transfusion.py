"""Issue #16's study layer: the similarity command on smoke runs, save_init, the grouped low-data subset,
convergence epochs on constructed rows, experiments/transfusion.yaml (every row valid, two rows run at the
smoke preset) and its summary from run folders alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from domgen.config import config_hash
from domgen.data.splits import group_fraction
from domgen.errors import ConfigError
from domgen.results.collect import collect
from domgen.results.convergence import convergence, first_epoch_reaching
from domgen.runs.registry import resolve_config
from domgen.runs.similarity import SIMILARITY_JSON, load_model, probe_positions, read_run, run_similarity
from domgen.runs.train import run_train
from domgen.studies import load_study

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.workers=0", "threads=1", "optim.epochs=1"]


def smoke(cache, out, exp="A", seed=0, extra=(), study=None):
    return resolve_config(exp, "smoke", seed, [f"data.cache_dir={cache}", f"out={out}", *FAST, *extra], study=study)


@pytest.fixture(scope="module")
def two_runs(smoke_cache, tmp_path_factory):
    """Two 1-epoch smoke runs of CBR-Tiny (seeds 0 and 1) that kept their initial weights."""
    out = tmp_path_factory.mktemp("similarity-runs")
    return [run_train(smoke(smoke_cache, out, seed=s, extra=["model.arch=cbr_tiny", "save_init=true"])).run_dir for s in (0, 1)]


# ---- similarity -------------------------------------------------------------------------------------
def test_a_run_against_itself_is_one_on_every_layer_and_the_cli_prints_and_plots_the_table(two_runs, capsys):
    from domgen.run import main

    a = two_runs[0]
    assert main(["similarity", str(a), str(a), "--metric", "cka,svcca,pwcca", "--probe", "48"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[2:] for line in out.splitlines() if re.match(r"(layer\d+|features) ", line)}
    assert list(rows) == ["layer1", "layer2", "layer3", "layer4", "features"]  # CBR-Tiny's four blocks, then g's output
    assert all(v == ["1.000", "1.000", "1.000"] for v in rows.values())
    assert (a / f"similarity-{a.name}.png").stat().st_size > 0
    doc = json.loads((a / SIMILARITY_JSON).read_text())["comparisons"]
    entry = doc[f"{a.name}|svcca|n48|seed0"]
    assert entry["probe"]["images"] == 48 and entry["probe"]["split"] == "val"
    assert entry["layers"] == pytest.approx({k: 1.0 for k in rows}, abs=1e-6)


def test_two_seeds_differ_somewhere_and_agree_both_ways_for_cka(two_runs):
    a, b = two_runs
    ab = run_similarity(a, b, metrics=("cka",), n_probe=48, write=False).values["cka"]
    ba = run_similarity(b, a, metrics=("cka",), n_probe=48, write=False).values["cka"]
    assert ab == pytest.approx(ba, abs=1e-9)  # same probe images (A's data = B's), CKA is symmetric
    assert all(0 < v <= 1 for v in ab.values()) and min(ab.values()) < 0.999


def test_vs_init_reads_init_pt_and_a_rebuilt_init_is_the_same_model(two_runs, tmp_path):
    run = read_run(two_runs[0])
    saved, source = load_model(run, "init")
    assert source == "init.pt"
    moved = tmp_path / "init.pt"
    (run.run_dir / "init.pt").rename(moved)
    try:
        rebuilt, source = load_model(run, "init")
    finally:
        moved.rename(run.run_dir / "init.pt")
    assert source == "rebuilt from seed 0"
    for (k, v), (k2, v2) in zip(saved.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    c = run_similarity(run.run_dir, vs_init=True, metrics=("cka",), n_probe=48)
    assert c.against == "init" and set(c.values["cka"]) == {"layer1", "layer2", "layer3", "layer4", "features"}
    assert min(c.values["cka"].values()) < 0.999  # one epoch moved the model


def test_probe_is_class_stratified_seeded_and_filled():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    cand = np.arange(73)
    pos = probe_positions(labels, cand, 30, seed=0)
    counts = np.bincount(labels[pos], minlength=3)
    assert len(pos) == 30 and len(set(pos)) == 30
    assert counts[1] == 3 and counts[0] >= 10 and counts[2] >= 10  # quota 10 each, class 1 has 3, 7 filled
    assert np.array_equal(pos, probe_positions(labels, cand, 30, seed=0))
    assert not np.array_equal(pos, probe_positions(labels, cand, 30, seed=1))


# ---- save_init --------------------------------------------------------------------------------------
def test_save_init_writes_the_model_before_step_one_and_keeps_the_folder_name(smoke_cache, tmp_path, monkeypatch):
    import domgen.engine.trainer as trainer

    seen = {}
    original = trainer.train_epoch

    def spy(model, *args, **kwargs):
        seen.setdefault("before", {k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(model, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", spy)
    cfg = smoke(smoke_cache, tmp_path, extra=["model.arch=cbr_small", "save_init=true"])
    run_dir = run_train(cfg).run_dir
    assert config_hash(cfg, "x") == config_hash(smoke(smoke_cache, tmp_path, extra=["model.arch=cbr_small"]), "x")
    init = torch.load(run_dir / "init.pt", weights_only=True)["model"]
    assert init.keys() == seen["before"].keys()
    assert all(torch.equal(init[k], seen["before"][k]) for k in init)
    best = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    assert not torch.equal(best["g.layer1.0.weight"], init["g.layer1.0.weight"])  # trained weights moved
    plain = run_train(smoke(smoke_cache, tmp_path / "plain", extra=["model.arch=cbr_small"])).run_dir
    assert plain.name == run_dir.name and not (plain / "init.pt").exists()  # same folder name; off by default


# ---- the low-data arm -------------------------------------------------------------------------------
def _pool():
    """HAM: nv groups of sizes 4,3,2,1,1,1 (12 images), mel one group of 2; D7P: 5 images of its own."""
    rows = []
    for g, n in enumerate([4, 3, 2, 1, 1, 1]):
        rows += [("HAM", f"nv{g}", "nv")] * n
    rows += [("HAM", "mel0", "mel")] * 2 + [("D7P", f"d{i}", "nv") for i in range(5)]
    return pd.DataFrame(rows, columns=["domain", "group", "label"], index=np.arange(100, 100 + len(rows)))


def test_group_fraction_keeps_whole_groups_per_class_up_to_the_fraction_and_nests():
    pool = _pool()
    keep = group_fraction(pool, 0.25, seed=0, domains=["HAM"])
    assert keep.index.equals(pool.index) and keep[pool["domain"] == "D7P"].all()  # other domains untouched
    kept = pool[keep & (pool["domain"] == "HAM")]
    for g, rows in pool[pool["domain"] == "HAM"].groupby("group"):
        assert keep[rows.index].all() or not keep[rows.index].any(), g  # never part of a lesion
    assert (kept["label"] == "mel").sum() == 2  # a class's only group is always kept
    nv = kept[kept["label"] == "nv"]
    assert len(nv) >= 0.25 * 12  # at least the fraction ...
    sizes = nv.groupby("group").size()
    # ... and no group beyond the one that crossed it (taken in order: dropping that last one, at most the
    # largest, falls short of the fraction)
    assert len(nv) - sizes.max() < 0.25 * 12
    half = group_fraction(pool, 0.5, seed=0, domains=["HAM"])
    assert (half | ~keep).all()  # nested: 1/4's groups are among 1/2's
    assert group_fraction(pool, 0.25, seed=0, domains=["HAM"]).equals(keep)
    assert group_fraction(pool, 1.0, seed=0).all()


def test_train_fraction_is_validated_and_hashed_only_when_set():
    base = resolve_config("A", "smoke", 0)
    assert config_hash(resolve_config("A", "smoke", 0, ["data.train_fraction=1"]), "x") == config_hash(base, "x")
    assert config_hash(resolve_config("A", "smoke", 0, ["data.train_fraction=0.125"]), "x") != config_hash(base, "x")
    with pytest.raises(ConfigError, match="data.train_fraction=0.0"):
        resolve_config("A", "smoke", 0, ["data.train_fraction=0"])


# ---- convergence ------------------------------------------------------------------------------------
def _val(run, exp, domain, train, scores):
    return [{"run": run, "exp": exp, "seed": 0, "stage": "val", "split": "val", "domain": domain, "train_domains": train,
             "epoch": e + 1, "macro_recall": s} for e, s in enumerate(scores)]


def test_convergence_epochs_on_constructed_rows():
    rows = (_val("r1", "x", "HAM", ("HAM",), [50, 80, 91, 95, 100])
            # two training domains average to [50, 85, 90]; PH2 is held out and must not count
            + _val("r2", "y", "HAM", ("HAM", "D7P"), [40, 90, 80]) + _val("r2", "y", "D7P", ("HAM", "D7P"), [60, 80, 100])
            + _val("r2", "y", "PH2", ("HAM", "D7P"), [100, 0, 0])
            + _val("r3", "z", "HAM", ("HAM",), [50, 100, 60]))  # peaks, then degrades
    c = convergence(pd.DataFrame(rows)).set_index("run")
    assert c.loc["r1", ["best_score", "best_epoch", "epochs_to_90", "epochs_to_95", "epochs"]].tolist() == [100, 5, 3, 4, 5]
    assert c.loc["r2", ["best_score", "epochs_to_90", "epochs_to_95"]].tolist() == [90, 2, 3]  # 81 at 2 (85), 85.5 at 3
    assert c.loc["r3", ["best_epoch", "epochs_to_90", "epochs_to_95"]].tolist() == [2, 2, 2]
    assert first_epoch_reaching([3, 1, 2], [10, float("nan"), 9.5], 0.95) == 2  # order by epoch, NaN skipped
    assert first_epoch_reaching([1], [float("nan")], 0.9) is None


# ---- the study --------------------------------------------------------------------------------------
def test_the_study_file_is_the_tools_output_and_every_row_resolves():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_transfusion_study", REPO / "tools" / "make_transfusion_study.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert (REPO / "experiments" / "transfusion.yaml").read_text() == tool.render()  # edited by the tool only
    st = load_study("transfusion")
    names = st.experiments.names()
    # ResNet-50/18 x {none, imagenet, meanvar} + 4 CBR x {none}, each: ERM + 6 leave-one-out CCSA, x 2 arms
    assert len(names) == (2 * 3 + 4) * 7 * 2
    for name in names:
        for preset in ("paper", "smoke"):
            cfg = resolve_config(name, preset, 0, study=st)
            assert cfg.data.primary == "HAM" and cfg.model.weights in ("none", "imagenet", "meanvar")
            assert cfg.data.train_fraction == (0.125 if name.endswith("_low") else 1.0)
            if "_ccsa_" in name:
                held = re.search(r"_ccsa_([A-Z0-9]+)", name).group(1)
                assert (cfg.algorithm.name, cfg.data.nsec, cfg.data.holdout) == ("ccsa", "a", (held,))
                parent = resolve_config(cfg.warm_start, preset, 0, study=st)
                assert (parent.algorithm.name, parent.data.nsec, parent.model, parent.data.train_fraction) == (
                    "erm", "0", cfg.model, cfg.data.train_fraction)
            else:
                assert (cfg.algorithm.name, cfg.data.nsec, cfg.data.holdout, cfg.warm_start) == ("erm", "0", (), "")


def test_two_rows_run_at_the_smoke_preset_and_summarise_from_run_folders(smoke_cache, tmp_path):
    from domgen.results.transfusion import format_summary, summarise

    cfg = smoke(smoke_cache, tmp_path, exp="tiny_none_ccsa_PH2_low", extra=["save_init=true"], study="transfusion")
    child = run_train(cfg)  # trains its parent tiny_none_erm_low first
    parent = next(p for p in tmp_path.iterdir() if p.name.startswith("tiny_none_erm_low-"))
    assert (parent / "init.pt").is_file() and (child.run_dir / "init.pt").is_file()  # save_init passes to the parent
    for run_dir in (parent, child.run_dir):
        run_similarity(run_dir, vs_init=True, metrics=("cka",), n_probe=32)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    s = summarise(df).set_index("exp")
    assert set(s.index) == {"tiny_none_ccsa_PH2_low", "tiny_none_erm_low"}
    final = df[(df["stage"] == "final") & (df["split"] == "test")]
    for exp, own in (("tiny_none_erm_low", {"HAM"}), ("tiny_none_ccsa_PH2_low", set(final["domain"]) - {"PH2"})):
        rows = final[final["exp"] == exp].set_index("domain")["macro_recall"]
        assert s.loc[exp, "in_domain"] == pytest.approx(rows[sorted(own)].mean())
        assert s.loc[exp, "out_of_domain"] == pytest.approx(rows.drop(sorted(own)).mean())
        assert s.loc[exp, "fraction"] == 0.125 and s.loc[exp, "init"] == "none"
        assert 1 <= s.loc[exp, "epochs_to_90"] <= s.loc[exp, "epochs_to_95"]
        assert {"sim_layer1", "sim_features"} <= set(s.columns) and 0 < s.loc[exp, "sim_layer1"] <= 1
    # the low arm: HAM's pool is a grouped subset of the full one
    from domgen.data.run_data import prepare_data

    low, full = prepare_data(cfg.data), prepare_data(resolve_config("tiny_none_ccsa_PH2", "smoke", 0, [f"data.cache_dir={smoke_cache}"], study="transfusion").data)
    ham = lambda d: set(d.pool[d.manifest["domain"].to_numpy()[d.pool] == "HAM"])  # noqa: E731
    assert ham(low) < ham(full) and len(ham(low)) < 0.3 * len(ham(full))
    text = format_summary(summarise(df))
    assert "tiny_none_erm_low" in text and "| layer1 | layer2 | layer3 | layer4 | features |" in text.splitlines()[0]
