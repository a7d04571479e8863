"""HAM10000 (Tschandl, Rosendahl & Kittler, Sci. Data 2018): 10,015 dermoscopic images, 7 classes.

The `dx` codes are the paper's seven classes (Yoon et al., MICCAI 2019, Table 1, HAM row:
nv 6705, mel 1113, bcc 514, df 115, bkl 1099, vasc 142, akiec 327). Group: `lesion_id`, since the
release holds several images of one lesion. See datasets/HAM10000.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from domgen.data.label_space import DERMOSCOPY7
from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, LoadResult, find_release, safe_join
from domgen.data.sources.spec import Acquisition, SyntheticSpec, age, pick

METADATA = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images")
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]  # + optional `dataset`


def label_metadata(meta: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Metadata rows -> labelled rows (label, group, image_id, then the metadata columns) and the count
    of images per unmapped `dx`. Needs no images, so Table 1 can be checked from the CSV alone."""
    rows = meta.copy()
    rows["group"] = rows["lesion_id"]
    kept, dropped = _io.apply_labels(rows, HAM10000, rows["dx"])
    return kept, dropped


# --- the synthetic benchmark's HAM10000 (proportions of Table 1; metadata drawn like the release's) ---
DX_TYPE = {"nv": {"follow_up": 55, "histo": 37, "consensus": 8},  # else "histo"
           "bkl": {"histo": 70, "consensus": 24, "confocal": 6},
           "df": {"histo": 1, "consensus": 1}, "vasc": {"histo": 1, "consensus": 1}}
SITES = {"back": 22, "lower extremity": 21, "trunk": 14, "upper extremity": 11, "abdomen": 10, "face": 7,
         "chest": 4, "foot": 3, "neck": 2, "scalp": 2, "unknown": 4}
DATASETS = {"vidir_molemax": 39, "vidir_modern": 34, "rosendahl": 23, "vienna_dias": 4}


def synthetic_ids(case: int, first_image: int, n: int) -> tuple[str, list[str], dict]:
    return f"HAM_{case:07d}", [f"ISIC_{24306 + first_image + k:07d}" for k in range(n)], {}


def synthetic_meta(look: str, diagnosis: str, rng, sex: str) -> dict:
    return {"dx_type": pick(rng, DX_TYPE.get(look, {"histo": 1})), "age": age(rng, 52, 17, 5, 85),
            "sex": sex, "localization": pick(rng, SITES), "dataset": pick(rng, DATASETS)}


SYNTHETIC = SyntheticSpec(
    stream=0,
    counts={"nv": 6705, "mel": 1113, "bcc": 514, "df": 115, "bkl": 1099, "vasc": 142, "akiec": 327},
    native={c: {c: 1} for c in DERMOSCOPY7.classes},
    acquisition=Acquisition(4 / 3, (0.05, 0.30), (1.06, 0.96, 0.90), 0.05, 0.15, 0.25, 1.55, 0.5, 1.0, 0.010, 2.0, 1.0),
    ids=synthetic_ids, meta=synthetic_meta,
    extra_views=0.25,  # 10,015 images of 7,470 lesions
)


class Ham10000(_io.SourceBase):
    name = "HAM10000"
    domain = "HAM"
    label_map = {c: c for c in DERMOSCOPY7.classes}  # `dx` uses the seven codes directly
    grouping = "lesion_id (several images of one lesion)"
    order, table2, primary = 0, 0, True
    synthetic = SYNTHETIC
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


HAM10000 = Ham10000()
SOURCES.add(HAM10000.name, HAM10000)
