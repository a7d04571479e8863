"""Splits, manifest and nsec pools: on the real HAM10000 metadata (grouping by lesion) and on
constructed tables whose correct answer is known by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA  # the one rule for where the real data is
from domgen.data import splits as S
from domgen.data.labels import CLASSES

FULL = SHARED_DATA / "HAM10000_metadata_full.csv"


@pytest.fixture(scope="module")
def ham() -> pd.DataFrame:
    if not FULL.is_file():
        pytest.skip(f"real HAM10000 metadata not found at {FULL}")
    meta = pd.read_csv(FULL)
    return pd.DataFrame(
        {"path": meta["image_id"], "label": meta["dx"], "domain": "HAM", "group": meta["lesion_id"],
         "image_id": meta["image_id"]}
    )


@pytest.fixture(scope="module")
def ham_split(ham) -> pd.Series:
    return S.assign_splits(ham, seed=0)


def records(rows: list[tuple[str, str, str]], domain: str = "X") -> pd.DataFrame:
    """rows of (path, label, group) -> a record table of one domain."""
    frame = pd.DataFrame(rows, columns=["path", "label", "group"])
    frame["domain"] = domain
    frame["image_id"] = frame["path"]
    return frame[["path", "label", "domain", "group", "image_id"]]


# ----------------------------------------------------------------------------------------- real HAM


def test_ham_no_lesion_in_two_partitions(ham, ham_split):
    assert len(ham_split) == 10015 and ham_split.index.equals(ham.index)
    assert ham_split.groupby(ham["group"]).nunique().max() == 1
    # Every one of the 7,470 lesions is assigned.
    assert ham_split.notna().all() and ham["group"].nunique() == 7470


def test_ham_partition_fractions(ham_split):
    frac = ham_split.value_counts(normalize=True)
    for name, target in zip(S.SPLITS, S.DEFAULT_FRACTIONS):
        assert abs(frac[name] - target) < 0.01, (name, frac[name])


def test_ham_stratified_per_class(ham, ham_split):
    counts = pd.crosstab(ham["label"], ham_split)
    n = counts.sum(axis=1)
    # Table 1 counts of HAM10000, then each partition within 2 images of its share of the class.
    assert n.to_dict() == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
    for name, target in zip(S.SPLITS, S.DEFAULT_FRACTIONS):
        assert (counts[name] - target * n).abs().max() <= 2, name


def test_ham_deterministic_and_seeded(ham, ham_split):
    assert S.assign_splits(ham, seed=0).equals(ham_split)
    other = S.assign_splits(ham, seed=1)
    changed = (other != ham_split).mean()
    assert 0.3 < changed < 0.8  # a fresh draw: about 1 - (.5^2 + .2^2 + .3^2) = 62% of images move


def test_split_ignores_row_order(ham, ham_split):
    shuffled = ham.sample(frac=1.0, random_state=3)
    again = S.assign_splits(shuffled, seed=0)
    assert again.reindex(ham.index).equals(ham_split)


# --------------------------------------------------------------------------------- constructed splits


@pytest.mark.parametrize("seed", range(6))
def test_tiny_classes_land_as_specified(seed):
    rows = [("m0", "mel", "gm0"), ("m1", "mel", "gm0")]  # mel: 1 group (of 2 images)
    rows += [("b0", "bcc", "gb0"), ("b1", "bcc", "gb1"), ("b2", "bcc", "gb1"), ("b3", "bcc", "gb1")]  # 2 groups
    # df: 3 groups of 8, 1, 1 images; a plain largest-deficit rule would give the last one to test
    # (deficits 2 and 2 after train takes 8 of 10), leaving val without df.
    rows += [(f"d{i}", "df", "gd0") for i in range(8)] + [("d8", "df", "gd1"), ("d9", "df", "gd2")]
    rec = records(rows)
    split = S.assign_splits(rec, seed)
    by_group = split.groupby(rec["group"]).agg(lambda s: set(s))
    assert all(len(v) == 1 for v in by_group)  # multi-image groups stay whole
    per_class = split.groupby(rec["label"]).agg(lambda s: sorted(set(s)))
    assert per_class["mel"] == ["train"]
    assert per_class["bcc"] == ["test", "train"]
    assert per_class["df"] == ["test", "train", "val"]
    assert split[rec["group"] == "gb1"].iloc[0] == "train"  # the larger of two groups trains
    assert split[rec["group"] == "gd0"].iloc[0] == "train"


def test_exact_fractions_of_singletons_per_domain():
    # 100 one-image groups of one class in each of two domains: 50/20/30 exactly, per domain.
    rec = pd.concat(
        [records([(f"{d}{i}", "nv", f"g{i}") for i in range(100)], domain=d) for d in ("A", "B")],
        ignore_index=True,
    )  # group ids repeat across domains: they are distinct groups
    split = S.assign_splits(rec, seed=7)
    counts = pd.crosstab(rec["domain"], split)
    assert counts.loc["A"].to_dict() == {"test": 30, "train": 50, "val": 20}
    assert counts.loc["B"].to_dict() == {"test": 30, "train": 50, "val": 20}


def test_mixed_label_group_takes_majority_label():
    # Group "mix" holds mel, mel, nv: stratified as mel (its only group -> train). Counted as nv it
    # would make nv a 3-group class and send one group to val.
    rec = records([("a", "mel", "mix"), ("b", "mel", "mix"), ("c", "nv", "mix"), ("d", "nv", "n1"), ("e", "nv", "n2")])
    for seed in range(5):
        split = S.assign_splits(rec, seed)
        assert set(split[rec["group"] == "mix"]) == {"train"}
        assert sorted(split[rec["group"] != "mix"]) == ["test", "train"]


def test_fractions_are_validated():
    rec = records([("a", "nv", "g")])
    with pytest.raises(ValueError, match="summing to 1"):
        S.assign_splits(rec, 0, fractions=(0.5, 0.2, 0.2))


def test_class_availability():
    rec = pd.concat(
        [records([("a", "nv", "1"), ("b", "nv", "2"), ("c", "mel", "3")], domain="PH2"),
         records([("d", "vasc", "4")], domain="HAM")],
        ignore_index=True,
    )
    table = S.class_availability(rec)
    assert list(table.columns) == list(CLASSES) and list(table.index) == ["HAM", "PH2"]
    assert table.loc["PH2"].tolist() == [2, 1, 0, 0, 0, 0, 0]
    assert table.loc["HAM"].tolist() == [0, 0, 0, 0, 0, 1, 0]


# ------------------------------------------------------------------------------------------- manifest


def small_records() -> pd.DataFrame:
    rows = [(f"/d/img{i:03d}.jpg", CLASSES[i % 3], f"{i // 2:03d}") for i in range(30)]  # "007"-style ids
    rec = records(rows, domain="DMF")
    rec["age"] = [np.nan if i % 4 == 0 else float(i) for i in range(30)]
    return rec


def test_manifest_key_depends_on_content_not_order():
    rec = small_records()
    key = S.manifest_key(rec, 0)
    assert S.manifest_key(rec.iloc[::-1], 0) == key
    assert S.manifest_key(rec.drop(columns="age"), 0) == key
    assert S.manifest_key(rec, 1) != key
    assert S.manifest_key(rec, 0, fractions=(0.6, 0.2, 0.2)) != key
    relabelled = rec.copy()
    relabelled.loc[0, "label"] = "df"
    assert S.manifest_key(relabelled, 0) != key


def test_manifest_written_then_reused(tmp_path, monkeypatch):
    rec = small_records()
    first = S.load_or_build_manifest(rec, tmp_path, seed=0)
    path = tmp_path / "manifests" / f"{S.manifest_key(rec, 0)}.csv"
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert list(first.columns[:6]) == S.MANIFEST_COLUMNS and "age" in first.columns
    expected = S.assign_splits(rec, 0).set_axis(rec["path"])
    assert first["split"].tolist() == expected.reindex(first["path"]).tolist()

    def boom(*args, **kwargs):
        raise AssertionError("assign_splits must not run when the manifest exists")

    monkeypatch.setattr(S, "assign_splits", boom)
    second = S.load_or_build_manifest(rec.iloc[::-1], tmp_path, seed=0)
    pd.testing.assert_frame_equal(second, first)
    assert second["group"].iloc[0] == "000" and second["age"].isna().sum() == 8


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    rec = small_records()

    def partial_then_fail(self, target, *args, **kwargs):
        Path(target).write_text("path,domain\n/d/img000.jpg,DM")  # killed halfway through
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", partial_then_fail)
    with pytest.raises(OSError, match="disk full"):
        S.load_or_build_manifest(rec, tmp_path, seed=0)
    assert list((tmp_path / "manifests").iterdir()) == []  # neither a half manifest nor a temp file


# ----------------------------------------------------------------------------------------- nsec pools


def pool_manifest() -> pd.DataFrame:
    rows = []
    for i in range(6):
        rows.append((f"h{i}", "HAM", "nv", S.SPLITS[i % 3]))  # HAM: 2 train, 2 val, 2 test
    rows += [(f"m{i}", "DMF", "mel", "train") for i in range(4)] + [("m_val", "DMF", "mel", "val")]
    rows += [(f"b{i}", "DMF", "bcc", "train") for i in range(7)]
    rows += [("df_test", "DMF", "df", "test")]  # no training image: contributes nothing
    rows += [(f"n{i}", "D7P", "nv", "train") for i in range(2)]
    frame = pd.DataFrame(rows, columns=["path", "domain", "label", "split"])
    frame["group"] = frame["path"]
    return frame


@pytest.mark.parametrize("nsec", [0, 1, 2, 3, 4, 5])
def test_nsec_counts(nsec):
    man = pool_manifest()
    mask = S.nsec_subset(man, nsec, seed=0)
    assert mask.index.equals(man.index) and mask.dtype == bool
    chosen = man[mask]
    assert set(chosen["split"]) == {"train"}
    assert set(chosen.loc[chosen["domain"] == "HAM", "path"]) == {"h0", "h3"}  # all of HAM's train
    counts = chosen.groupby(["domain", "label"]).size().to_dict()
    expected = {("HAM", "nv"): 2}
    if nsec:
        expected.update({("DMF", "mel"): min(nsec, 4), ("DMF", "bcc"): min(nsec, 7), ("D7P", "nv"): min(nsec, 2)})
    assert counts == expected


def test_nsec_nested_and_all():
    man = pool_manifest()
    for seed in range(4):
        masks = [S.nsec_subset(man, k, seed) for k in range(6)] + [S.nsec_subset(man, "a", seed)]
        for small, big in zip(masks, masks[1:]):
            assert not (small & ~big).any()
        assert masks[-1].sum() == 2 + 4 + 7 + 2  # every training image
        assert masks[0].equals(man["split"].eq("train") & man["domain"].eq("HAM"))


def test_nsec_seeded_and_order_free():
    man = pool_manifest()
    picks = {seed: frozenset(man.loc[S.nsec_subset(man, 2, seed), "path"]) for seed in range(8)}
    assert len(set(picks.values())) > 1  # the seed matters
    shuffled = man.sample(frac=1.0, random_state=0)
    assert frozenset(shuffled.loc[S.nsec_subset(shuffled, 2, 0), "path"]) == picks[0]


def test_training_pool_excludes_held_out_domain():
    man = pool_manifest()
    pool = S.training_pool(man, 3, seed=0, exclude=["DMF"])
    assert sorted(pool["path"]) == ["h0", "h3", "n0", "n1"]
    assert len(S.training_pool(man, "a", seed=0)) == 15
    with pytest.raises(ValueError, match="not in the manifest"):
        S.training_pool(man, 3, seed=0, exclude=["DERMOFIT"])


@pytest.mark.parametrize(
    "value,expected", [(0, 0), (5, 5), ("3", 3), (" 2 ", 2), ("a", "a"), ("All", "a"), (np.int64(4), 4)]
)
def test_parse_nsec_accepts(value, expected):
    assert S.parse_nsec(value) == expected


@pytest.mark.parametrize("value", [6, -1, "6", "x", "", True, 2.0, None])
def test_parse_nsec_rejects(value):
    with pytest.raises(ValueError, match="nsec must be"):
        S.parse_nsec(value)
