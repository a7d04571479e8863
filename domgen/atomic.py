"""Atomic file writes: a reader sees either no file or a whole one, even if a run is killed mid-write
or two processes race. Write to a unique temporary file beside the target, fsync, then rename.

The file gets the mode any ``open()`` would give it (0666 less the umask), not ``mkstemp``'s 0600, so a
group sharing a cluster disk can read checkpoints, configs and caches as the umask intends."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator


_UMASK_GUARD = threading.Lock()


def file_mode() -> int:
    """0666 less the process's umask (read by setting and restoring it, hence the guard)."""
    with _UMASK_GUARD:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``; on success ``tmp`` replaces ``p``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path, keep: tuple[str, ...] = (), of: tuple[str, ...] | None = None) -> tuple[int, int]:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` when its process was killed mid-write (a
    SIGKILL or a lost node runs no ``finally``): those of the file names in ``of`` (default: any name), except
    those of the names in ``keep``. Returns (files removed, bytes freed). Only for files no other process is
    writing now: a run folder its owner has locked (every name), a cache entry whose builder lock is held
    (``of`` that entry's files)."""
    removed = freed = 0
    for tmp in Path(folder).glob(".*.tmp"):  # a missing folder has none
        target = tmp.name[1:].rsplit(".", 2)[0]  # ".last.pt.k3j9x2.tmp" -> "last.pt"
        if target in keep or (of is not None and target not in of) or not tmp.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            size = tmp.stat().st_size
            tmp.unlink()
            removed, freed = removed + 1, freed + size
    return removed, freed


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def exclusive(lock_path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block: concurrent builders
    of one cache entry take turns, so the second finds the first's result instead of building it again.
    The lock dies with the process, so a killed holder never blocks the next."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
