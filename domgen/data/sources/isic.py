"""ISIC Archive collections: MSK (Memorial Sloan Kettering), UDA (University of Athens) and SONIC
(Scope et al., nevi of children). Yoon et al., MICCAI 2019, Table 1 totals: MSK 3551, UDA 601,
SONIC 9251.

One adapter, registered three times. An Archive download is `metadata.csv` (`isic_id` plus either
the legacy `diagnosis` or the hierarchical `diagnosis_1`..`diagnosis_5`) and `<isic_id>.jpg` beside
it or under `images/`. Group: `patient_id` where given (issue #13: two lesions of one patient never
straddle two partitions), else `lesion_id`, else the image itself. Until this rule, lesion came first;
``LoadResult.regrouped`` counts the images whose group the change moved, and a real root with any of them
gets a new data identity (``Catalog.identity``), so runs split the old way keep their own folders.
See datasets/MSK.md, UDA.md, SONIC.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, DataLayoutError, LoadResult, find_release, safe_join
from domgen.data.sources.spec import Acquisition, SyntheticSpec, age

METADATA = "metadata.csv"
LEVELS = [f"diagnosis_{i}" for i in range(1, 6)]
IMAGE_DIRS = (".", "images")

# Archive diagnoses, legacy `diagnosis` strings and the terms of the current hierarchical
# `diagnosis_1..5` (matched from the deepest level up), both lower-cased. Benign keratoses (seborrheic
# keratosis, solar lentigo, lichenoid keratosis) are bkl, as in HAM10000's definition.
ISIC_MAP: dict[str, str] = {
    # legacy
    "nevus": "nv",
    "melanoma": "mel",
    "basal cell carcinoma": "bcc",
    "dermatofibroma": "df",
    "seborrheic keratosis": "bkl",
    "solar lentigo": "bkl",
    "lichenoid keratosis": "bkl",
    "pigmented benign keratosis": "bkl",
    "vascular lesion": "vasc",
    "angioma": "vasc",
    "actinic keratosis": "akiec",
    # hierarchical (diagnosis_2..5 terms)
    "benign melanocytic proliferations": "nv",
    "melanoma, nos": "mel",
    "melanoma invasive": "mel",
    "melanoma in situ": "mel",
    "melanoma metastasis": "mel",
    "lichen planus like keratosis": "bkl",
    "solar or actinic keratosis": "akiec",
    "squamous cell carcinoma in situ": "akiec",
    "hemangioma": "vasc",
    "benign soft tissue proliferations - vascular": "vasc",
}


def diagnosis_term(row: pd.Series, levels: list[str]) -> str:
    """The term a hierarchical row is labelled by: from the deepest non-empty level up, the first term
    in ISIC_MAP (e.g. 'Benign > Benign melanocytic proliferations > Nevus > Nevus, Spitz' -> 'Nevus');
    when none maps, the deepest term, so the drop is counted under the most specific name."""
    terms = [row[c].strip() for c in reversed(levels) if row[c].strip()]
    return next((t for t in terms if t.lower() in ISIC_MAP), terms[0] if terms else "")


def _column(meta: pd.DataFrame, name: str) -> pd.Series:
    """A metadata column as stripped strings ("" where absent or empty)."""
    return meta[name].fillna("").astype(str).str.strip() if name in meta else pd.Series("", index=meta.index)


def group_ids(meta: pd.DataFrame, id_column: str = "isic_id") -> list[str]:
    """Per row: patient_id if present and non-empty, else lesion_id, else the image id."""
    lesion, patient = _column(meta, "lesion_id"), _column(meta, "patient_id")
    return [pat or les or iid for les, pat, iid in zip(lesion, patient, meta[id_column])]


def lesion_first_ids(meta: pd.DataFrame, id_column: str = "isic_id") -> list[str]:
    """The rule before issue #13 (lesion_id, else patient_id, else the image), kept only to count what moved."""
    lesion, patient = _column(meta, "lesion_id"), _column(meta, "patient_id")
    return [les or pat or iid for les, pat, iid in zip(lesion, patient, meta[id_column])]


class IsicCollection(_io.SourceBase):
    label_map = ISIC_MAP
    case_insensitive = True
    grouping = "patient_id where given, else lesion_id, else the image"

    def __init__(self, name: str, domain: str, description: str, order: int, table2: int,
                 synthetic: SyntheticSpec | None = None):
        self.name, self.domain, self.description = name, domain, description
        self.order, self.table2, self.synthetic = order, table2, synthetic
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
        kept, dropped = _io.apply_labels(rows, self, diagnosis)
        result = _io.finish(self, root, kept, root / METADATA, skip_missing, dropped)
        records = result.records
        result.regrouped = int((records["group"] != pd.Series(lesion_first_ids(records, "image_id"), index=records.index)).sum())
        return result

    def _locate(self, root: Path, isic_id: str) -> Path:
        candidates = [safe_join(root, f"{d}/{isic_id}.jpg", self.name) for d in IMAGE_DIRS]
        return next((p for p in candidates if p.is_file()), candidates[0])


# --- the synthetic benchmark's collections: one id space each; MSK gives lesion ids, SONIC patient ids ---
# (never both on one image, so the patient-first rule groups them exactly as the lesion-first one did)
NATIVE = {"nv": {"nevus": 1}, "mel": {"melanoma": 1}, "bcc": {"basal cell carcinoma": 1},
          "df": {"dermatofibroma": 1}, "vasc": {"vascular lesion": 1}, "akiec": {"actinic keratosis": 1},
          "bkl": {"seborrheic keratosis": 5, "solar lentigo": 3, "lichenoid keratosis": 2}}


def _ids(base: int, lesion: bool, patient: bool):
    def ids(case: int, first_image: int, n: int) -> tuple[str, list[str], dict]:
        images = [f"ISIC_{base + first_image + k:07d}" for k in range(n)]
        if lesion:
            return f"IL_{base + case:07d}", images, {"lesion_id": f"IL_{base + case:07d}"}
        if patient:
            return f"IP_{base + case:07d}", images, {"lesion_id": "", "patient_id": f"IP_{base + case:07d}"}
        return images[0], images, {"lesion_id": ""}
    return ids


def _meta(mean_age: float, sd: float, lo: int, hi: int):
    return lambda look, diagnosis, rng, sex: {"age_approx": age(rng, mean_age, sd, lo, hi), "sex": sex}


def _spec(stream: int, counts: dict, dropped: dict, acquisition: Acquisition, extra_views: float, ids, meta):
    return SyntheticSpec(stream=stream, counts=counts, native=NATIVE, dropped=dropped, acquisition=acquisition,
                         extra_views=extra_views, ids=ids, meta=meta)


# Table 1 as printed: MSK's 452 in the df column (most likely keratoses, see datasets/MSK.md); UDA has
# two classes, SONIC one, and that domain-class availability is part of what the method is about.
COLLECTIONS = [
    IsicCollection("MSK", "MSK", "Memorial Sloan Kettering Cancer Center collections of the ISIC Archive", 3, 3, _spec(
        4, {"nv": 2241, "mel": 826, "bcc": 32, "df": 452},
        {"atypical melanocytic proliferation": (30, "mel"), "lentigo NOS": (20, "bkl")},
        Acquisition(3 / 2, (0.10, 0.55), (0.95, 0.98, 1.08), 0.05, 0.20, 0.15, None, 0.7, 0.8, 0.012, 2.0, 1.0),
        0.1, _ids(1_000_000, lesion=True, patient=False), _meta(50, 16, 15, 85))),
    IsicCollection("UDA", "UDA", "University of Athens collections (UDA-1, UDA-2) of the ISIC Archive", 4, 6, _spec(
        5, {"nv": 408, "mel": 193}, {"other": (10, "df")},
        Acquisition(4 / 3, (0.15, 0.60), (0.92, 1.06, 0.95), 0.04, 0.45, 0.30, 1.45, 1.0, 0.5, 0.030, 3.0, 1.1),
        0.0, _ids(2_000_000, lesion=False, patient=False), _meta(50, 16, 15, 85))),
    IsicCollection("SONIC", "SON", "SONIC study of nevi in children (Scope et al.), ISIC Archive", 6, 5, _spec(
        6, {"nv": 9251}, {},
        Acquisition(4 / 3, (0.00, 0.20), (1.02, 1.03, 0.97), 0.02, 0.10, 0.05, None, 0.4, 1.0, 0.006, 0.3, 0.7,
                    sticker=0.5),
        0.5, _ids(3_000_000, lesion=False, patient=True), _meta(10, 3, 5, 15))),
]
for _collection in COLLECTIONS:
    SOURCES.add(_collection.name, _collection)
