"""Splits that hold under scrutiny (issue #13): ISIC sources grouped by patient, stratified group K-fold
and repeated splits as an axis of sweeps and tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domgen.config import DataConfig, RunConfig, config_hash
from domgen.runs.registry import resolve_config
from domgen.data import splits as S
from domgen.data.catalog import REGROUPED, load_catalog
from domgen.data.sources import SOURCES
from domgen.data.sources.isic import lesion_first_ids
from domgen.data.writers import Item, write_source
from domgen.errors import ConfigError

TINY = (np.arange(8, dtype=np.uint8)[:, None, None] * 30 + np.zeros((8, 8, 3), np.uint8)).astype(np.uint8)


# ---- ISIC: patient before lesion ------------------------------------------------------------------
def isic_items(shared_patient: bool = True) -> list[Item]:
    """Patient IP_1 has two lesions (a nevus IL_1a and a melanoma IL_1b, one image each); 30 other
    patients one lesion, one image each."""
    pid = (lambda p: p) if shared_patient else (lambda p: "")
    items = [Item(TINY, "nevus", "", "ISIC_1a", {"lesion_id": "IL_1a", "patient_id": pid("IP_1")}),
             Item(TINY, "melanoma", "", "ISIC_1b", {"lesion_id": "IL_1b", "patient_id": pid("IP_1")})]
    items += [Item(TINY, ("nevus", "melanoma")[i % 2], "", f"ISIC_{i:03d}",
                   {"lesion_id": f"IL_{i}", "patient_id": pid(f"IP_{i}")}) for i in range(2, 32)]
    return items


def test_two_lesions_of_one_patient_share_a_group_and_a_split(tmp_path):
    folder = write_source("MSK", tmp_path / "data" / "MSK", isic_items())
    result = SOURCES.get("MSK").load(folder)
    rec = result.records.set_index("image_id")
    patient_one = ["ISIC_1a", "ISIC_1b"]
    assert (rec.loc[patient_one, "group"] == "IP_1").all()
    assert result.regrouped == 32  # every image: each had its lesion as group before #13
    assert lesion_first_ids(result.records, "image_id")[:1] != ["IP_1"]
    # Both lesions land in one partition under every seed; grouped by lesion (the old rule) they part
    # company for some seed, so the test would fail without the patient grouping.
    old = result.records.assign(group=lesion_first_ids(result.records, "image_id"))
    parted = 0
    for seed in range(10):
        new_split = S.assign_splits(result.records, seed).set_axis(result.records["image_id"])
        assert new_split.loc[patient_one].nunique() == 1
        old_split = S.assign_splits(old, seed).set_axis(old["image_id"])
        parted += old_split.loc[patient_one].nunique() > 1
    assert parted > 0


def test_regrouped_root_gets_a_new_identity_and_manifest(tmp_path):
    """A real root whose ISIC groups moved: identity suffixed (new run folders), manifest key changed;
    a root without patient ids: identity and groups as before."""
    keys = {}
    for shared in (True, False):
        root = tmp_path / f"root{shared}"
        write_source("MSK", root / "MSK", isic_items(shared))
        catalog = load_catalog(DataConfig(root=str(root), cache_dir=str(tmp_path / "cache")))
        assert catalog.identity == str(root.resolve()) + (REGROUPED if shared else "")
        keys[shared] = S.manifest_key(catalog.records(), 0)
        assert sorted(catalog.records()["group"].unique())[:2] == (["IP_1", "IP_10"] if shared else ["IL_10", "IL_11"])
    assert keys[True] != keys[False]


# ---- stratified group K-fold ------------------------------------------------------------------------
def kfold_records(n_groups: int = 400, seed: int = 0) -> pd.DataFrame:
    """Two domains; groups of 1-3 images with one label each; classes 70/20/10 % of groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain in ("X", "Y"):
        for g in range(n_groups):
            label = rng.choice(["nv", "mel", "bcc"], p=[0.7, 0.2, 0.1])
            rows += [(f"{domain}/{g}_{v}.jpg", label, domain, f"{domain}{g}", f"{g}_{v}") for v in range(rng.integers(1, 4))]
    return pd.DataFrame(rows, columns=["path", "label", "domain", "group", "image_id"])


@pytest.fixture(scope="module")
def recs() -> pd.DataFrame:
    return kfold_records()


def test_folds_partition_the_groups_and_each_is_test_once(recs):
    fold = S.fold_of_records(recs, seed=0, folds=5)
    assert set(fold) == {0, 1, 2, 3, 4}
    assert (recs.assign(f=fold).groupby("group")["f"].nunique() == 1).all()  # a group never straddles folds
    tested = {}
    for k in range(5):
        split = S.assign_fold_splits(recs, seed=0, folds=5, fold=k)
        assert ((split == "test") == (fold == k)).all()
        parts = recs.assign(split=split).groupby("group")["split"].nunique()
        assert (parts == 1).all()  # train / val / test disjoint by group within the fold
        for g in recs.loc[split == "test", "group"].unique():
            tested[g] = tested.get(g, 0) + 1
        # validation carved from the training folds at the paper's 20 : (50 + 20), +-2 points
        rest = split[split != "test"]
        assert abs((rest == "val").mean() - 2 / 7) < 0.02
    assert sorted(tested) == sorted(recs["group"].unique()) and set(tested.values()) == {1}


def test_folds_are_stratified(recs):
    """Each test fold's class proportions within 2 points of its domain's (bcc: 10% of groups, about
    18 images per fold; one group of up to three images moves a fold's share by at most ~1.7 points)."""
    fold = S.fold_of_records(recs, seed=0, folds=5)
    for domain, part in recs.assign(f=fold).groupby("domain"):
        whole = part["label"].value_counts(normalize=True)
        for k, sub in part.groupby("f"):
            share = sub["label"].value_counts(normalize=True).reindex(whole.index, fill_value=0)
            assert (share - whole).abs().max() < 0.02, (domain, k, share, whole)
        # and far more balanced than a random group assignment would be by chance: not a vacuous bound
        assert part.groupby("f").size().between(len(part) / 5 * 0.9, len(part) / 5 * 1.1).all()


def test_folds_are_seeded_and_ignore_row_order(recs):
    base = S.fold_of_records(recs, seed=0, folds=5)
    shuffled = recs.sample(frac=1.0, random_state=3)
    assert S.fold_of_records(shuffled, seed=0, folds=5).reindex(recs.index).equals(base)
    assert not S.fold_of_records(recs, seed=1, folds=5).equals(base)


def test_too_few_groups_and_bad_fold_are_errors():
    tiny = kfold_records(n_groups=3)
    with pytest.raises(ValueError, match="domain X has 3 group\\(s\\), fewer than data.folds=5"):
        S.fold_of_records(tiny, seed=0, folds=5)
    with pytest.raises(ValueError, match="fold in 0..K-1"):
        S.assign_fold_splits(tiny, 0, 3, 3)
    with pytest.raises(ConfigError, match="data.fold=5"):
        resolve_config("A", "smoke", 0, ["data.folds=5", "data.fold=5"])
    with pytest.raises(ConfigError, match="data.folds=1"):
        resolve_config("A", "smoke", 0, ["data.folds=1"])


def test_paper_split_manifest_key_and_run_hash_unchanged(recs):
    """folds = 0 keys the manifest exactly as before (header recomputed here by hand); folds change it;
    data.folds/data.fold enter the run hash only when set."""
    rows = recs[S.KEY_COLUMNS].astype(str).sort_values(S.KEY_COLUMNS, kind="mergesort")
    fractions = [round(f, 12) for f in np.asarray(S.DEFAULT_FRACTIONS)]  # as printed by this numpy
    h = hashlib.sha256(f"domgen-manifest-v1|seed=0|fractions={fractions}\n".encode())
    lines = rows["path"] + "\x1f" + rows["label"] + "\x1f" + rows["domain"] + "\x1f" + rows["group"]
    h.update("\n".join(lines.tolist()).encode())
    assert S.manifest_key(recs, 0) == h.hexdigest()[:20]
    assert len({S.manifest_key(recs, 0, folds=5, fold=k) for k in range(5)} | {S.manifest_key(recs, 0)}) == 6
    cfg = RunConfig()
    from dataclasses import replace

    assert config_hash(cfg, "synthetic") == config_hash(replace(cfg, data=replace(cfg.data, folds=0, fold=0)), "synthetic")
    assert config_hash(cfg, "synthetic") != config_hash(replace(cfg, data=replace(cfg.data, folds=5, fold=0)), "synthetic")


# ---- sweeps plan folds x seeds ----------------------------------------------------------------------
def test_sweep_plans_folds_x_split_seeds_x_seeds(tmp_path):
    from domgen.sweep.plan import DataSize, algorithm_variants, cross_variants, plan_sweep, split_variants

    assert split_variants() == [()]
    variants = cross_variants(algorithm_variants(None), split_variants(5, [0, 1]))
    assert len(variants) == 10 and variants[0] == ("data.split_seed=0", "data.folds=5", "data.fold=0")
    plan = plan_sweep("F", 2, "smoke", [], tmp_path / "runs", identity="synthetic:test",
                      sizes=lambda d: DataSize(100, 30, 60), variants=variants)
    requested = [j for j in plan.jobs if j.requested]
    combos = {(j.cfg.seed, j.cfg.data.split_seed, j.cfg.data.fold) for j in requested}
    assert len(requested) == 20 and combos == {(s, p, f) for s in (0, 1) for p in (0, 1) for f in range(5)}
    assert all(j.cfg.data.folds == 5 for j in plan.jobs)
    # each F run warm-starts from the A run on its own split: 20 parents, one per (seed, split)
    parents = {j.name: j for j in plan.jobs if not j.requested}
    assert len(parents) == 20
    for j in requested:
        (p,) = j.parents
        assert (parents[p].cfg.data.fold, parents[p].cfg.data.split_seed) == (j.cfg.data.fold, j.cfg.data.split_seed)
    with pytest.raises(ValueError, match="--folds 1"):
        split_variants(1)


# ---- tables say what the spread is over -------------------------------------------------------------
def write_run(root: Path, exp: str, seed: int, ham: float, split: dict | None = None) -> None:
    ctx = dict(exp=exp, seed=seed, preset="smoke", config_hash="abc", data="synthetic:/x", synthetic=True,
               arch="resnet18", nsec="0", algorithm="erm", loss="ce", weighted_cls=True, holdout=[],
               train_domains=["HAM"]) | (split or {})
    tag = "".join(f"{k[0]}{v}" for k, v in (split or {}).items())
    run = root / f"{exp}-s{seed}-{tag.ljust(10, '0')}"
    run.mkdir(parents=True)
    rows = [ctx | dict(epoch=1, stage=stage, split=sp, domain="HAM", n=10, macro_recall=ham)
            for stage, sp in (("val", "val"), ("final", "val"), ("final", "test"))]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "done").write_text("{}\n")


def test_table_spreads_over_seeds_and_folds_and_says_so(tmp_path):
    from domgen.results.by_algorithm import algorithm_table
    from domgen.results.collect import collect
    from domgen.results.tables import table2, table2_frame

    values = {}
    for seed in (0, 1):
        for fold in range(3):
            values[seed, fold] = 60.0 + 3 * fold + seed
            write_run(tmp_path / "folds", "A", seed, values[seed, fold], {"split_seed": 0, "folds": 3, "fold": fold})
    df = collect(tmp_path / "folds")
    frame = table2_frame(df)
    v = np.array(list(values.values()))
    assert frame.loc["A", "seeds"] == 6
    assert frame.loc["A", "HAM_mean"] == pytest.approx(v.mean())
    assert frame.loc["A", "HAM_std"] == pytest.approx(v.std(ddof=1))  # over all six replicates
    md = table2(df)
    assert "mean and sample std (ddof=1) over replicates" in md
    assert ("Spread: over seeds and folds (each cell's replicates: training seeds 0 1 x test folds 0 1 2 of a "
            "stratified group 3-fold split)") in md
    assert "Spread: over seeds and folds" in algorithm_table(df)

    for seed in (0, 1, 2):  # seeds only: the caption as it always was, no Spread line
        write_run(tmp_path / "seeds", "A", seed, 70.0 + seed)
    md = table2(collect(tmp_path / "seeds"))
    assert "over seeds where a row has several" in md and "Spread:" not in md
    by_alg = algorithm_table(collect(tmp_path / "seeds"))
    assert "the spread is over seeds, each fixing the data split" in by_alg and "Seeds: 0 1 2." in by_alg

    for fold in range(4):  # one seed, folds only
        write_run(tmp_path / "onlyfolds", "A", 0, 50.0 + fold, {"split_seed": 0, "folds": 4, "fold": fold})
    md = table2(collect(tmp_path / "onlyfolds"))
    assert "Spread: over folds (" in md
    for p in (0, 1):  # split seeds on the paper split
        write_run(tmp_path / "splitseeds", "A", 0, 50.0 + p, {"split_seed": p, "folds": 0, "fold": 0})
    md = table2(collect(tmp_path / "splitseeds"))
    assert "Spread: over split seeds (each cell's replicates: training seeds 0 x split seeds 0 1)" in md
