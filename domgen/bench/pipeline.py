"""Training batches per second: per-image PIL pipeline vs decode-once cache + batched augmentation.

(a) reference: :class:`ImageFolderDataset` with :func:`reference_train_transform` in a DataLoader, the
    way the paper's recipe (Yoon et al., MICCAI 2019, Sec. 3) is usually run: decode, resize to 650,
    centre crop 300, random resized crop 224, flips, rot90, normalize, Cutout, for every image every epoch;
(b) domgen: :func:`build_cache` once (``workers`` processes decode), then ``Inputs.train_batches`` as
    training runs it: a prefetch thread reads one sorted memmap gather per batch (no worker processes)
    and :class:`BatchAugment` runs on ``device``.

Both read the same images in shuffled batches of one size; (a) decodes in ``workers`` DataLoader
processes, (b) uses torch's threads as training sets them. Timing starts when the first
batch arrives (worker start-up excluded) and covers the next ``n_batches`` batches. Memory is the peak
resident set (``getrusage`` maxrss) of this process and of its reaped children; it includes file-backed
pages of the memmap, which are shared, reclaimable page cache. The cache build's Python/numpy heap peak
is measured separately with ``tracemalloc`` (it stays near one chunk of images).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from domgen.bench.contention import busy_processes, conditions
from domgen.config import DataConfig, TransformConfig
from domgen.data.transforms import ImageFolderDataset, reference_train_transform
from domgen.engine.inputs import Inputs
from domgen.threads import thread_budget

IMAGE_SIZE = (600, 450)  # (width, height) of a HAM10000 image
QUICK = {"n_images": 64, "sizes": (130, 60, 45, 13), "batch_size": 16, "n_batches": 3}


def make_synthetic_tree(root: Path, n_images: int, size=IMAGE_SIZE, quality: int = 90, seed: int = 0) -> list[str]:
    """Write ``n_images`` random smooth RGB JPEGs to ``root/images`` (existing files are kept); return paths.

    Each image is a bicubic upsampling of 6x8 random colours plus slight grain (sigma 2). These files
    (~34 KB) decode several times faster than real HAM10000 JPEGs (~270 KB), which flatters the
    per-image reference, so the measured speed-up is conservative.
    """
    folder = Path(root) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"img_{i:05d}.jpg") for i in range(n_images)]
    for i, p in enumerate(paths):
        if os.path.exists(p):
            continue
        rng = np.random.default_rng([seed, i])
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        arr = np.asarray(small.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        arr = np.clip(arr + rng.normal(0.0, 2.0, arr.shape), 0, 255).astype(np.uint8)
        tmp = f"{p}.{os.getpid()}.tmp"
        Image.fromarray(arr).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, p)  # a half-written JPEG is never visible under its final name
    return paths


def _rate(batches, n_batches: int, step=None, sync=None) -> float:
    """Batches per second over ``n_batches`` batches after the first one; ``step`` consumes each batch."""
    it = iter(batches)
    first = next(it)
    if step is not None:
        step(first)
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        batch = next(it)
        if step is not None:
            step(batch)
    if sync is not None:
        sync()
    elapsed = time.perf_counter() - t0
    del it  # shuts the workers down so getrusage(RUSAGE_CHILDREN) sees them
    return n_batches / elapsed


def _loader(dataset, batch_size: int, workers: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      generator=g, persistent_workers=False)


def _maxrss_mb() -> dict[str, float]:
    # ru_maxrss is in KiB on Linux.
    return {
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _machine(device: torch.device) -> dict:
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device), "platform": platform.platform(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()}


@contextlib.contextmanager
def _torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _build_inputs(cache_dir: str, paths, labels, sizes, workers: int, device) -> tuple[Inputs, dict]:
    """Build the cache (timed, heap traced; ``workers`` decode) and return domgen's training input path."""
    tracemalloc.start()
    t0 = time.perf_counter()
    data = DataConfig(cache_dir=cache_dir, workers=workers)
    inputs = Inputs(paths, np.asarray(labels, dtype=np.int64), TransformConfig(*sizes), data, device)
    build_s = time.perf_counter() - t0
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return inputs, {"cache_build_s": build_s, "cache_build_heap_peak_mb": heap_peak / 2**20}


def _rates(ref: ImageFolderDataset, inputs: Inputs, n_images: int, batch_size: int, workers: int, seed: int,
           n_batches: int, device) -> dict:
    """(a) the reference DataLoader and (b) ``Inputs.train_batches`` as training runs it (a prefetched,
    sorted memmap gather per batch + BatchAugment on ``device``), under the current load."""
    rate_a = _rate(_loader(ref, batch_size, workers, seed), n_batches)
    order = np.random.default_rng(seed).permutation(n_images)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    rate_b = _rate(inputs.train_batches(order, batch_size, seed), n_batches, None, sync)
    return {"reference_batches_per_s": rate_a, "cached_batches_per_s": rate_b, "ratio": rate_b / rate_a}


def bench_pipeline(root: Path, n_images: int = 2000, batch_size: int = 32, workers: int = 2,
                   sizes: tuple[int, int, int, int] = (650, 300, 224, 64), n_batches: int | None = None,
                   quick: bool = False, device: str | torch.device = "cpu", seed: int = 0,
                   threads: int | None = None, contention: int = 0) -> dict:
    """Measure (a) the reference and (b) the cached pipeline; return rates, ratio, build time, memory.

    ``sizes`` is ``(resize, crop, out, cutout)``. ``n_batches`` defaults to one epoch less the first
    batch, at most 60. ``quick=True`` overrides images, sizes, batch size and batches with ``QUICK``.
    (a) uses ``workers`` DataLoader processes (this process only receives batches); (b) uses torch's
    threads as training sets them (:func:`domgen.threads.thread_budget`, or ``threads``), since its
    per-batch work is one memmap read by a prefetch thread plus the batched augmentation; ``workers``
    processes decode the one-off cache build. ``contention > 0`` measures both again beside that many
    busy processes of our own and reports them under ``"contended"``.
    """
    if quick:
        n_images, sizes = QUICK["n_images"], QUICK["sizes"]
        batch_size, n_batches = QUICK["batch_size"], QUICK["n_batches"]
    if n_batches is None:
        n_batches = min(60, n_images // batch_size - 1)
    if n_batches < 1 or (n_batches + 1) * batch_size > n_images:
        raise ValueError(f"{n_images} images cannot give {n_batches} + 1 batches of {batch_size}")
    device = torch.device(device)
    rss_at_start = _maxrss_mb()["peak_rss_self_mb"]  # torch's import alone is several hundred MB
    paths = make_synthetic_tree(Path(root), n_images)
    labels = [i % 7 for i in range(n_images)]
    ref = ImageFolderDataset(paths, labels, reference_train_transform(*sizes))
    budget = thread_budget(True, workers, threads or 0)
    out: dict = {}
    with _torch_threads(budget.torch), tempfile.TemporaryDirectory(dir=root, prefix="cache_") as cache_dir:
        inputs, build = _build_inputs(cache_dir, paths, labels, sizes, workers, device)
        for name, n_busy in conditions(contention).items():
            with busy_processes(n_busy):
                out[name] = _rates(ref, inputs, n_images, batch_size, workers, seed, n_batches, device) | {"busy_processes": n_busy}
        machine = _machine(device)
    return {
        "n_images": n_images, "batch_size": batch_size, "workers": workers, "n_batches": n_batches,
        "sizes": dict(zip(("resize", "crop", "out", "cutout"), sizes)), **out.pop("idle"), **out, **build,
        "rss_at_start_mb": rss_at_start, **_maxrss_mb(), "machine": machine | {"usable_cores": budget.cores},
    }
