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
from domgen.data.sources.spec import Acquisition, SyntheticSpec, pick

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


# `diagnosis` -> class. Table 1 counts images (clinical + dermoscopic, two per case): 575 nevus cases
# -> 1150, 252 melanoma cases -> 504, 42 bcc -> 84, 20 df -> 40, 45 seborrheic keratosis -> 90,
# 29 vascular -> 58. Lentigo (24), melanosis (16) and miscellaneous (8) are dropped.
LABEL_MAP = {
    **dict.fromkeys(["clark nevus", "reed or spitz nevus", "dermal nevus", "blue nevus", "congenital nevus",
                     "combined nevus", "recurrent nevus"], "nv"),
    **dict.fromkeys(["melanoma (less than 0.76 mm)", "melanoma (in situ)", "melanoma (0.76 to 1.5 mm)",
                     "melanoma (more than 1.5 mm)", "melanoma metastasis", "melanoma"], "mel"),
    "basal cell carcinoma": "bcc",
    "dermatofibroma": "df",
    "seborrheic keratosis": "bkl",
    "vascular lesion": "vasc",
}

# --- the synthetic benchmark's Derm7pt: two views per case, the clinical one photographed differently ---
SITES = {"back": 30, "lower limbs": 25, "upper limbs": 12, "abdomen": 10, "chest": 10, "head neck": 8,
         "buttocks": 3, "genital areas": 2}


def synthetic_meta(look: str, diagnosis: str, rng, sex: str) -> dict:
    follow = pick(rng, {"clinical follow up": 2, "no further examination": 1})
    return {"location": pick(rng, SITES), "sex": sex, "management": "excision" if look in ("mel", "bcc") else follow}


SYNTHETIC = SyntheticSpec(
    stream=2,
    # bcc 84 as Table 1's total requires where the table prints 82
    counts={"nv": 1150, "mel": 504, "bcc": 84, "df": 40, "bkl": 90, "vasc": 58},
    native={
        "nv": {"clark nevus": 399, "reed or spitz nevus": 79, "dermal nevus": 33, "blue nevus": 28,
               "congenital nevus": 17, "combined nevus": 13, "recurrent nevus": 6},
        "mel": {"melanoma (less than 0.76 mm)": 102, "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53,
                "melanoma (more than 1.5 mm)": 28, "melanoma metastasis": 4, "melanoma": 1},
        "bcc": {"basal cell carcinoma": 1}, "df": {"dermatofibroma": 1}, "bkl": {"seborrheic keratosis": 1},
        "vasc": {"vascular lesion": 1}},
    dropped={"lentigo": (48, "bkl"), "melanosis": (32, "nv"), "miscellaneous": (16, "bcc")},
    acquisition=Acquisition(3 / 2, (0.10, 0.35), (1.08, 1.00, 0.80), 0.03, 0.20, 0.30, 1.25, 0.6, 1.0, 0.015, 2.5, 0.9),
    views=MODALITIES,
    modalities={"clinic": Acquisition(3 / 2, (0.10, 0.35), (1.02, 0.95, 0.92), 0.03, 0.40, 0.10, None, 1.0, 0.75,
                                      0.020, 1.5, 0.42, glare=3.0)},
    ids=lambda case, first_image, n: (str(case + 1), [f"c{case + 1:04d}", f"d{case + 1:04d}"], {}),
    meta=synthetic_meta,
)


class Derm7pt(_io.SourceBase):
    name = "Derm7pt"
    domain = "D7P"
    label_map = LABEL_MAP
    case_insensitive = True
    grouping = "case_num (a clinical and a dermoscopic image per case)"
    order, table2 = 2, 2
    synthetic = SYNTHETIC
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
        kept, dropped = _io.apply_labels(table, self, table["diagnosis"])
        return _io.finish(self, root, kept, root / METADATA, skip_missing, dropped)

    def _locate(self, images: Path, rel: str, index: dict[str, Path]) -> Path:
        path = safe_join(images, rel, self.name)
        return index.get(path.relative_to(images).as_posix().lower(), path)


SOURCES.add(Derm7pt.name, Derm7pt())
