"""PH2 (Mendonça et al., IEEE EMBC 2013): 200 dermoscopic images, 80 common nevi, 80 atypical nevi,
40 melanomas, which Yoon et al., MICCAI 2019, Table 1 counts as nv 160 and mel 40.

The release describes the images twice: `PH2_dataset.xlsx` (legend rows, then a header row starting
`Image Name`; the clinical diagnosis is an `X` under `Common Nevus`, `Atypical Nevus` or `Melanoma`)
and `PH2_dataset.txt` (`||`-separated, the dermoscopic criteria `|`-separated inside one field,
clinical diagnosis coded 0/1/2). Both read to identical records; the xlsx wins when both are present.
Group: the image name (one image per lesion). See datasets/PH2.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, DataLayoutError, LoadResult, safe_join
from domgen.data.sources.spec import Acquisition, SyntheticSpec

XLSX, TXT = "PH2_dataset.xlsx", "PH2_dataset.txt"
IMAGES = "PH2 Dataset images"
CLINICAL = ("Common Nevus", "Atypical Nevus", "Melanoma")  # label_map's keys, in the txt's 0/1/2 order
COLOURS = ("White", "Red", "Light-Brown", "Dark-Brown", "Blue-Gray", "Black")  # the txt's codes 1..6
CRITERIA = ["histological_diagnosis", "asymmetry", "pigment_network", "dots_globules", "streaks",
            "regression_areas", "blue_whitish_veil"]


def _key(header: object) -> str:
    """Header cell -> column key: 'Dots/Globules\\n(A/AT/T)' -> 'dots_globules', 'Image Name' -> 'image_name'."""
    text = re.split(r"[\n(]", str(header))[0]
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def _cell(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def _marks(sheet: pd.DataFrame, names: tuple[str, ...]) -> list[list[str]]:
    """Per row, which of the columns ``names`` hold an `X` (absent columns count as unmarked)."""
    cols = [_key(n) for n in names]
    flags = [[sheet[c].iloc[i].upper() == "X" if c in sheet else False for c in cols] for i in range(len(sheet))]
    return [[n for n, f in zip(names, row) if f] for row in flags]


def read_xlsx(path: Path) -> pd.DataFrame:
    """The official sheet -> one row per image (name, clinical_diagnosis, criteria, colors as codes)."""
    try:
        sheet = pd.read_excel(path, header=None, dtype=object, engine="openpyxl").map(_cell)
    except Exception as err:  # a damaged workbook fails anywhere in zip, zlib, XML or openpyxl
        why = (str(err).splitlines() or [""])[0][:120]
        raise DataLayoutError(f"PH2: {path} is not a readable .xlsx workbook ({type(err).__name__}: {why}); "
                              f"download it again or use {TXT}. Expected layout: {PH2.layout}") from None
    starts = [i for i, first in enumerate(sheet[0]) if first.startswith("Image Name")]
    if not starts:
        raise DataLayoutError(f"PH2: no header row starting 'Image Name' in {path}. Expected layout: {PH2.layout}")
    top = starts[0]
    keys = [_key(h) for h in sheet.iloc[top]]
    body = top + 1
    if _key(CLINICAL[0]) not in keys and top + 1 < len(sheet):
        # Two-row header: 'Clinical Diagnosis' / 'Colors' span the class and colour columns below.
        keys = [_key(low) if low else k for k, low in zip(keys, sheet.iloc[top + 1])]
        body = top + 2
    sheet = sheet.iloc[body:].set_axis(keys, axis=1)
    missing = [c for c in CLINICAL if _key(c) not in keys]
    if missing:
        raise DataLayoutError(f"PH2: {path} lacks column(s) {', '.join(missing)}. Expected layout: {PH2.layout}")
    blank = (sheet["image_name"] == "").to_numpy()
    sheet = sheet.iloc[: blank.argmax() if blank.any() else len(sheet)]  # the table ends at a blank row
    return pd.DataFrame({
        "name": sheet["image_name"].to_numpy(),
        "clinical_diagnosis": ["+".join(m) for m in _marks(sheet, CLINICAL)],  # "" or "A+B": dropped
        **{c: sheet[c].to_numpy() if c in sheet else "" for c in CRITERIA},
        "colors": [" ".join(str(COLOURS.index(c) + 1) for c in m) for m in _marks(sheet, COLOURS)],
    })


def read_txt(path: Path) -> pd.DataFrame:
    """The official txt -> the same table as ``read_xlsx``. Lines not starting with `||` (legends) are
    skipped; fields are split on `||`, then the criteria field on `|`."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    cells = [[c.strip() for part in ln.split("||")[1:-1] for c in part.split("|")] for ln in lines
             if ln.startswith("||")]
    heads = [i for i, row in enumerate(cells) if row and row[0] == "Name"]
    if not heads:
        raise DataLayoutError(f"PH2: no header line with 'Name' in {path}. Expected layout: {PH2.layout}")
    keys = [_key(h) for h in cells[heads[0]]]
    if "clinical_diagnosis" not in keys:
        raise DataLayoutError(f"PH2: {path} has no 'Clinical Diagnosis' field. Expected layout: {PH2.layout}")
    body = cells[heads[0] + 1:]
    bad = [" | ".join(r) for r in body if len(r) != len(keys)]
    if bad:
        raise DataLayoutError(f"PH2: {len(bad)} row(s) of {path} do not have the header's {len(keys)} fields, "
                              f"e.g. {bad[0]!r}. Expected layout: {PH2.layout}")
    table = pd.DataFrame(body, columns=keys, dtype=str)
    codes = dict(zip(("0", "1", "2"), CLINICAL))
    return pd.DataFrame({
        "name": table["name"],
        "clinical_diagnosis": [codes.get(c, f"code {c}") for c in table["clinical_diagnosis"]],
        **{c: table[c] if c in table else "" for c in CRITERIA},
        "colors": [" ".join(c.split()) for c in table.get("colors", [""] * len(table))],
    })


# --- the synthetic benchmark's PH2: each diagnosis with the criteria typical of it ---
SYNTHETIC_CRITERIA = {  # asymmetry, network, dots/globules, streaks, regression, blue-whitish veil, colour codes
    "Common Nevus": (0, "T", "A", "A", "A", "A", "3 4"),
    "Atypical Nevus": (1, "AT", "AT", "A", "A", "A", "3 4"),
    "Melanoma": (2, "AT", "AT", "P", "P", "P", "3 4 5 6"),
}


def synthetic_meta(look: str, diagnosis: str, rng, sex: str) -> dict:
    keys = ("asymmetry", "pigment_network", "dots_globules", "streaks", "regression_areas", "blue_whitish_veil",
            "colors")
    return dict(zip(keys, SYNTHETIC_CRITERIA.get(diagnosis, SYNTHETIC_CRITERIA["Common Nevus"])))


SYNTHETIC = SyntheticSpec(
    stream=3,
    counts={"nv": 160, "mel": 40},
    native={"nv": {"Common Nevus": 80, "Atypical Nevus": 80}, "mel": {"Melanoma": 1}},
    acquisition=Acquisition(4 / 3, (0.05, 0.30), (1.10, 0.88, 0.94), 0.02, 0.10, 0.35, 1.20, 0.4, 1.0, 0.008, 1.5, 0.85),
    ids=lambda case, first_image, n: (f"IMD{case + 1:03d}", [f"IMD{case + 1:03d}"], {}),
    meta=synthetic_meta,
)


class PH2(_io.SourceBase):
    name = "PH2"
    domain = "PH2"
    # Common and atypical nevi are nv (80 + 80 = 160), melanoma mel (40): Table 1's PH2 row.
    label_map = {"Common Nevus": "nv", "Atypical Nevus": "nv", "Melanoma": "mel"}
    grouping = "the image name (one image per lesion)"
    order, table2 = 5, 4
    synthetic = SYNTHETIC
    layout = f"{XLSX} or {TXT}, images '{IMAGES}/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp'"

    def find_release(self, folder: Path) -> Path:
        return _io.find_release_any(folder, [XLSX, TXT], self.name, self.layout)

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult:
        root = self.find_release(folder)
        listing = root / XLSX if (root / XLSX).is_file() else root / TXT
        meta = read_xlsx(listing) if listing.suffix == ".xlsx" else read_txt(listing)
        rows = meta.rename(columns={"name": "image_id"})
        rows["group"] = rows["image_id"]
        rows["path"] = [safe_join(root, f"{IMAGES}/{n}/{n}_Dermoscopic_Image/{n}.bmp", self.name)
                        for n in rows["image_id"]]
        diagnosis = rows["clinical_diagnosis"].replace("", "(unmarked)")
        kept, dropped = _io.apply_labels(rows, self, diagnosis)
        return _io.finish(self, root, kept, listing, skip_missing, dropped)


SOURCES.add(PH2.name, PH2())
