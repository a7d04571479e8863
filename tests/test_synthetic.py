"""The synthetic seven-domain benchmark: planned counts, determinism, native layouts read back through
the adapters, caching, and that the class (not the domain) decides the lesion while the domain decides
the acquisition."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from domgen.data import synthetic as syn
from domgen.data.labels import map_label
from domgen.data.sources import SOURCES

SCALE = 0.2  # ~600 images: fast, yet every present class has >= 6 images


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One benchmark at SCALE, with every progress call recorded."""
    calls = []
    root = syn.generate(tmp_path_factory.mktemp("syn"), scale=SCALE, seed=0, progress=lambda *a: calls.append(a))
    return root, calls


@pytest.fixture(scope="module")
def loaded(bench):
    """Each source read back through its adapter, with every image as a small float array."""
    root, _ = bench
    results = {name: SOURCES.get(name).load(root / name) for name in syn.SOURCE_NAMES}
    for r in results.values():
        r.records["x"] = [np.asarray(Image.open(p).convert("RGB").resize((32, 24), Image.BILINEAR), np.float32) / 255
                          for p in r.records["path"]]
    return results


# ---------------------------------------------------------------- the plan


def test_counts_at_default_scale_follow_table1():
    counts = syn.planned_counts(1.0)
    assert counts == syn.SYNTHETIC_COUNTS
    assert 2000 <= sum(sum(row.values()) for row in counts.values()) <= 3000
    assert counts["HAM10000"]["nv"] == 671  # 6705 * 0.1 = 670.5, rounded half up
    assert counts["HAM10000"]["df"] == 12  # 115 * 0.1 = 11.5
    assert counts["Derm7pt"]["nv"] == 116  # 1150 images = 575 cases; * 0.1 = 57.5 -> 58 cases of two
    assert counts["Derm7pt"]["df"] == 6  # 2 cases scaled, raised to the floor of 3 cases
    assert counts["PH2"] == {"nv": 16, "mel": 6}  # mel: 4 raised to the floor of 6
    assert counts["SONIC"] == {"nv": 925}
    # A class absent from Table 1 stays absent; every present class is planned.
    for source, row in syn.TABLE1.items():
        assert set(counts[source]) == {c for c, n in row.items() if n > 0}
    assert "akiec" not in counts["Derm7pt"] and set(counts["MSK"]) == {"nv", "mel", "bcc", "df"}
    assert counts["UDA"] == {"nv": 41, "mel": 19}  # Table 1: UDA has nv and mel only


def test_counts_floor_and_scaling():
    tiny, double = syn.planned_counts(0.01), syn.planned_counts(2.0)
    assert all(n >= syn.MIN_IMAGES for row in tiny.values() for n in row.values())
    assert all(n % 2 == 0 for n in tiny["Derm7pt"].values()) and tiny["Derm7pt"]["nv"] == 6
    assert double["HAM10000"]["nv"] == 1341 and double["SONIC"]["nv"] == 1850
    assert syn.planned_dropped(1.0) == {
        "HAM10000": {}, "Dermofit": {"SCC": 9}, "Derm7pt": {"lentigo": 4, "melanosis": 4, "miscellaneous": 2},
        "PH2": {}, "MSK": {"atypical melanocytic proliferation": 3, "lentigo NOS": 2}, "UDA": {"other": 1},
        "SONIC": {}}


def test_native_vocabulary_inverts_the_label_maps():
    for source, classes in syn.NATIVE.items():
        for cls in syn.TABLE1[source]:
            for diagnosis in classes[cls]:
                assert map_label(source, diagnosis) == cls, (source, diagnosis)
    for source, dropped in syn.DROPPED_TABLE.items():
        for diagnosis in dropped:
            assert map_label(source, diagnosis) is None, (source, diagnosis)


def test_group_sizes_and_apportion():
    sizes = syn.group_sizes(100, 0.25)  # 75 lesions, 25 extra views: 6 lesions of 3, 13 of 2, 56 of 1
    assert (sum(sizes), len(sizes), Counter(sizes)) == (100, 75, Counter({1: 56, 2: 13, 3: 6}))
    assert syn.group_sizes(6, 0.5) == [3, 2, 1]  # never fewer than 3 groups
    assert syn.group_sizes(3, 0.5) == [1, 1, 1]
    # Dermofit akiec 45 AK : 78 IEC over 12 images -> 4.39 : 7.61 -> 4 : 8.
    assert Counter(syn.apportion({"AK": 45, "IEC": 78}, 12)) == Counter({"AK": 4, "IEC": 8})


def test_plan_and_pixels_depend_on_the_seed_only():
    a, b, other = (syn.plan_source("HAM10000", SCALE, s) for s in (0, 0, 1))
    assert a == b and a != other
    first = syn.draw_case("HAM10000", 0, a[0], seed=0, size=64)
    again = syn.draw_case("HAM10000", 0, a[0], seed=0, size=64)
    changed = syn.draw_case("HAM10000", 0, a[0], seed=1, size=64)
    assert first[0].image.shape == (48, 64, 3) and first[0].image.dtype == np.uint8  # HAM's 4:3
    assert all(np.array_equal(x.image, y.image) for x, y in zip(first, again))
    assert np.abs(first[0].image.astype(int) - changed[0].image).mean() > 5


def test_generate_is_byte_identical_for_a_seed(tmp_path):
    class Bar:  # tqdm-like: gets its total set and one update per image
        total, n = None, 0

        def update(self, k):
            self.n += k

    bar = Bar()
    one = syn.generate(tmp_path / "one", scale=0.02, seed=3, size=40, progress=bar)
    two = syn.generate(tmp_path / "two", scale=0.02, seed=3, size=40)
    n_images = sum(map(sum, (r.values() for r in syn.planned_counts(0.02).values())))
    n_images += sum(map(sum, (r.values() for r in syn.planned_dropped(0.02).values())))
    assert bar.total == bar.n == n_images
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".xlsx":  # the workbook stores its creation time; compare the table
            pd.testing.assert_frame_equal(pd.read_excel(one / rel, header=None), pd.read_excel(two / rel, header=None))
        elif rel.suffix in (".jpg", ".png", ".bmp"):
            assert np.array_equal(np.asarray(Image.open(one / rel)), np.asarray(Image.open(two / rel))), rel
        else:
            assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


# ---------------------------------------------------------------- read back through the adapters


def test_adapters_read_back_the_planned_counts(bench, loaded):
    root, calls = bench
    planned, dropped = syn.planned_counts(SCALE), syn.planned_dropped(SCALE)
    for name, result in loaded.items():
        assert dict(Counter(result.records["label"])) == planned[name], name
        assert dict(result.dropped_labels) == dropped[name], name
        assert result.missing == []
    n_images = sum(sum(r.values()) for r in planned.values()) + sum(sum(r.values()) for r in dropped.values())
    assert len(calls) == n_images and calls[-1] == (n_images, n_images)
    manifest = syn.read_manifest(root)
    assert manifest["synthetic"] is True and manifest["counts"] == planned and manifest["seed"] == 0


def test_groups_follow_each_release(loaded):
    ham = loaded["HAM10000"].records.groupby("group").size()
    assert ham.max() == 3 and (ham > 1).sum() > 0 and len(ham) < len(loaded["HAM10000"].records)
    d7p = loaded["Derm7pt"].records.groupby("group")["modality"].apply(sorted)
    assert all(m == ["clinic", "derm"] for m in d7p)
    sonic = loaded["SONIC"].records
    assert sonic["group"].str.startswith("IP_").all() and sonic["group"].nunique() < len(sonic)
    uda = loaded["UDA"].records
    assert (uda["group"] == uda["image_id"]).all()  # no lesion or patient ids: the image is the group
    dmf = loaded["Dermofit"].records
    # 6 akiec images split 45 AK : 78 IEC -> 2.2 : 3.8 -> 2 : 4.
    assert Counter(dmf.loc[dmf["label"] == "akiec", "diagnosis"]) == Counter({"AK": 2, "IEC": 4})
    assert Image.open(loaded["HAM10000"].records["path"][0]).size == (128, 96)


# ---------------------------------------------------------------- the class decides the lesion


def centre(x: np.ndarray) -> np.ndarray:
    h, w, _ = x.shape
    return x[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3)


def test_melanoma_shows_blue_grey_or_black_in_every_domain(loaded):
    """max(B - R) in the lesion's centre: brown naevi stay well below zero; melanoma's black and
    blue-grey areas do not. Would be ~0.5 if the class did not decide the lesion."""
    for name, result in loaded.items():
        rec = result.records[result.records["label"].isin(["nv", "mel"])]
        if rec["label"].nunique() < 2:
            continue
        bluest = [float((c[:, 2] - c[:, 0]).max()) for c in map(centre, rec["x"])]
        assert roc_auc_score(rec["label"] == "mel", bluest) > 0.75, name


def test_red_lesions_are_redder_than_naevi(loaded):
    """Mean R - G in the centre: pink bcc, red vasc and akiec above brown nv in every domain."""
    for name, result in loaded.items():
        rec = result.records
        for cls in ("bcc", "vasc", "akiec"):
            part = rec[rec["label"].isin(["nv", cls])]
            if (part["label"] == cls).any():
                redness = [float((c[:, 0] - c[:, 1]).mean()) for c in map(centre, part["x"])]
                assert roc_auc_score(part["label"] == cls, redness) > 0.7, (name, cls)


def test_domains_differ_in_acquisition(loaded):
    """Naevi only (every domain has them): mean colour, corner brightness and sharpness identify the
    domain by nearest centroid far above chance (1/7) on held-out images."""
    feats, dom = [], []
    for name, result in loaded.items():
        for x in result.records.loc[result.records["label"] == "nv", "x"]:
            feats.append(np.concatenate([x.mean((0, 1)), x[:3, :3].mean((0, 1)), [np.abs(np.diff(x, axis=1)).mean()]]))
            dom.append(name)
    feats, dom = np.array(feats), np.array(dom)
    train = np.arange(len(dom)) % 2 == 0
    names = list(syn.SOURCE_NAMES)
    centroids = np.stack([feats[train & (dom == n)].mean(0) for n in names])
    pred = np.array(names)[((feats[~train, None] - centroids[None]) ** 2).sum(-1).argmin(1)]
    recall = [np.mean(pred[dom[~train] == n] == n) for n in names]
    assert np.mean(recall) > 0.5


# ---------------------------------------------------------------- cache


def test_ensure_synthetic_generates_once_into_its_hash_folder(tmp_path, monkeypatch):
    runs = []

    def fake_generate(folder, scale, seed, size, progress):
        runs.append(Path(folder))
        (Path(folder) / syn.MANIFEST).write_text("{}")
        return folder

    monkeypatch.setattr(syn, "generate", fake_generate)
    first = syn.ensure_synthetic(tmp_path, scale=0.5, seed=2)
    assert first == tmp_path / "synthetic" / syn.cache_key(0.5, 2, syn.DEFAULT_SIZE)
    assert (first / syn.MANIFEST).is_file() and runs[0].parent == first.parent and runs[0] != first
    assert syn.ensure_synthetic(tmp_path, scale=0.5, seed=2) == first and len(runs) == 1  # reused
    assert syn.ensure_synthetic(tmp_path, scale=0.5, seed=3) != first and len(runs) == 2
    assert len({syn.cache_key(1.0, 0, 128), syn.cache_key(1.0, 0, 96), syn.cache_key(0.5, 0, 128)}) == 3
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == sorted(
        [first.name, syn.cache_key(0.5, 3, syn.DEFAULT_SIZE)])  # no temporary folder left


def test_ensure_synthetic_never_leaves_a_half_folder(tmp_path, monkeypatch):
    def killed(folder, *args):
        (Path(folder) / "HAM10000").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "generate", killed)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_synthetic(tmp_path)
    assert list((tmp_path / "synthetic").iterdir()) == []

    def loses_race(folder, *args):
        final = tmp_path / "synthetic" / syn.cache_key()
        final.mkdir()
        (final / "theirs").write_text("x")  # another process finished first
        (Path(folder) / "ours").write_text("y")

    monkeypatch.setattr(syn, "generate", loses_race)
    final = syn.ensure_synthetic(tmp_path)
    assert sorted(p.name for p in final.iterdir()) == ["theirs"]
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [final.name]
