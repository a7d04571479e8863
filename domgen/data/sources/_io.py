"""Helpers the source adapters share: locating a release, reading its metadata, mapping labels and
turning labelled rows into a ``LoadResult`` with every dropped image accounted for.

Extends ``base.check_missing`` with the "unreadable" case: a listed file that exists but whose header
PIL cannot identify (a truncated download, an HTML error page saved as ``.jpg``). Only the header is
read, so checking a whole release stays cheap.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from domgen.data.sources.base import DataLayoutError, LoadResult, check_missing, make_records
from domgen.data.sources.spec import SyntheticSpec


class SourceBase:
    """Everything one dataset declares, in its own module: where it lives, what it is called in tables,
    how its diagnoses map onto a label space, what a group is, and how the synthetic benchmark draws it.
    ``domgen.data.labels`` derives the global lists (DOMAINS, DOMAIN_CODES, TABLE2_DOMAINS) from these."""

    name: str  # folder name under the data root
    domain: str  # short code used in every table and in --holdout
    layout: str  # one-line description of the native layout, quoted in errors
    label_map: dict[str, str]  # native diagnosis -> class of ``label_space``; anything else is dropped
    label_space: str = "dermoscopy7"
    case_insensitive: bool = False  # match diagnoses lower-cased (free-text vocabularies)
    grouping: str = "the image"  # the unit that never straddles two partitions, in words
    order: int = 100  # row in ``summary`` (Table 1 of Yoon et al.); new sources go after the seven
    table2: int | None = None  # column in Table 2 of Yoon et al.; None: not a column there
    primary: bool = False  # the primary (source) domain of Yoon et al.'s protocol
    synthetic: SyntheticSpec | None = None  # its part of the synthetic benchmark, if any

    def map_label(self, diagnosis: str) -> str | None:
        """Class of ``diagnosis`` (in this source's own vocabulary), or None when it lies outside the map."""
        key = str(diagnosis).strip()
        return self.label_map.get(key.lower() if self.case_insensitive else key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def find_release_any(folder: Path, markers: list[str], source: str, layout: str) -> Path:
    """Like ``base.find_release`` but the release is marked by *any* of ``markers`` (PH2 ships an xlsx
    or a txt; Dermofit has only its class folders)."""
    folder = Path(folder)

    def marked(p: Path) -> bool:
        return any((p / m).exists() for m in markers)

    if marked(folder):
        return folder
    nested = [p for p in sorted(folder.iterdir()) if p.is_dir() and marked(p)] if folder.is_dir() else []
    if len(nested) == 1:
        return nested[0]
    wanted = " or ".join(markers)
    if nested:
        raise DataLayoutError(
            f"{source}: {folder} holds several release folders with {wanted} "
            f"({', '.join(p.name for p in nested)}); keep one. Expected layout: {layout}"
        )
    raise DataLayoutError(f"{source}: {wanted} not found in {folder} or one folder below it. Expected layout: {layout}")


def read_csv(path: Path, source: str, layout: str, required: list[str]) -> pd.DataFrame:
    """The metadata table as strings (empty cells are ""), checked for the ``required`` columns.

    Everything stays a string so that ids never turn into floats and "non-empty" is a plain test."""
    if not path.is_file():
        raise DataLayoutError(f"{source}: metadata file {path} not found. Expected layout: {layout}")
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{source}: {path} is empty (no header line). Expected layout: {layout}") from None
    except pd.errors.ParserError as err:
        raise DataLayoutError(f"{source}: {path}{_csv_where(str(err))}; fix or remove that row. Expected layout: {layout}") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataLayoutError(f"{source}: {path} line {line} is not UTF-8 text (byte {err.object[err.start]:#04x}); "
                              "save the file as UTF-8") from None
    except ValueError as err:  # e.g. NUL bytes or a field beyond the C parser's limits
        raise DataLayoutError(f"{source}: {path} cannot be read as CSV ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    require_columns(table, required, source, path, layout)
    return table


def _csv_where(message: str) -> str:
    """pandas' 'Expected 7 fields in line 3, saw 8' -> ' line 3: 8 fields where the header has 7'."""
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if m:
        return f" line {m.group(2)}: {m.group(3)} fields where the header has {m.group(1)}"
    m = re.search(r"line (\d+)", message)
    detail = message.strip().splitlines()[-1] if message.strip() else "unreadable"
    return f" line {m.group(1)}: {detail}" if m else f": {detail}"


def require_columns(table: pd.DataFrame, required: list[str], source: str, path: Path, layout: str) -> None:
    absent = [c for c in required if c not in table.columns]
    if absent:
        raise DataLayoutError(
            f"{source}: {path} lacks column(s) {', '.join(absent)} (has {', '.join(map(str, table.columns))}). "
            f"Expected layout: {layout}"
        )


def apply_labels(rows: pd.DataFrame, source: SourceBase, diagnosis: pd.Series) -> tuple[pd.DataFrame, Counter]:
    """Rows whose ``diagnosis`` is in ``source``'s label map, with a ``label`` column, and the count of
    images per unmapped diagnosis (an empty diagnosis is counted as "(missing)")."""
    mapped = [source.map_label(str(d)) for d in diagnosis]
    keep = [m is not None for m in mapped]
    dropped = Counter(str(d).strip() or "(missing)" for d, k in zip(diagnosis, keep) if not k)
    kept = rows.loc[keep].copy()
    kept["label"] = [m for m in mapped if m is not None]
    return kept, dropped


def is_readable(path: Path) -> bool:
    """PIL can identify the file from its header (the pixels are not decoded)."""
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError):
        return False


def check_images(paths: list[Path], source: str, listing: Path, skip_missing: bool) -> list[bool]:
    """``base.check_missing`` plus the unreadable case: which listed images exist *and* open."""
    present = check_missing(paths, source, listing, skip_missing)
    readable = [ok and is_readable(p) for p, ok in zip(paths, present)]
    broken = [str(p) for p, ok, r in zip(paths, present, readable) if ok and not r]
    if broken and not skip_missing:
        shown = "\n  ".join(broken[:5])
        more = f"\n  ... and {len(broken) - 5} more" if len(broken) > 5 else ""
        raise DataLayoutError(
            f"{source}: {len(broken)} image(s) listed in {listing} are unreadable (PIL cannot identify them):"
            f"\n  {shown}{more}\nPass --skip-missing to drop and count them instead."
        )
    return readable


def finish(src: SourceBase, root: Path, rows: pd.DataFrame, listing: Path, skip_missing: bool,
           dropped: Counter) -> LoadResult:
    """Check the images of the labelled ``rows`` (columns path, label, group, image_id, metadata...) and
    build the LoadResult. Only images that would be kept are checked: an absent image of a dropped
    diagnosis is no reason to fail."""
    paths = [Path(p) for p in rows["path"]]
    ok = check_images(paths, src.name, listing, skip_missing)
    missing = [str(p) for p, good in zip(paths, ok) if not good]
    records = make_records(rows.loc[ok] if len(rows) else rows, src.domain)
    return LoadResult(src.name, src.domain, root, records, Counter(dropped), missing)
