"""The narrow interface every data source implements: a folder in its native layout -> a record table.

A record is one image: ``path`` (absolute), ``label`` (a class of its label space), ``domain`` (short code),
``group`` (the unit that must never straddle two partitions: lesion, case, patient or image) and
``image_id``, followed by the source's own metadata columns. Loading never half-succeeds silently:
unmapped diagnoses are dropped *and counted*; missing images raise (or, with ``skip_missing``, are
dropped and counted); a path that would leave the source folder is refused.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from domgen.errors import DomgenError
from domgen.registry import Registry

RECORD_COLUMNS = ["path", "label", "domain", "group", "image_id"]


class DataLayoutError(DomgenError, ValueError):
    """A source folder does not hold what its native layout promises. The message names the source,
    the file and the expected layout."""


@dataclass
class LoadResult:
    """What one source yields: the records kept and an account of everything that was not kept."""

    source: str  # folder name, e.g. "HAM10000"
    domain: str  # short code, e.g. "HAM"
    root: Path  # the release folder actually read (after resolving a nested release folder)
    records: pd.DataFrame  # RECORD_COLUMNS first, then the source's metadata columns
    dropped_labels: Counter = field(default_factory=Counter)  # diagnosis -> number of images dropped
    missing: list[str] = field(default_factory=list)  # listed images absent on disk (skip_missing only)
    regrouped: int = 0  # images whose group differs from the pre-#13 rule (ISIC: lesion before patient)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped_labels.values()) + len(self.missing)


class Source(Protocol):
    name: str  # folder name under the data root
    domain: str  # short code
    layout: str  # one-line description of the native layout, quoted in errors

    def find_release(self, folder: Path) -> Path: ...

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult: ...


SOURCES: Registry[Source] = Registry("data source")


def find_release(folder: Path, marker: str, source: str, layout: str) -> Path:
    """The folder itself if it holds ``marker`` (a file or folder name, '/'-separated), else its one
    nested release folder that does (e.g. ``PH2Dataset/``, ``release_v0/``)."""
    folder = Path(folder)
    if (folder / marker).exists():
        return folder
    nested = [p for p in sorted(folder.iterdir()) if p.is_dir() and (p / marker).exists()] if folder.is_dir() else []
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise DataLayoutError(
            f"{source}: {folder} holds several release folders with {marker} "
            f"({', '.join(p.name for p in nested)}); keep one. Expected layout: {layout}"
        )
    raise DataLayoutError(f"{source}: {marker} not found in {folder} or one folder below it. Expected layout: {layout}")


def safe_join(root: Path, relative: str, source: str) -> Path:
    """``root / relative``, refused when it would leave ``root`` (absolute paths, ``..``, symlinks out)."""
    if "\x00" in relative or any(len(part.encode()) > 255 for part in Path(relative).parts):
        shown = relative if len(relative) < 80 else relative[:60] + f"... ({len(relative)} characters)"
        raise DataLayoutError(f"{source}: {shown!r} is not a usable file name (a NUL byte or a name over 255 bytes); "
                              "the metadata file is probably corrupt")
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if os.path.commonpath([root, candidate]) != str(root):
        raise DataLayoutError(f"{source}: path {relative!r} would leave the source folder {root}; refused")
    return candidate


def check_missing(paths: list[Path], source: str, listing: Path, skip_missing: bool) -> list[bool]:
    """Which listed images exist. Raise naming the first few absent ones unless ``skip_missing``."""
    present = [p.is_file() for p in paths]
    absent = [str(p) for p, ok in zip(paths, present) if not ok]
    if absent and not skip_missing:
        shown = "\n  ".join(absent[:5])
        more = f"\n  ... and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise DataLayoutError(
            f"{source}: {len(absent)} image(s) listed in {listing} are missing:\n  {shown}{more}\n"
            "Pass --skip-missing to drop and count them instead."
        )
    return present


def make_records(rows: pd.DataFrame, domain: str) -> pd.DataFrame:
    """Order columns as RECORD_COLUMNS + metadata, with a fresh index and string group ids."""
    rows = rows.copy()
    rows["domain"] = domain
    rows["group"] = rows["group"].astype(str)
    rows["path"] = rows["path"].astype(str)
    meta = [c for c in rows.columns if c not in RECORD_COLUMNS]
    return rows[RECORD_COLUMNS + meta].reset_index(drop=True)
