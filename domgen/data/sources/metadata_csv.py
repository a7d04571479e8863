"""A generic source for data that is not one of the dermoscopy releases: one ``metadata.csv`` that lists
every image with its label and domain (a hospital's export, a curated subset, a new modality).

Columns ``path,label,domain`` (path relative to the folder holding the CSV), optional ``group`` (the
unit that never straddles two partitions: lesion, case) and ``patient``; a row's group is its
``group``, else its ``patient``, else the image itself (an explicit
``group`` wins; the ISIC adapters put the patient first). Labels are kept as
written: the label space is the sorted labels found unless ``data.label_space`` names one (then other
labels are dropped and counted). Any other column is kept as metadata, so ``data.domain_by`` can
re-partition by it. Chosen with ``--set data.layout=metadata_csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import DataLayoutError, LoadResult, make_records, safe_join

METADATA = "metadata.csv"
REQUIRED = ["path", "label", "domain"]
NAME = "metadata_csv"
LAYOUT = (f"{METADATA} with columns path,label,domain (optional group, patient; paths relative to the "
          "folder holding it) and the image files it lists")
RESERVED = ("all", "none")  # the summary's total row; data.primary=none


def check_domain_names(names, source: str, where: str) -> None:
    """Domain names that every table, ``--holdout`` and ``data.primary`` can use unambiguously."""
    for name in names:
        if name.lower() in RESERVED or "," in name:
            raise DataLayoutError(f"{source}: {where}: domain name {name!r} is reserved or holds a comma "
                                  f"(not usable in data.holdout / data.primary); rename it. Expected layout: {LAYOUT}")


def _require_cells(meta: pd.DataFrame, columns: list[str], listing: Path) -> None:
    """Every row has a value in ``columns``; the error names the file's line (header = line 1)."""
    for column in columns:
        empty = np.flatnonzero((meta[column].str.strip() == "").to_numpy())  # row positions, not index labels
        if len(empty):
            lines = ", ".join(str(i + 2) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise DataLayoutError(f"{NAME}: {listing} line {lines}: empty {column!r} ({len(empty)} row(s)); every "
                                  f"image needs a path, a label and a domain. Expected layout: {LAYOUT}")


def _refuse_repeats(paths: pd.Series, listing: Path) -> None:
    repeated = paths[paths.duplicated(keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        lines = ", ".join(str(i + 2) for i in np.flatnonzero((paths == first).to_numpy()))  # positions: the index may be labels
        raise DataLayoutError(f"{NAME}: {listing} lists {first!r} more than once (lines {lines}); an image "
                              f"is one row. Expected layout: {LAYOUT}")


class MetadataCsv:
    name = NAME
    layout = LAYOUT

    def load_root(self, root: Path, skip_missing: bool = False) -> dict[str, LoadResult]:
        """Domain -> its records, in sorted domain order."""
        root = Path(root)
        listing = root / METADATA
        meta = _io.read_csv(listing, NAME, LAYOUT, REQUIRED)
        repeated = sorted(set(meta.columns[meta.columns.duplicated()]))
        if repeated:
            raise DataLayoutError(f"{NAME}: {listing} names column(s) {', '.join(map(repr, repeated))} twice. "
                                  f"Expected layout: {LAYOUT}")
        _require_cells(meta, REQUIRED, listing)
        rows = meta.copy()
        for column in ("path", "label", "domain"):
            rows[column] = rows[column].str.strip()
        _refuse_repeats(rows["path"], listing)
        check_domain_names(sorted(set(rows["domain"])), NAME, str(listing))
        group = rows["group"] if "group" in rows else pd.Series("", index=rows.index)
        patient = rows["patient"] if "patient" in rows else pd.Series("", index=rows.index)
        rows["group"] = [g.strip() or p.strip() or path for g, p, path in zip(group, patient, rows["path"])]
        rows["image_id"] = [Path(p).stem for p in rows["path"]]
        rows["path"] = [safe_join(root, p, NAME) for p in rows["path"]]
        ok = _io.check_images([Path(p) for p in rows["path"]], NAME, listing, skip_missing)
        missing = rows.loc[[not g for g in ok]]
        kept = rows.loc[ok]
        return {d: LoadResult(f"{NAME}:{d}", d, root, make_records(kept[kept["domain"] == d].drop(columns="domain"), d),
                              missing=[str(p) for p in missing.loc[missing["domain"] == d, "path"]])
                for d in sorted(set(rows["domain"]))}
