"""Derm7pt, the seven-point checklist dataset (Kawahara et al., IEEE JBHI 2019), release_v0.

Each case has a clinical and a dermoscopic image; both are records (column `modality`) in one group,
the case, so they never straddle two partitions. Yoon et al., MICCAI 2019, Table 1 counts images:
nv 1150, mel 504, bcc 84, df 40, bkl 90, vasc 58 (lentigo, melanosis, miscellaneous dropped).
See datasets/Derm7pt.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, LoadResult, find_release, safe_join

METADATA = "meta/meta.csv"
IMAGES = "images"
COLUMNS = [
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
    "case_id", "notes",
]
MODALITIES = ("clinic", "derm")  # the meta.csv columns holding each case's two image paths
REQUIRED = ["case_num", "diagnosis", *MODALITIES]


def _case_index(images: Path) -> dict[str, Path]:
    """Lower-cased path relative to images/ -> file on disk: the CSV's folder and file case often
    differs from the release's (e.g. `NEL/Nel026.jpg` vs `nel/NEL026.JPG`)."""
    if not images.is_dir():
        return {}
    return {p.relative_to(images).as_posix().lower(): p for p in images.rglob("*") if p.is_file()}


class Derm7pt(_io.SourceBase):
    name = "Derm7pt"
    layout = f"{METADATA} (columns {','.join(COLUMNS)}) with clinic/derm paths relative to {IMAGES}/"

    def find_release(self, folder: Path) -> Path:
        return find_release(folder, METADATA, self.name, self.layout)

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult:
        root = self.find_release(folder)
        meta = _io.read_csv(root / METADATA, self.name, self.layout, REQUIRED)
        images = (root / IMAGES).resolve()
        index = _case_index(images)
        rows = []
        for modality in MODALITIES:
            # One row per image: the case's metadata without the two path columns, plus the modality.
            part = meta.drop(columns=list(MODALITIES)).assign(modality=modality)
            part["path"] = [self._locate(images, rel, index) for rel in meta[modality]]
            part["image_id"] = [Path(rel).stem for rel in meta[modality]]
            part["group"] = meta["case_num"]
            part["_order"] = range(len(meta))
            rows.append(part)
        # Case-major order: case 1 clinic, case 1 derm, case 2 clinic, ...
        table = pd.concat(rows).sort_values("_order", kind="stable").drop(columns="_order")
        kept, dropped = _io.apply_labels(table, self.name, table["diagnosis"])
        return _io.finish(self, root, kept, root / METADATA, skip_missing, dropped)

    def _locate(self, images: Path, rel: str, index: dict[str, Path]) -> Path:
        path = safe_join(images, rel, self.name)
        return index.get(path.relative_to(images).as_posix().lower(), path)


SOURCES.add(Derm7pt.name, Derm7pt())
