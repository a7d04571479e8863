"""The MedMNIST adapter: a written npz is read exactly (pixels, labels, official splits through the
manifest), malformed files are refused naming the file, two sets load side by side as two domains, and
the synthetic stand-in has BreastMNIST's format and split proportions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from domgen.config import DataConfig
from domgen.data.catalog import load_catalog
from domgen.data.run_data import prepare_data
from domgen.data.sources.base import DataLayoutError
from domgen.data.sources.medmnist import KEYS, MedMnist, label_names, read_npz
from domgen.data.synthetic_ultrasound import SIZES, draw_split


def arrays(seed: int, n=(6, 3, 4), side: int = 8, rgb: bool = False, classes: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, side, side, 3) if rgb else (k, side, side)
        out[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(k) % classes).reshape(k, 1).astype(np.uint8)
    return out


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path


def test_reads_a_written_npz_exactly_with_its_official_splits(tmp_path):
    data = arrays(0)
    write(tmp_path / "root" / "breastmnist.npz", data)
    cfg = DataConfig(root=str(tmp_path / "root"), layout="medmnist", primary="none", cache_dir=str(tmp_path / "cache"))
    catalog = load_catalog(cfg)
    assert catalog.domains == ["breastmnist"] and catalog.classes == ("malignant", "normal_benign")
    rec = catalog.records()
    assert len(rec) == 13 and rec["official_split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 3}
    for split in ("train", "val", "test"):
        rows = rec[rec["official_split"] == split]
        for i, r in enumerate(rows.itertuples()):
            img = np.asarray(Image.open(r.path))
            assert img.dtype == np.uint8 and (img == data[f"{split}_images"][i]).all()  # pixels exactly
            assert r.label == ("malignant", "normal_benign")[int(data[f"{split}_labels"][i, 0])]
            # the decoder repeats the one channel to three (what the backbones take)
            assert (np.asarray(Image.open(r.path).convert("RGB")) == img[..., None]).all()
    # the manifest keeps the official splits: no re-splitting
    manifest = prepare_data(cfg).manifest
    assert (manifest["split"] == manifest["official_split"]).all()
    assert manifest["split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 3}
    # RGB sets stay RGB
    write(tmp_path / "rgb" / "breastmnist.npz", arrays(1, rgb=True))
    res = MedMnist().load_root(tmp_path / "rgb", cache=tmp_path / "cache")["breastmnist"]
    assert np.asarray(Image.open(res.records["path"][0])).shape == (8, 8, 3)


def test_two_sets_side_by_side_are_two_domains(tmp_path):
    write(tmp_path / "root" / "breastmnist.npz", arrays(0))
    write(tmp_path / "root" / "breastmnist_64.npz", arrays(1, n=(4, 2, 2), side=16))
    catalog = load_catalog(DataConfig(root=str(tmp_path / "root"), layout="medmnist", primary="none",
                                      cache_dir=str(tmp_path / "cache")))
    assert catalog.domains == ["breastmnist", "breastmnist_64"]
    assert catalog.counts().sum(axis=1).to_dict() == {"breastmnist": 13, "breastmnist_64": 8}
    assert label_names("breastmnist_64") == label_names("breastmnist")  # the size suffix is not the set's name


@pytest.mark.parametrize("break_it, message", [
    (lambda d: d.pop("val_labels"), "missing key\\(s\\) val_labels"),
    (lambda d: d.update(train_images=d["train_images"][..., None].repeat(2, -1)), "train_images has shape \\(6, 8, 8, 2\\)"),
    (lambda d: d.update(test_images=d["test_images"].astype(np.float32)), "dtype float32"),
    (lambda d: d.update(val_images=d["val_images"][:, :4]), "val_images are \\(4, 8\\)"),
    (lambda d: d.update(train_labels=d["train_labels"][:5]), "one integer class index per image"),
    (lambda d: d.update(test_labels=d["test_labels"] + 1), "test_labels holds 2, outside the set's classes 0..1"),
    (lambda d: d.update(train_labels=np.zeros((6, 14), np.uint8)), "multi-label"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, break_it, message):
    data = arrays(0)
    break_it(data)
    path = write(tmp_path / "breastmnist.npz", data)
    with pytest.raises(DataLayoutError, match=message) as err:
        read_npz(path)
    assert str(path) in str(err.value)


def test_not_an_npz_and_no_npz(tmp_path):
    bad = tmp_path / "root" / "breastmnist.npz"
    bad.parent.mkdir()
    bad.write_text("<html>not found</html>")
    with pytest.raises(DataLayoutError, match="cannot be read as an npz"):
        read_npz(bad)
    with pytest.raises(DataLayoutError, match="no .npz file"):
        MedMnist().load_root(tmp_path, cache=tmp_path / "cache")


def test_synthetic_stand_in_has_the_release_format():
    images, labels = draw_split(0, "val", SIZES["val"])
    assert images.shape == (78, 28, 28) and images.dtype == np.uint8 and labels.shape == (78, 1)
    assert (labels == 0).sum() == round(0.27 * 78) and set(np.unique(labels)) == {0, 1}
    again, _ = draw_split(0, "val", SIZES["val"])
    assert (again == images).all()  # a pure function of (seed, split, index)
    # the lesion is darker than the tissue around it: the centre crop is darker than the frame on average
    assert images[:, 8:20, 8:20].mean() < images.mean()
    assert set(KEYS) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
