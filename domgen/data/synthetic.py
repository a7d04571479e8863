"""The synthetic seven-domain dermoscopy benchmark: domgen's default dataset when no data root is set.

Seven sources written in their *native* layouts through ``writers.write_source``, so the same adapters
read them as read the real releases. Class proportions follow Yoon, Hamarneh & Garbi, MICCAI 2019,
Table 1 (every source's row as printed, MSK and UDA included; see datasets/synthetic.md), scaled to about
2,700 images at ``scale=1.0`` with a floor per present class. The class decides the lesion and the
domain decides the acquisition (``synthetic_draw``), so class signal and domain shift are both real
and independent. Every image is a pure function of ``(seed, domain, case, view)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domgen.data.labels import CLASSES
from domgen.data.synthetic_draw import Acquisition, render
from domgen.data.writers import Item, write_source

GENERATOR_VERSION = 2  # bump when the images or the plan change, so cached benchmarks are regenerated
DEFAULT_SIZE = 128  # long side in pixels
RATE = 0.1  # synthetic images per real image at scale 1.0
MIN_IMAGES = 6  # per present class, at any scale: >= 3 groups, so it can reach train, val and test
MANIFEST = "synthetic.json"

# Images per source and class: Table 1 of Yoon et al. as printed (Derm7pt in images, two per case, with
# bcc 84 as its total requires where the table prints 82; MSK's 452 in the df column as printed, although
# for the ISIC MSK collections it is most likely keratoses, see datasets/MSK.md). UDA has two classes:
# that domain-class availability is part of what the method is about.
TABLE1: dict[str, dict[str, int]] = {
    "HAM10000": {"nv": 6705, "mel": 1113, "bcc": 514, "df": 115, "bkl": 1099, "vasc": 142, "akiec": 327},
    "Dermofit": {"nv": 331, "mel": 76, "bcc": 239, "df": 65, "bkl": 257, "vasc": 121, "akiec": 123},
    "Derm7pt": {"nv": 1150, "mel": 504, "bcc": 84, "df": 40, "bkl": 90, "vasc": 58},
    "PH2": {"nv": 160, "mel": 40},
    "MSK": {"nv": 2241, "mel": 826, "bcc": 32, "df": 452},
    "UDA": {"nv": 408, "mel": 193},
    "SONIC": {"nv": 9251},
}
SOURCE_NAMES: tuple[str, ...] = tuple(TABLE1)

# Out-of-map diagnoses (images in the real release; MSK and UDA assumed) -> (count, class they look
# like). The loaders drop and count them, so the synthetic data exercises that accounting too.
DROPPED_TABLE: dict[str, dict[str, tuple[int, str]]] = {
    "Dermofit": {"SCC": (88, "akiec")},
    "Derm7pt": {"lentigo": (48, "bkl"), "melanosis": (32, "nv"), "miscellaneous": (16, "bcc")},
    "MSK": {"atypical melanocytic proliferation": (30, "mel"), "lentigo NOS": (20, "bkl")},
    "UDA": {"other": (10, "df")},
}

_ISIC_NATIVE = {"nv": {"nevus": 1}, "mel": {"melanoma": 1}, "bcc": {"basal cell carcinoma": 1},
                "df": {"dermatofibroma": 1}, "vasc": {"vascular lesion": 1}, "akiec": {"actinic keratosis": 1},
                "bkl": {"seborrheic keratosis": 5, "solar lentigo": 3, "lichenoid keratosis": 2}}
# Class -> native diagnosis -> weight: the inverse of labels.LABEL_MAPS, weighted like the releases.
NATIVE: dict[str, dict[str, dict[str, int]]] = {
    "HAM10000": {c: {c: 1} for c in CLASSES},
    "Dermofit": {"nv": {"ML": 1}, "mel": {"MEL": 1}, "bcc": {"BCC": 1}, "df": {"DF": 1}, "bkl": {"SK": 1},
                 "vasc": {"VASC": 97, "PYO": 24}, "akiec": {"AK": 45, "IEC": 78}},
    "Derm7pt": {
        "nv": {"clark nevus": 399, "reed or spitz nevus": 79, "dermal nevus": 33, "blue nevus": 28,
               "congenital nevus": 17, "combined nevus": 13, "recurrent nevus": 6},
        "mel": {"melanoma (less than 0.76 mm)": 102, "melanoma (in situ)": 64, "melanoma (0.76 to 1.5 mm)": 53,
                "melanoma (more than 1.5 mm)": 28, "melanoma metastasis": 4, "melanoma": 1},
        "bcc": {"basal cell carcinoma": 1}, "df": {"dermatofibroma": 1}, "bkl": {"seborrheic keratosis": 1},
        "vasc": {"vascular lesion": 1}},
    "PH2": {"nv": {"Common Nevus": 80, "Atypical Nevus": 80}, "mel": {"Melanoma": 1}},
    "MSK": _ISIC_NATIVE, "UDA": _ISIC_NATIVE, "SONIC": _ISIC_NATIVE,
}

# The domain half of the story: how each source photographs (fields in synthetic_draw.Acquisition).
ACQUISITIONS: dict[str, Acquisition] = {
    "HAM10000": Acquisition(4 / 3, (0.05, 0.30), (1.06, 0.96, 0.90), 0.05, 0.15, 0.25, 1.55, 0.5, 1.0, 0.010, 2.0, 1.0),
    "Dermofit": Acquisition(1.0, (0.00, 0.25), (1.00, 0.98, 1.05), 0.02, 0.35, 0.00, None, 0.3, 1.0, 0.005, 1.0, 0.8,
                            glare=2.0),
    "Derm7pt": Acquisition(3 / 2, (0.10, 0.35), (1.08, 1.00, 0.80), 0.03, 0.20, 0.30, 1.25, 0.6, 1.0, 0.015, 2.5, 0.9),
    "Derm7pt/clinic": Acquisition(3 / 2, (0.10, 0.35), (1.02, 0.95, 0.92), 0.03, 0.40, 0.10, None, 1.0, 0.75, 0.020,
                                  1.5, 0.42, glare=3.0),
    "PH2": Acquisition(4 / 3, (0.05, 0.30), (1.10, 0.88, 0.94), 0.02, 0.10, 0.35, 1.20, 0.4, 1.0, 0.008, 1.5, 0.85),
    "MSK": Acquisition(3 / 2, (0.10, 0.55), (0.95, 0.98, 1.08), 0.05, 0.20, 0.15, None, 0.7, 0.8, 0.012, 2.0, 1.0),
    "UDA": Acquisition(4 / 3, (0.15, 0.60), (0.92, 1.06, 0.95), 0.04, 0.45, 0.30, 1.45, 1.0, 0.5, 0.030, 3.0, 1.1),
    "SONIC": Acquisition(4 / 3, (0.00, 0.20), (1.02, 1.03, 0.97), 0.02, 0.10, 0.05, None, 0.4, 1.0, 0.006, 0.3, 0.7,
                         sticker=0.5),
}

# Share of images that are second or third views of a lesion / patient (HAM10000: 10,015 images of
# 7,470 lesions); Derm7pt always has two views (clinic, derm) per case.
EXTRA_VIEWS = {"HAM10000": 0.25, "Dermofit": 0.0, "PH2": 0.0, "MSK": 0.1, "UDA": 0.0, "SONIC": 0.5}


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _per_case(source: str) -> int:
    return 2 if source == "Derm7pt" else 1  # Derm7pt: a clinical and a dermoscopic image per case


def _scaled(source: str, images: float, min_cases: int) -> int:
    """Images after scaling, rounded to whole cases and raised to ``min_cases`` cases."""
    per = _per_case(source)
    return per * max(min_cases, _round(images / per))


def planned_counts(scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Images per source and class at ``scale``: Table 1 x RATE x scale, at least MIN_IMAGES (3 cases
    for Derm7pt) for a class the source has; a class absent from Table 1 stays absent."""
    return {s: {c: _scaled(s, n * RATE * scale, MIN_IMAGES // _per_case(s)) for c, n in row.items()}
            for s, row in TABLE1.items()}


def planned_dropped(scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Images per out-of-map diagnosis that the loaders will drop (at least one case each)."""
    return {s: {d: _scaled(s, n * RATE * scale, 1) for d, (n, _) in DROPPED_TABLE.get(s, {}).items()}
            for s in SOURCE_NAMES}


SYNTHETIC_COUNTS = planned_counts(1.0)


@dataclass
class Case:
    """One lesion / case / patient: its drawn class, native diagnosis, group and images."""

    look: str  # class whose lesion is drawn (for a dropped diagnosis, the class it resembles)
    diagnosis: str  # in the source's own vocabulary
    group: str
    image_ids: list[str]
    meta: dict = field(default_factory=dict)


def group_sizes(n: int, extra: float) -> list[int]:
    """Split ``n`` images into groups (lesions / patients) of 1-3 images, ``extra`` of the images being
    second or third views; at least min(n, 3) groups."""
    groups = max(min(n, 3), n - _round(n * extra))
    more = n - groups
    threes = min(more // 2, _round(more * 0.25))
    twos = more - 2 * threes
    return [3] * threes + [2] * twos + [1] * (groups - twos - threes)


def apportion(weights: dict[str, int], n: int) -> list[str]:
    """``n`` labels in proportion to ``weights`` by largest remainder (exact and deterministic)."""
    names, w = list(weights), np.array(list(weights.values()), float)
    quota = n * w / w.sum()
    count = np.floor(quota).astype(int)
    count[np.argsort(-(quota - count), kind="stable")[: n - count.sum()]] += 1
    return [name for name, k in zip(names, count) for _ in range(k)]


# ---------------------------------------------------------------- per-case metadata (plausible, native)

HAM_DX_TYPE = {"nv": {"follow_up": 55, "histo": 37, "consensus": 8},  # else "histo"
               "bkl": {"histo": 70, "consensus": 24, "confocal": 6},
               "df": {"histo": 1, "consensus": 1}, "vasc": {"histo": 1, "consensus": 1}}
HAM_SITES = {"back": 22, "lower extremity": 21, "trunk": 14, "upper extremity": 11, "abdomen": 10, "face": 7,
             "chest": 4, "foot": 3, "neck": 2, "scalp": 2, "unknown": 4}
HAM_DATASETS = {"vidir_molemax": 39, "vidir_modern": 34, "rosendahl": 23, "vienna_dias": 4}
D7P_SITES = {"back": 30, "lower limbs": 25, "upper limbs": 12, "abdomen": 10, "chest": 10, "head neck": 8,
             "buttocks": 3, "genital areas": 2}
PH2_CRITERIA = {  # asymmetry, network, dots/globules, streaks, regression, blue-whitish veil, colour codes
    "Common Nevus": (0, "T", "A", "A", "A", "A", "3 4"),
    "Atypical Nevus": (1, "AT", "AT", "A", "A", "A", "3 4"),
    "Melanoma": (2, "AT", "AT", "P", "P", "P", "3 4 5 6"),
}


def _pick(rng: np.random.Generator, weights: dict[str, int]) -> str:
    w = np.array(list(weights.values()), float)
    return list(weights)[rng.choice(len(w), p=w / w.sum())]


def _age(rng: np.random.Generator, mean: float, sd: float, lo: int, hi: int) -> float:
    return float(np.clip(_round(rng.normal(mean, sd) / 5) * 5, lo, hi))  # ages are given in steps of 5


def case_meta(source: str, look: str, diagnosis: str, rng: np.random.Generator) -> dict:
    """The extra metadata columns a release carries for one case (consumed by ``write_source``)."""
    sex = _pick(rng, {"male": 54, "female": 46})
    if source == "HAM10000":
        return {"dx_type": _pick(rng, HAM_DX_TYPE.get(look, {"histo": 1})), "age": _age(rng, 52, 17, 5, 85),
                "sex": sex, "localization": _pick(rng, HAM_SITES), "dataset": _pick(rng, HAM_DATASETS)}
    if source == "Derm7pt":
        follow = _pick(rng, {"clinical follow up": 2, "no further examination": 1})
        return {"location": _pick(rng, D7P_SITES), "sex": sex,
                "management": "excision" if look in ("mel", "bcc") else follow}
    if source == "PH2":
        keys = ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil",
                "colors")
        return dict(zip(keys, PH2_CRITERIA.get(diagnosis, PH2_CRITERIA["Common Nevus"])))
    if source in ("MSK", "UDA", "SONIC"):
        age = _age(rng, 10, 3, 5, 15) if source == "SONIC" else _age(rng, 50, 16, 15, 85)
        return {"age_approx": age, "sex": sex}
    return {}


# ---------------------------------------------------------------- plan


def _ids(source: str, case: int, first_image: int, n: int) -> tuple[str, list[str], dict]:
    """(group, image ids, id metadata) in the source's own naming."""
    if source == "HAM10000":
        return f"HAM_{case:07d}", [f"ISIC_{24306 + first_image + k:07d}" for k in range(n)], {}
    if source == "Dermofit":
        return f"P{case + 1:04d}", [f"P{case + 1:04d}"], {}
    if source == "Derm7pt":
        return str(case + 1), [f"c{case + 1:04d}", f"d{case + 1:04d}"], {}
    if source == "PH2":
        return f"IMD{case + 1:03d}", [f"IMD{case + 1:03d}"], {}
    # ISIC Archive: one id space per collection; MSK gives lesion ids, SONIC patient ids, UDA neither.
    base = {"MSK": 1_000_000, "UDA": 2_000_000, "SONIC": 3_000_000}[source]
    images = [f"ISIC_{base + first_image + k:07d}" for k in range(n)]
    if source == "MSK":
        return f"IL_{base + case:07d}", images, {"lesion_id": f"IL_{base + case:07d}"}
    if source == "SONIC":
        return f"IP_{base + case:07d}", images, {"lesion_id": "", "patient_id": f"IP_{base + case:07d}"}
    return images[0], images, {"lesion_id": ""}


def plan_source(source: str, scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The cases of one source: ``planned_counts`` images per class and ``planned_dropped`` images per
    out-of-map diagnosis, grouped into lesions / cases / patients, native labels, shuffled order."""
    rng = np.random.default_rng([seed, SOURCE_NAMES.index(source), 0])
    per = _per_case(source)
    units = []  # (look, diagnosis, images)
    for cls, n in planned_counts(scale)[source].items():
        sizes = [2] * (n // 2) if per == 2 else group_sizes(n, EXTRA_VIEWS[source])
        natives = apportion(NATIVE[source][cls], len(sizes))
        units += [(cls, natives[k], size) for k, size in zip(rng.permutation(len(natives)), sizes)]
    for diagnosis, n in planned_dropped(scale)[source].items():
        units += [(DROPPED_TABLE[source][diagnosis][1], diagnosis, per)] * (n // per)
    cases, first_image = [], 0
    for i, j in enumerate(rng.permutation(len(units))):
        look, diagnosis, n = units[j]
        group, image_ids, id_meta = _ids(source, i, first_image, n)
        cases.append(Case(look, diagnosis, group, image_ids, {**case_meta(source, look, diagnosis, rng), **id_meta}))
        first_image += n
    return cases


# ---------------------------------------------------------------- generate


def draw_case(source: str, index: int, case: Case, seed: int = 0, size: int = DEFAULT_SIZE) -> list[Item]:
    """The images of one case. The lesion depends on (seed, source, case) and each view's acquisition on
    (seed, source, case, view) only, so the result does not depend on order or parallelism."""
    d = SOURCE_NAMES.index(source)
    modalities = ["clinic", "derm"] if source == "Derm7pt" else [None] * len(case.image_ids)
    items = []
    for view, (image_id, modality) in enumerate(zip(case.image_ids, modalities)):
        acq = ACQUISITIONS["Derm7pt/clinic" if modality == "clinic" else source]
        image = render(case.look, [seed, d, 2, index], acq, np.random.default_rng([seed, d, 1, index, view]), size)
        meta = {**case.meta, "modality": modality} if modality else dict(case.meta)
        items.append(Item(image, case.diagnosis, case.group, image_id, meta))
    return items


def _ticker(progress, total: int):
    """progress: None, a callable(n_done, n_total) or a tqdm-like object with ``update``."""
    if progress is None:
        return lambda: None
    if hasattr(progress, "update"):
        if not getattr(progress, "total", None):
            progress.total = total
        return lambda: progress.update(1)
    done = [0]

    def tick():
        done[0] += 1
        progress(done[0], total)

    return tick


def generate(folder: Path, scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE, progress=None) -> Path:
    """Write all seven sources into ``folder/<source>`` in their native layouts, plus ``synthetic.json``
    (what was generated, so any result built on it can say it is synthetic). Returns ``folder``."""
    if seed < 0 or scale <= 0 or size < 16:
        raise ValueError(f"synthetic: need seed >= 0, scale > 0, size >= 16 (got {seed}, {scale}, {size})")
    folder = Path(folder)
    plans = {source: plan_source(source, scale, seed) for source in SOURCE_NAMES}
    tick = _ticker(progress, sum(len(c.image_ids) for cases in plans.values() for c in cases))
    for source, cases in plans.items():
        items = []
        for i, case in enumerate(cases):
            items += draw_case(source, i, case, seed, size)
            for _ in case.image_ids:
                tick()
        write_source(source, folder / source, items)
    manifest = {"synthetic": True, "generator_version": GENERATOR_VERSION, "scale": scale, "seed": seed,
                "size": size, "counts": planned_counts(scale), "dropped": planned_dropped(scale)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder


def cache_key(scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE) -> str:
    """Folder name of a generated benchmark: a hash of (generator version, scale, seed, size)."""
    key = json.dumps([GENERATOR_VERSION, float(scale), int(seed), int(size)])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def ensure_synthetic(cache_dir: Path, scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE,
                     progress=None) -> Path:
    """``<cache_dir>/synthetic/<cache_key>/``, generated on first use. Generation goes to a temporary
    sibling that is renamed into place, so a killed or concurrent run never leaves a half folder; when
    another process wins the race its folder is kept and ours discarded."""
    final = Path(cache_dir) / "synthetic" / cache_key(scale, seed, size)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared cache unreadable to others
    try:
        generate(tmp, scale, seed, size, progress)
        try:
            os.rename(tmp, final)  # atomic; fails if `final` appeared meanwhile (non-empty directory)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return final


def read_manifest(root: Path) -> dict | None:
    """The generator's manifest if ``root`` is a synthetic benchmark, else None."""
    path = Path(root) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
