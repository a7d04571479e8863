"""A JPEG truncated to a third of its size (header intact) passes a header check; it must be caught when
pixels are decoded, named with its source, and dropped and counted under --skip-missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from domgen import run
from domgen.config import DataConfig
from domgen.data.cache import build_cache
from domgen.data.catalog import load_catalog
from domgen.data.sources._io import is_readable
from domgen.data.writers import Item, write_source
from domgen.errors import ImageDecodeError


@pytest.fixture
def ham_root(tmp_path) -> tuple[Path, Path]:
    """A HAM10000 release of three 96x96 noise JPEGs; ISIC_2.jpg cut to a third of its bytes."""
    rng = np.random.default_rng(0)
    items = [Item(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), dx, f"L{i}", f"ISIC_{i}")
             for i, dx in enumerate(["nv", "mel", "bcc"])]
    write_source("HAM10000", tmp_path / "data" / "HAM10000", items)
    bad = next((tmp_path / "data" / "HAM10000").rglob("ISIC_1.jpg"))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    return tmp_path / "data", bad


def test_truncated_jpeg_passes_the_header_check_but_not_the_decode(ham_root):
    root, bad = ham_root
    assert is_readable(bad)  # what summary and the loaders checked before
    catalog = load_catalog(DataConfig(root=str(root), cache_dir=str(root.parent / "cache")))
    assert len(catalog.records()) == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_cache_build_names_the_file_and_source_and_publishes_nothing(ham_root, tmp_path, workers):
    root, bad = ham_root
    paths = sorted(str(p) for p in (root / "HAM10000").rglob("*.jpg"))
    with pytest.raises(ImageDecodeError) as err:
        build_cache(paths, 64, 48, tmp_path / "cache", num_workers=workers)
    msg = str(err.value)
    assert msg.startswith("HAM10000: 1 image(s) cannot be decoded (image file is truncated") and str(bad) in msg
    assert "--skip-missing" in msg
    assert not list((tmp_path / "cache" / "images").glob("*.u8")) and not list((tmp_path / "cache" / "images").glob(".*tmp"))


def test_skip_missing_drops_and_counts_it_like_a_missing_one(ham_root, tmp_path):
    root, bad = ham_root
    cache = tmp_path / "cache"
    catalog = load_catalog(DataConfig(root=str(root), cache_dir=str(cache), skip_missing=True, workers=0))
    res = catalog.results["HAM"]
    assert sorted(res.records["image_id"]) == ["ISIC_0", "ISIC_2"] and res.missing == [str(bad)]
    assert catalog.counts().loc["HAM"].sum() == 2
    assert set(json.loads((cache / "decoded-ok.json").read_text())) == set(res.records["path"])  # remembered
    build_cache(res.records["path"].tolist(), 64, 48, cache)  # what remains builds


def test_summary_verify_decodes_everything_without_building_the_cache(ham_root, tmp_path, capsys):
    root, bad = ham_root
    base = ["summary", "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "s"), "--workers", "0"]
    assert run.main(base + ["--verify"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # past the progress bar
    assert len(errors) == 1 and errors[0].startswith("error: HAM10000: 1 image(s) cannot be decoded") and str(bad) in errors[0]
    assert run.main(base + ["--verify", "--skip-missing"]) == 0
    out = capsys.readouterr().out
    assert "HAM: dropped 1 listed but missing/unreadable images (--skip-missing)" in out
    assert not (tmp_path / "cache" / "images").exists()
