"""HAM10000 (Tschandl, Rosendahl & Kittler, Sci. Data 2018): 10,015 dermoscopic images, 7 classes.

The `dx` codes are the paper's seven classes (Yoon et al., MICCAI 2019, Table 1, HAM row:
nv 6705, mel 1113, bcc 514, df 115, bkl 1099, vasc 142, akiec 327). Group: `lesion_id`, since the
release holds several images of one lesion. See datasets/HAM10000.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, LoadResult, find_release, safe_join

METADATA = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images")
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]  # + optional `dataset`


def label_metadata(meta: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Metadata rows -> labelled rows (label, group, image_id, then the metadata columns) and the count
    of images per unmapped `dx`. Needs no images, so Table 1 can be checked from the CSV alone."""
    rows = meta.copy()
    rows["group"] = rows["lesion_id"]
    kept, dropped = _io.apply_labels(rows, Ham10000.name, rows["dx"])
    return kept, dropped


class Ham10000(_io.SourceBase):
    name = "HAM10000"
    layout = (
        f"{METADATA} (columns {','.join(COLUMNS)}[,dataset]) and <image_id>.jpg in "
        f"{'/, '.join(IMAGE_DIRS)}/"
    )

    def find_release(self, folder: Path) -> Path:
        return find_release(folder, METADATA, self.name, self.layout)

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult:
        root = self.find_release(folder)
        meta = _io.read_csv(root / METADATA, self.name, self.layout, COLUMNS)
        rows, dropped = label_metadata(meta)
        # Search the image folders that exist; an absent image is reported under the first of them.
        dirs = [d for d in IMAGE_DIRS if (root / d).is_dir()] or list(IMAGE_DIRS[:1])
        rows["path"] = [self._locate(root, image_id, dirs) for image_id in rows["image_id"]]
        return _io.finish(self, root, rows, root / METADATA, skip_missing, dropped)

    def _locate(self, root: Path, image_id: str, dirs: list[str]) -> Path:
        candidates = [safe_join(root, f"{d}/{image_id}.jpg", self.name) for d in dirs]
        return next((p for p in candidates if p.is_file()), candidates[0])


SOURCES.add(Ham10000.name, Ham10000())
