"""The fast input pipeline: cache equals the PIL reference, builds are reused and safe, and the batched
augmentation has the reference's distribution (Yoon et al., MICCAI 2019 recipe)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp
from torchvision import transforms as T1
from torchvision.transforms.v2 import functional as TF

from conftest import SHARED_DATA  # the one rule for where the real data is
from domgen.bench.pipeline import QUICK, bench_pipeline, make_synthetic_tree
from domgen.data import cache as cache_mod
from domgen.data.batch_augment import AugmentParams, BatchAugment, eval_batch, sample_crop_boxes
from domgen.data.cache import build_cache, open_cache
from domgen.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, Cutout, load_rgb, reference_eval_transform, reference_train_transform,
)

SAMPLE = SHARED_DATA / "ham10000_sample" / "HAM10000_images_part_1"
PAPER = (650, 300, 224, 64)
SMALL = (130, 60, 45, 13)  # resize - out is odd here: the eval crop is not the centre of the cached crop


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory) -> list[str]:
    """Four generated 600x450 JPEGs (a HAM10000 image's size, smooth colours plus grain, so resizing
    antialiases real detail), and four real HAM10000 images as well where the shared sample is present:
    the cache-vs-PIL tests never skip."""
    paths = make_synthetic_tree(tmp_path_factory.mktemp("photos"), 4)
    return paths + (sorted(str(p) for p in SAMPLE.glob("*.jpg"))[:4] if SAMPLE.is_dir() else [])


@pytest.fixture()
def gen_paths(tmp_path) -> list[str]:
    return make_synthetic_tree(tmp_path / "imgs", 6, size=(120, 90))


@pytest.mark.parametrize("sizes", [PAPER, SMALL])
def test_cache_equals_reference_resize_and_centre_crop(photo_paths, tmp_path, sizes):
    resize, crop, out, cutout = sizes
    deterministic = reference_train_transform(resize, crop, out, cutout).transforms[:2]  # Resize, CenterCrop
    mm = open_cache(build_cache(photo_paths, resize, crop, tmp_path))
    assert mm.shape == (len(photo_paths), crop, crop, 3) and mm.dtype == np.uint8
    for i, p in enumerate(photo_paths):
        img = load_rgb(p)
        for t in deterministic:
            img = t(img)
        assert np.array_equal(mm[i], np.asarray(img))  # bit-identical, not merely close


@pytest.mark.parametrize("sizes", [PAPER, SMALL])
def test_eval_crop_from_cache_equals_reference_eval(photo_paths, tmp_path, sizes):
    resize, crop, out, _ = sizes
    mm = open_cache(build_cache(photo_paths, resize, crop, tmp_path))
    x = torch.from_numpy(np.array(mm))
    ref = torch.stack([reference_eval_transform(resize, out)(load_rgb(p)) for p in photo_paths])
    got = eval_batch(x, out, resize=resize)
    assert got.shape == (len(photo_paths), 3, out, out)
    assert torch.allclose(got, ref, atol=1e-5)  # same uint8 pixels; only float rounding differs
    centre = eval_batch(x, out)  # plain centre of the cached crop
    # 650/300/224: round(213) = round(175) + round(38), so "centre 224 of the cached 300" is exact;
    # 130/60/45: round(42.5) = 42 but round(35) + round(7.5) = 43, one pixel off.
    assert torch.allclose(centre, ref, atol=1e-5) == (sizes == PAPER)


def test_cache_is_reused_and_rekeyed_when_a_file_changes(gen_paths, tmp_path, monkeypatch):
    ticks = []
    path = build_cache(gen_paths, 40, 30, tmp_path / "c", progress=ticks.append)
    assert sum(ticks) == 6
    mtime = path.stat().st_mtime_ns
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["shape"] == [6, 30, 30, 3] and meta["key_inputs"]["resize"] == 40

    def boom(*a):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache_mod, "decode", boom)
    assert build_cache(gen_paths, 40, 30, tmp_path / "c") == path  # reused without decoding
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.undo()

    Image.new("RGB", (120, 90), (10, 200, 30)).save(gen_paths[2], format="JPEG")  # edit one image
    new = build_cache(gen_paths, 40, 30, tmp_path / "c")
    assert new != path and np.array_equal(open_cache(new)[0], open_cache(path)[0])
    assert abs(int(open_cache(new)[2, 15, 15, 1]) - 200) <= 3  # the edited image's green
    assert build_cache(gen_paths, 40, 32, tmp_path / "c") not in (path, new)  # other crop, other key


def test_a_build_removes_its_entrys_partial_files_from_a_killed_builder_only(gen_paths, tmp_path):
    key, _ = cache_mod.cache_key(gen_paths, 40, 30)
    folder = tmp_path / "c" / "images"
    folder.mkdir(parents=True)
    ours = [folder / f".{key}.u8.k3j9x2.tmp", folder / f".{key}.json.q1.tmp"]  # a builder SIGKILLed mid-write
    theirs = folder / ".0123456789abcdef.u8.z9.tmp"  # another entry's build, perhaps in progress now
    for f in [*ours, theirs]:
        f.write_bytes(b"\0" * 64)
    path = build_cache(gen_paths, 40, 30, tmp_path / "c")
    assert path == folder / f"{key}.u8" and open_cache(path).shape == (6, 30, 30, 3)
    assert not any(f.exists() for f in ours) and theirs.exists()


def _build_in_child(paths, cache_dir, log):
    def progress(n):
        with open(log, "a") as f:
            f.write(f"{n}\n")

    result = build_cache(paths, 40, 30, cache_dir, progress=progress)
    Path(f"{log}.{os.getpid()}").write_text(str(result))


def test_concurrent_builds_decode_once_and_leave_one_file(tmp_path):
    paths = make_synthetic_tree(tmp_path / "imgs", 24, size=(120, 90))
    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "progress.log"
    procs = [ctx.Process(target=_build_in_child, args=(paths, tmp_path / "c", log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    results = {Path(f.read_text().strip()) for f in tmp_path.glob("progress.log.*")}
    assert len(results) == 1  # both processes return the same cache
    assert sum(int(n) for n in log.read_text().split()) == 24  # one process decoded, the other reused
    files = sorted(f.name for f in (tmp_path / "c" / "images").iterdir() if not f.name.endswith(".lock"))
    key = results.pop().stem
    assert files == [f"{key}.json", f"{key}.u8"]  # no temp files left behind
    mm = open_cache(tmp_path / "c" / "images" / f"{key}.u8")
    assert np.array_equal(mm[5], cache_mod.decode(paths[5], 40, 30))


def test_open_cache_is_read_only_and_a_pool_build_equals_serial_decoding(gen_paths, tmp_path):
    path = build_cache(gen_paths, 40, 30, tmp_path, num_workers=2)
    mm = open_cache(path)
    assert mm.mode == "r" and not mm.flags.writeable and mm.shape == (6, 30, 30, 3)
    with pytest.raises(ValueError):
        mm[0, 0, 0, 0] = 1
    for i in (0, 4, 5):
        assert np.array_equal(mm[i], cache_mod.decode(gen_paths[i], 40, 30))  # pool == serial decode


def test_crop_boxes_match_torchvision_get_params():
    torch.manual_seed(0)
    img = torch.zeros(1, 300, 300)
    ref = np.array([T1.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(3000)])
    ours = torch.stack(sample_crop_boxes(3000, 300, 300, generator=torch.Generator().manual_seed(1)), 1).numpy()
    area_r, area_o = ref[:, 2] * ref[:, 3], ours[:, 2] * ours[:, 3]
    aspect_r, aspect_o = ref[:, 3] / ref[:, 2], ours[:, 3] / ours[:, 2]
    for a, b in [(area_r, area_o), (aspect_r, aspect_o), (ref[:, 0], ours[:, 0]), (ref[:, 1], ours[:, 1])]:
        assert ks_2samp(a, b).pvalue > 0.01
    # Large boxes with aspect != 1 overflow the side and are redrawn, so E[scale] is ~0.479, not (0.08 + 1) / 2.
    assert abs(area_o.mean() - area_r.mean()) / 90000 < 0.015 and 0.46 < area_o.mean() / 90000 < 0.50
    assert (ours[:, 0] + ours[:, 2] <= 300).all() and (ours[:, :2] >= 0).all()


def test_crop_box_fallback_matches_torchvision_on_a_thin_image():
    # 40x300: most attempts are too tall, so the centred 40x53 fallback box (w = round(40 * 4/3)) is common.
    torch.manual_seed(0)
    img = torch.zeros(1, 40, 300)
    ref = np.array([T1.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(3000)])
    ours = torch.stack(sample_crop_boxes(3000, 40, 300, generator=torch.Generator().manual_seed(1)), 1).numpy()
    fallback = np.array([0, 123, 40, 53])
    f_ref, f_ours = (ref == fallback).all(1).mean(), (ours == fallback).all(1).mean()
    assert f_ref > 0.5 and abs(f_ref - f_ours) < 0.04
    assert ks_2samp(ref[:, 3], ours[:, 3]).pvalue > 0.01


def test_flip_and_rotation_frequencies():
    p = BatchAugment(45, 13).sample(20000, 60, 60, generator=0)
    assert abs(p.hflip.float().mean() - 0.5) < 0.015 and abs(p.vflip.float().mean() - 0.5) < 0.015
    counts = torch.bincount(p.k, minlength=4) / 20000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.012)
    q = BatchAugment(45, 13, hflip=False, vflip=False, rot90=False).sample(100, 60, 60, generator=0)
    assert not q.hflip.any() and not q.vflip.any() and (q.k == 0).all()


def test_fixed_box_resample_equals_torchvision_antialiased_resized_crop():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 60, 50, 3), dtype=torch.uint8)
    identity = BatchAugment(45, 13, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # no normalization
    t = lambda *v: torch.tensor(v)  # noqa: E731
    p = AugmentParams(top=t(0, 3, 10, 0, 5, 1, 2, 2), left=t(0, 2, 7, 0, 9, 4, 3, 3),
                      height=t(60, 30, 50, 20, 11, 57, 33, 33), width=t(50, 40, 43, 20, 13, 46, 29, 29),
                      hflip=t(0, 1, 0, 1, 1, 0, 0, 1).bool(), vflip=t(0, 0, 1, 1, 0, 1, 1, 1).bool(),
                      k=t(0, 1, 2, 3, 1, 3, 1, 2), cy=torch.full((8,), -100), cx=torch.full((8,), -100))
    y = identity.augment(x, p)
    for b in range(8):
        r = TF.resized_crop(x[b].permute(2, 0, 1), int(p.top[b]), int(p.left[b]), int(p.height[b]),
                            int(p.width[b]), [45, 45], antialias=True).float()
        r = r.flip(-1) if p.hflip[b] else r
        r = r.flip(-2) if p.vflip[b] else r
        r = torch.rot90(r, int(p.k[b]), (-2, -1))
        assert (y[b] - r).abs().max() < 0.01  # on the 0..255 scale


def test_cutout_area_fraction_matches_hand_count_and_reference():
    # out 45, hole 13 (half 6): clipped lengths 7..12 for c < 6 and c > 38, else 13 -> sum 543 over 45 centres.
    expected = (543 / 45 / 45) ** 2  # = 0.07190
    x = torch.full((2000, 60, 60, 3), 255, dtype=torch.uint8)  # white: every non-hole value is > 0
    y = BatchAugment(45, 13)(x, generator=3)
    assert abs((y == 0).all(1).float().mean().item() - expected) < 0.003
    torch.manual_seed(0)
    ref = torch.stack([Cutout(13)(torch.ones(3, 45, 45)) for _ in range(2000)])
    assert abs((ref == 0).all(1).float().mean().item() - expected) < 0.003


def test_batch_augment_output_values_and_determinism():
    colour = torch.tensor([200, 50, 120], dtype=torch.uint8)
    x = colour.view(1, 1, 1, 3).repeat(16, 60, 60, 1)
    aug = BatchAugment(45, 13)
    y = aug(x, generator=7)
    assert y.shape == (16, 3, 45, 45) and y.dtype == torch.float32
    want = (colour.float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)  # 1.436, -1.811, ...
    inside = (y != 0).all(1)  # outside the Cutout hole
    for c in range(3):
        assert torch.allclose(y[:, c][inside], want[c].expand(int(inside.sum())), atol=1e-5)
    assert torch.equal(aug(x, generator=7), y)
    z = torch.randint(0, 256, (16, 60, 60, 3), dtype=torch.uint8)
    assert torch.equal(aug(z, generator=1), aug(z, generator=1))
    assert not torch.equal(aug(z, generator=1), aug(z, generator=2))


def test_bench_quick_reports_both_rates_and_their_ratio(tmp_path):
    r = bench_pipeline(tmp_path, quick=True, workers=1)
    assert r["reference_batches_per_s"] > 0 and r["cached_batches_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["cached_batches_per_s"] / r["reference_batches_per_s"], rel=1e-12)
    assert r["sizes"] == dict(zip(("resize", "crop", "out", "cutout"), QUICK["sizes"]))
    assert r["n_images"] == 64 and len(list((tmp_path / "images").glob("*.jpg"))) == 64
    assert r["cache_build_s"] > 0 and r["machine"]["cpu_count"] == os.cpu_count()
    assert not list(tmp_path.glob("cache_*"))  # the benchmark's cache is removed afterwards
