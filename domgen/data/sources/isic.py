"""ISIC Archive collections: MSK (Memorial Sloan Kettering), UDA (University of Athens) and SONIC
(Scope et al., nevi of children). Yoon et al., MICCAI 2019, Table 1 totals: MSK 3551, UDA 601,
SONIC 9251.

One adapter, registered three times. An Archive download is `metadata.csv` (`isic_id` plus either
the legacy `diagnosis` or the hierarchical `diagnosis_1`..`diagnosis_5`) and `<isic_id>.jpg` beside
it or under `images/`. Group: `lesion_id` where given, else `patient_id`, else the image itself.
See datasets/MSK.md, UDA.md, SONIC.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domgen.data import labels
from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, DataLayoutError, LoadResult, find_release, safe_join

METADATA = "metadata.csv"
LEVELS = [f"diagnosis_{i}" for i in range(1, 6)]
IMAGE_DIRS = (".", "images")


def diagnosis_term(row: pd.Series, levels: list[str]) -> str:
    """The term a hierarchical row is labelled by: from the deepest non-empty level up, the first term
    in ISIC_MAP (e.g. 'Benign > Benign melanocytic proliferations > Nevus > Nevus, Spitz' -> 'Nevus');
    when none maps, the deepest term, so the drop is counted under the most specific name."""
    terms = [row[c].strip() for c in reversed(levels) if row[c].strip()]
    return next((t for t in terms if t.lower() in labels.ISIC_MAP), terms[0] if terms else "")


def group_ids(meta: pd.DataFrame) -> list[str]:
    """Per row: lesion_id if present and non-empty, else patient_id, else isic_id."""
    lesion = meta["lesion_id"] if "lesion_id" in meta else pd.Series("", index=meta.index)
    patient = meta["patient_id"] if "patient_id" in meta else pd.Series("", index=meta.index)
    return [les.strip() or pat.strip() or iid for les, pat, iid in zip(lesion, patient, meta["isic_id"])]


class IsicCollection(_io.SourceBase):
    def __init__(self, name: str, description: str):
        self.name = name
        self.description = description
        self.layout = (
            f"{METADATA} (isic_id and diagnosis, or diagnosis_1..diagnosis_5) and <isic_id>.jpg in the "
            "folder or in images/"
        )

    def find_release(self, folder: Path) -> Path:
        return find_release(folder, METADATA, self.name, self.layout)

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult:
        root = self.find_release(folder)
        meta = _io.read_csv(root / METADATA, self.name, self.layout, ["isic_id"])
        levels = [c for c in LEVELS if c in meta.columns]
        if "diagnosis" in meta.columns:
            diagnosis = meta["diagnosis"]
        elif levels:
            diagnosis = pd.Series([diagnosis_term(r, levels) for _, r in meta.iterrows()], index=meta.index)
        else:
            raise DataLayoutError(
                f"{self.name}: {root / METADATA} has neither 'diagnosis' nor 'diagnosis_1'..'diagnosis_5'. "
                f"Expected layout: {self.layout}"
            )
        rows = meta.rename(columns={"isic_id": "image_id"})
        rows["group"] = group_ids(meta)
        rows["path"] = [self._locate(root, i) for i in meta["isic_id"]]
        kept, dropped = _io.apply_labels(rows, self.name, diagnosis)
        return _io.finish(self, root, kept, root / METADATA, skip_missing, dropped)

    def _locate(self, root: Path, isic_id: str) -> Path:
        candidates = [safe_join(root, f"{d}/{isic_id}.jpg", self.name) for d in IMAGE_DIRS]
        return next((p for p in candidates if p.is_file()), candidates[0])


COLLECTIONS = {
    "MSK": "Memorial Sloan Kettering Cancer Center collections of the ISIC Archive",
    "UDA": "University of Athens collections (UDA-1, UDA-2) of the ISIC Archive",
    "SONIC": "SONIC study of nevi in children (Scope et al.), ISIC Archive",
}
for _name, _description in COLLECTIONS.items():
    SOURCES.add(_name, IsicCollection(_name, _description))
