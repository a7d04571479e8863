"""Full decoding of every image, for what a header check cannot see: a JPEG truncated mid-scan (the
commonest fault of an interrupted download) opens fine and fails only when its pixels are read.

Used by ``load_catalog`` when ``skip_missing`` is set (such images are then dropped and counted like
missing ones, before splits exist) and by ``summary --verify``; the image cache reports the same faults
when it decodes (:func:`undecodable_error`). Files that decoded once are remembered by path, size and
mtime in ``<cache_dir>/decoded-ok.json``, so a second load costs one ``stat`` per image.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from domgen.atomic import exclusive, write_text_atomic
from domgen.data.labels import DOMAIN_CODES
from domgen.errors import ImageDecodeError

RECORD = "decoded-ok.json"


def decode_error(path: str | os.PathLike) -> str | None:
    """None when every pixel of ``path`` decodes, else PIL's reason ('image file is truncated ...')."""
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def source_of(path: str) -> str:
    """The source folder a path lies in ('HAM10000'), or '?'."""
    parts = Path(path).parts
    return next((p for p in reversed(parts) if p in DOMAIN_CODES), "?")


def undecodable_error(failures: dict[str, str]) -> ImageDecodeError:
    """One message for images whose pixels do not decode: the source, the first files and the fix."""
    first, why = next(iter(failures.items()))
    sources = sorted({source_of(p) for p in failures})
    more = f" and {len(failures) - 1} more" if len(failures) > 1 else ""
    return ImageDecodeError(
        f"{', '.join(sources)}: {len(failures)} image(s) cannot be decoded ({why}): {first}{more}. "
        "Replace them, or pass --skip-missing to drop and count them (`summary --verify` lists every one)"
    )


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def find_undecodable(paths: Sequence[str], cache_dir: Path, workers: int = 0, progress=None) -> dict[str, str]:
    """path -> reason for every path whose pixels do not decode; the rest are remembered as good."""
    record_path = Path(cache_dir) / RECORD
    known = _read(record_path)
    todo = [p for p in map(str, paths) if known.get(p) != _stamp(p)]
    failures: dict[str, str] = {}
    if todo:
        pool = multiprocessing.get_context().Pool(workers) if workers > 0 and len(todo) > 16 else None
        try:
            results = pool.imap(decode_error, todo, chunksize=8) if pool else map(decode_error, todo)
            for p, err in zip(todo, results):
                if err is None:
                    known[p] = _stamp(p)
                else:
                    failures[p] = err
                if progress is not None:
                    progress.update(1)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        _merge(record_path, {p: known[p] for p in todo if p in known})
    return failures


def _read(path: Path) -> dict[str, list[int]]:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _merge(path: Path, new: dict[str, list[int]]) -> None:
    """Add ``new`` to the record under a lock, so concurrent loaders do not drop each other's entries."""
    if not new:
        return
    with exclusive(path.with_suffix(".lock")):
        write_text_atomic(path, json.dumps(_read(path) | new))
