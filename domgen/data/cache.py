"""Decode each image once: a uint8 ``[N, crop, crop, 3]`` memmap of ``centre_crop(resize(img))``.

The cache holds the deterministic front of the paper's pipeline (resize to ``resize x resize``, centre
crop ``crop``), computed with the same PIL calls as :func:`domgen.data.transforms.resize_centre_crop`,
so its pixels equal the reference exactly. Random augmentation then runs per batch on the device
(:mod:`domgen.data.batch_augment`).

Layout: ``<cache_dir>/images/<key>.u8`` (raw C-order uint8) plus ``<key>.json`` (shape, dtype, key
inputs). The key hashes the paths, their sizes and mtimes, ``resize``, ``crop`` and ``FORMAT_VERSION``,
so editing a file or changing a size builds a new cache while an unchanged one is reused.

Building is safe across processes: an ``fcntl.flock`` on ``<key>.lock`` serializes builders; the loser
waits and then finds the finished cache. Data go to a temp file in the same folder, written in chunks
through ``r+`` memmap windows that are unmapped after each flush (resident memory stays at one chunk,
where one ``w+`` map of the whole file would keep every written page resident), then ``os.replace``
publishes it; the sidecar is published last, so its presence marks a complete cache.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from domgen.atomic import atomic_path, exclusive, remove_stale_temporaries, write_text_atomic
from domgen.data.transforms import load_rgb, resize_centre_crop

FORMAT_VERSION = 1
CHUNK = 64  # images written between memmap flushes


def cache_key(paths: Sequence[str], resize: int, crop: int) -> tuple[str, dict]:
    """Hash of (absolute paths, sizes, mtimes, resize, crop, format version) and the inputs hashed."""
    files = []
    for p in paths:
        st = os.stat(p)
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    inputs = {"version": FORMAT_VERSION, "resize": int(resize), "crop": int(crop), "files": files}
    blob = json.dumps(inputs, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32], inputs


def decode(path: str, resize: int, crop: int) -> np.ndarray:
    """One image -> uint8 ``[crop, crop, 3]``, bit-identical to the reference's resize + centre crop."""
    return np.asarray(resize_centre_crop(load_rgb(path), resize, crop), dtype=np.uint8)


def _decode_star(args: tuple[str, int, int]) -> np.ndarray | str:
    """The image, or the reason it does not decode (an exception would surface as a pool traceback)."""
    try:
        return decode(*args)
    except Exception as err:  # PIL: OSError for a truncated JPEG, SyntaxError, ValueError ...
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def _sidecar(data_path: Path) -> Path:
    return data_path.with_suffix(".json")


def _is_complete(data_path: Path) -> bool:
    side = _sidecar(data_path)
    if not (side.exists() and data_path.exists()):
        return False
    meta = json.loads(side.read_text())
    return data_path.stat().st_size == int(np.prod(meta["shape"]))


def _tick(progress, n: int) -> None:
    if progress is None:
        return
    (progress.update if hasattr(progress, "update") else progress)(n)


def _write_images(tmp: Path, paths: Sequence[str], resize: int, crop: int, num_workers: int, progress) -> None:
    """Decode ``paths`` into the raw file ``tmp`` in order, ``CHUNK`` images per ``r+`` memmap window.

    Each window is unmapped after its flush, so resident memory stays at one chunk (plus the pool's few
    in-flight images) however many images there are.
    """
    row = crop * crop * 3
    with open(tmp, "r+b") as f:
        f.truncate(len(paths) * row)  # sparse full-size file; windows below fill it
    jobs = [(p, resize, crop) for p in paths]
    pool = multiprocessing.get_context().Pool(num_workers) if num_workers > 0 else None
    try:
        # imap keeps order and hands results over one by one, so only a few images are in flight.
        it = iter(pool.imap(_decode_star, jobs, chunksize=4) if pool else map(_decode_star, jobs))
        failures: dict[str, str] = {}
        for start in range(0, len(jobs), CHUNK):
            n = min(CHUNK, len(jobs) - start)
            window = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=start * row, shape=(n, crop, crop, 3))
            for i in range(n):
                img = next(it)
                if isinstance(img, str):
                    failures[str(paths[start + i])] = img
                else:
                    window[i] = img
            window.flush()
            del window
            _tick(progress, n)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if failures:  # raised inside atomic_path: the partial file is removed, nothing is published
        from domgen.data.verify import undecodable_error

        raise undecodable_error(failures)


def build_cache(
    paths: Sequence[str],
    resize: int,
    crop: int,
    cache_dir: Path,
    progress: Callable[[int], object] | None = None,
    num_workers: int = 0,
) -> Path:
    """Build (or reuse) the cache of ``centre_crop(resize(img, resize), crop)`` for ``paths``; return its path.

    ``progress`` is called with the number of images just written (or its ``.update`` if tqdm-like).
    ``num_workers > 0`` decodes in a process pool. Returns ``<cache_dir>/images/<key>.u8``.
    """
    if len(paths) == 0:
        raise ValueError("build_cache needs at least one path")
    key, inputs = cache_key(paths, resize, crop)
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / f"{key}.u8"
    if _is_complete(data_path):
        return data_path
    with exclusive(folder / f"{key}.lock"):  # a concurrent builder waits here, then reuses our result
        if not _is_complete(data_path):
            _build_locked(data_path, inputs, paths, resize, crop, num_workers, progress)
    return data_path


def _build_locked(data_path: Path, inputs: dict, paths, resize, crop, num_workers, progress) -> None:
    # A builder killed before us left its partial file (the whole cache's size): ours replaces it.
    remove_stale_temporaries(data_path.parent, of=(data_path.name, _sidecar(data_path).name))
    # The sidecar goes last: _is_complete needs it, so a kill before it leaves no half-valid cache.
    with atomic_path(data_path) as tmp:
        _write_images(tmp, paths, resize, crop, num_workers, progress)
    meta = {"shape": [len(paths), crop, crop, 3], "dtype": "uint8", "order": "C", "key_inputs": inputs}
    write_text_atomic(_sidecar(data_path), json.dumps(meta))


def open_cache(data_path: Path) -> np.memmap:
    """Open a built cache read-only: uint8 memmap ``[N, crop, crop, 3]`` (shape from the sidecar)."""
    data_path = Path(data_path)
    if not _is_complete(data_path):
        raise FileNotFoundError(f"no complete image cache at {data_path} (run build_cache first)")
    meta = json.loads(_sidecar(data_path).read_text())
    return np.memmap(data_path, dtype=np.dtype(meta["dtype"]), mode="r", shape=tuple(meta["shape"]))
