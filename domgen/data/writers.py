"""Write a source folder in its native layout (the inverse of ``domgen.data.sources``).

The synthetic benchmark and the tests' fixtures both write through these functions, so the adapters
read synthetic data exactly as they read a real release.

Contract (implemented per source below):

    write_source(source, folder, items, style=None)

``source`` is a folder name ("HAM10000", "Dermofit", "Derm7pt", "PH2", "MSK", "UDA", "SONIC");
``items`` are ``Item``s whose ``diagnosis`` is in the source's *own* vocabulary (Dermofit "ML",
Derm7pt "clark nevus", PH2 "Atypical Nevus", ISIC "nevus"). ``style`` picks a variant of the format
where a source has several: HAM10000 "8col" (default) | "7col"; PH2 "xlsx" (default) | "txt";
ISIC "legacy" (default) | "hierarchical". For Derm7pt, each case is two items with the same
``group`` and ``meta["modality"]`` in {"clinic", "derm"}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from domgen.data.sources import derm7pt, ham10000, ph2


@dataclass
class Item:
    image: np.ndarray  # H x W x 3 uint8
    diagnosis: str  # in the source's own vocabulary
    group: str  # lesion / case / patient id
    image_id: str
    meta: dict = field(default_factory=dict)  # extra metadata columns


# --- shared -----------------------------------------------------------------------------------------

def _save(image: np.ndarray, path: Path) -> None:
    """Write a real image file (H x W x 3 RGB, or H x W grey); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# --- HAM10000 ----------------------------------------------------------------------------------------

def _write_ham(folder: Path, items: list[Item], style: str) -> None:
    # The release splits its images over two folders; the first half goes to part 1, the rest to part 2.
    half = (len(items) + 1) // 2
    columns = ham10000.COLUMNS + (["dataset"] if style == "8col" else [])
    defaults = {"dx_type": "histo", "age": "", "sex": "unknown", "localization": "unknown", "dataset": "vidir_modern"}
    rows = []
    for i, it in enumerate(items):
        _save(it.image, folder / ham10000.IMAGE_DIRS[0 if i < half else 1] / f"{it.image_id}.jpg")
        row = {**defaults, **it.meta, "lesion_id": it.group, "image_id": it.image_id, "dx": it.diagnosis}
        rows.append({c: row[c] for c in columns})
    pd.DataFrame(rows, columns=columns).to_csv(folder / ham10000.METADATA, index=False)


# --- Dermofit ----------------------------------------------------------------------------------------

def _write_dermofit(folder: Path, items: list[Item], style: str) -> None:
    # No metadata file: the class is the folder, and the lesion ID (``image_id``) is the group.
    for it in items:
        case = folder / it.diagnosis / it.image_id
        _save(it.image, case / f"{it.image_id}.png")
        grey = np.asarray(it.image, dtype=np.uint8).mean(axis=2)
        # A binary lesion mask (darker than average = lesion); the reader must not take it for an image.
        _save(((grey < grey.mean()) * 255).astype(np.uint8), case / f"{it.image_id}mask.png")


# --- Derm7pt -----------------------------------------------------------------------------------------

def _derm7pt_cases(items: list[Item]) -> dict[str, dict[str, Item]]:
    """case_num -> {"clinic": item, "derm": item}, refusing anything but complete pairs."""
    cases: dict[str, dict[str, Item]] = {}
    for it in items:
        modality = it.meta.get("modality")
        if modality not in derm7pt.MODALITIES or modality in cases.setdefault(it.group, {}):
            raise ValueError(f"Derm7pt: case {it.group!r} needs one 'clinic' and one 'derm' item (meta['modality'])")
        cases[it.group][modality] = it
    incomplete = [c for c, pair in cases.items() if len(pair) != 2]
    if incomplete:
        raise ValueError(f"Derm7pt: case(s) {', '.join(incomplete[:5])} lack a clinic or a derm item")
    return cases


def _write_derm7pt(folder: Path, items: list[Item], style: str) -> None:
    rows = []
    for case_num, pair in _derm7pt_cases(items).items():
        # One folder per diagnosis under images/, as the release groups its images in sub-folders.
        rel = {mod: f"{_slug(it.diagnosis)}/{it.image_id}.jpg" for mod, it in pair.items()}
        for mod, it in pair.items():
            _save(it.image, folder / derm7pt.IMAGES / rel[mod])
        meta = {k: v for k, v in pair["derm"].meta.items() if k != "modality"}
        rows.append({**dict.fromkeys(derm7pt.COLUMNS, ""), **meta, "case_num": case_num,
                     "diagnosis": pair["derm"].diagnosis, **rel})
    columns = list(dict.fromkeys(derm7pt.COLUMNS + [k for r in rows for k in r]))  # extra meta keys last
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(folder / derm7pt.METADATA, index=False)


# --- PH2 ---------------------------------------------------------------------------------------------

# Criteria defaults (a typical common nevus); colours are the txt's codes 1..6, default 4 (dark brown).
PH2_CRITERIA = {"asymmetry": 0, "pigment_network": "T", "dots_globules": "A", "streaks": "A",
                "regression_areas": "A", "blue_whitish_veil": "A"}


def _write_ph2(folder: Path, items: list[Item], style: str) -> None:
    for it in items:
        n = it.image_id
        _save(it.image, folder / ph2.IMAGES / n / f"{n}_Dermoscopic_Image" / f"{n}.bmp")
    rows = [(it.image_id, it.diagnosis, str(it.meta.get("histological_diagnosis", "")),
             [it.meta.get(k, v) for k, v in PH2_CRITERIA.items()], str(it.meta.get("colors", "4")).split())
            for it in items]
    (_write_ph2_txt if style == "txt" else _write_ph2_xlsx)(folder, rows)


def _write_ph2_txt(folder: Path, rows: list) -> None:
    lines = ["||   Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
             "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil ||           Colors ||"]
    for name, diagnosis, histo, criteria, colours in rows:
        code = ph2.CLINICAL.index(diagnosis)  # ValueError: the txt codes only the three PH2 diagnoses
        lines.append(f"|| {name} || {histo:>22} || {code:>18} || " + " | ".join(f"{v:>6}" for v in criteria)
                     + f" || {'  '.join(colours):>16} ||")
    (folder / ph2.TXT).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_ph2_xlsx(folder: Path, rows: list) -> None:
    header = ["Image Name", "Histological Diagnosis", *ph2.CLINICAL, "Asymmetry\n(0/1/2)",
              "Pigment Network\n(AT/T)", "Dots/Globules\n(A/AT/T)", "Streaks\n(A/P)", "Regression Areas\n(A/P)",
              "Blue-Whitish Veil\n(A/P)", *ph2.COLOURS]
    legend = [["Legends:"], ["Clinical Diagnosis: X marks Common Nevus, Atypical Nevus or Melanoma"],
              ["Asymmetry: 0 - Fully Symmetric; 1 - Symmetric in 1 axe; 2 - Fully Asymmetric"]]
    body = [[name, histo, *["X" if diagnosis == d else None for d in ph2.CLINICAL], *criteria,
             *["X" if str(i) in colours else None for i in range(1, len(ph2.COLOURS) + 1)]]
            for name, diagnosis, histo, criteria, colours in rows]
    sheet = [r + [None] * (len(header) - len(r)) for r in legend + [[]] + [header] + body]  # a rectangle
    pd.DataFrame(sheet).to_excel(folder / ph2.XLSX, header=False, index=False)


# --- ISIC Archive (MSK, UDA, SONIC) ------------------------------------------------------------------

# Legacy diagnosis -> the hierarchical diagnosis_1..3 the Archive now gives it. A term not listed here
# is written as diagnosis_1 alone.
ISIC_HIERARCHY: dict[str, tuple[str, ...]] = {
    "nevus": ("Benign", "Benign melanocytic proliferations", "Nevus"),
    "melanoma": ("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma, NOS"),
    "basal cell carcinoma": ("Malignant", "Malignant adnexal epithelial proliferations - Follicular",
                             "Basal cell carcinoma"),
    "dermatofibroma": ("Benign", "Benign soft tissue proliferations - Fibro-histiocytic", "Dermatofibroma"),
    "seborrheic keratosis": ("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
    "solar lentigo": ("Benign", "Benign epidermal proliferations", "Solar lentigo"),
    "lichenoid keratosis": ("Benign", "Benign epidermal proliferations", "Lichen planus like keratosis"),
    "vascular lesion": ("Benign", "Benign soft tissue proliferations - Vascular"),
    "actinic keratosis": ("Indeterminate", "Indeterminate epidermal proliferations", "Solar or actinic keratosis"),
    "squamous cell carcinoma": ("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma, NOS"),
}


def _write_isic(folder: Path, items: list[Item], style: str) -> None:
    # lesion_id / patient_id come from meta when given (an empty lesion_id makes the reader fall back to
    # patient_id); otherwise the item's group is written as lesion_id.
    rows = []
    for it in items:
        _save(it.image, folder / f"{it.image_id}.jpg")
        row = {"isic_id": it.image_id, "lesion_id": it.meta.get("lesion_id", it.group)}
        if style == "legacy":
            row["diagnosis"] = it.diagnosis
        else:
            terms = ISIC_HIERARCHY.get(it.diagnosis.lower(), (it.diagnosis,))
            row.update({f"diagnosis_{i + 1}": terms[i] if i < len(terms) else "" for i in range(5)})
        rows.append({**row, **{k: v for k, v in it.meta.items() if k not in row}})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)


_WRITERS: dict[str, tuple[Callable[[Path, list[Item], str], None], tuple[str, ...]]] = {
    # source -> (writer, styles with the default first)
    "HAM10000": (_write_ham, ("8col", "7col")),
    "Dermofit": (_write_dermofit, ("native",)),
    "Derm7pt": (_write_derm7pt, ("native",)),
    "PH2": (_write_ph2, ("xlsx", "txt")),
    "MSK": (_write_isic, ("legacy", "hierarchical")),
    "UDA": (_write_isic, ("legacy", "hierarchical")),
    "SONIC": (_write_isic, ("legacy", "hierarchical")),
}


def _source_writer(source: str) -> tuple[Callable[[Path, list[Item], str], None], tuple[str, ...]]:
    """A source added later writes itself: ``write(folder, items, style)`` and ``styles`` on its adapter."""
    from domgen.data.sources import SOURCES

    adapter = SOURCES.get(source) if source in SOURCES else None
    if adapter is None or not hasattr(adapter, "write"):
        raise KeyError(f"no writer for source {source!r} (known: {', '.join(_WRITERS)})")
    return adapter.write, tuple(getattr(adapter, "styles", ("native",)))


def write_source(source: str, folder: Path | str, items: Iterable[Item], style: str | None = None) -> Path:
    """Write ``items`` into ``folder`` in ``source``'s native layout (see the module docstring) and
    return ``folder``. Image files are real (.jpg / .png / .bmp), so the readers' checks apply."""
    writer, styles = _WRITERS.get(source) or _source_writer(source)
    style = style or styles[0]
    if style not in styles:
        raise ValueError(f"{source}: unknown style {style!r} (known: {', '.join(styles)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer(folder, list(items), style)
    return folder
