"""The one label space and the one place where each source's diagnoses map onto it.

Seven classes in a fixed order (Yoon et al., MICCAI 2019, Table 1). A diagnosis outside the map is
dropped and counted by the loaders, never relabelled. The maps below reproduce Table 1's counts from
the real releases; the reasoning for each is written in ``datasets/<source>.md``.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("nv", "mel", "bcc", "df", "bkl", "vasc", "akiec")
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)

# Source folder name under the data root -> short domain code used in every table.
DOMAIN_CODES: dict[str, str] = {
    "HAM10000": "HAM",
    "Dermofit": "DMF",
    "Derm7pt": "D7P",
    "MSK": "MSK",
    "UDA": "UDA",
    "PH2": "PH2",
    "SONIC": "SON",
}
# Order of `summary` (Table 1) and of `--json`.
DOMAINS: tuple[str, ...] = ("HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON")
# Column order of the paper's Table 2.
TABLE2_DOMAINS: tuple[str, ...] = ("HAM", "DMF", "D7P", "MSK", "PH2", "SON", "UDA")
PRIMARY_DOMAIN = "HAM"


def domain_code(name: str) -> str:
    """Accept a folder name ("PH2", "SONIC") or a code ("SON"); return the code."""
    if name in DOMAINS:
        return name
    for folder, code in DOMAIN_CODES.items():
        if folder.lower() == name.lower() or code.lower() == name.lower():
            return code
    raise KeyError(f"unknown domain {name!r}; known: {', '.join(DOMAINS)} (or {', '.join(DOMAIN_CODES)})")


# HAM10000 `dx` uses the seven codes directly.
HAM10000_MAP: dict[str, str] = {c: c for c in CLASSES}

# Dermofit folder codes. SCC (88) is outside the seven and dropped; IEC (Bowen's disease) joins AK as
# akiec, PYO (pyogenic granuloma) joins VASC: 45+78 = 123 akiec and 97+24 = 121 vasc, as in Table 1.
DERMOFIT_MAP: dict[str, str] = {
    "AK": "akiec",
    "IEC": "akiec",
    "BCC": "bcc",
    "DF": "df",
    "MEL": "mel",
    "ML": "nv",
    "SK": "bkl",
    "VASC": "vasc",
    "PYO": "vasc",
}

# Derm7pt `diagnosis`. Table 1 counts images (clinical + dermoscopic, two per case): 575 nevus cases
# -> 1150, 252 melanoma cases -> 504, 42 bcc -> 84, 20 df -> 40, 45 seborrheic keratosis -> 90,
# 29 vascular -> 58. Lentigo (24), melanosis (16) and miscellaneous (8) are dropped.
DERM7PT_MAP: dict[str, str] = {
    "clark nevus": "nv",
    "reed or spitz nevus": "nv",
    "dermal nevus": "nv",
    "blue nevus": "nv",
    "congenital nevus": "nv",
    "combined nevus": "nv",
    "recurrent nevus": "nv",
    "melanoma (less than 0.76 mm)": "mel",
    "melanoma (in situ)": "mel",
    "melanoma (0.76 to 1.5 mm)": "mel",
    "melanoma (more than 1.5 mm)": "mel",
    "melanoma metastasis": "mel",
    "melanoma": "mel",
    "basal cell carcinoma": "bcc",
    "dermatofibroma": "df",
    "seborrheic keratosis": "bkl",
    "vascular lesion": "vasc",
}

# PH2 clinical diagnosis columns: common and atypical nevi are nv (80 + 80 = 160), melanoma mel (40).
PH2_MAP: dict[str, str] = {
    "Common Nevus": "nv",
    "Atypical Nevus": "nv",
    "Melanoma": "mel",
}

# ISIC Archive diagnoses (MSK, UDA, SONIC), legacy `diagnosis` strings and the terms of the current
# hierarchical `diagnosis_1..5` (matched from the deepest level up), both lower-cased. Benign keratoses
# (seborrheic keratosis, solar lentigo, lichenoid keratosis) are bkl, as in HAM10000's definition.
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

LABEL_MAPS: dict[str, dict[str, str]] = {
    "HAM10000": HAM10000_MAP,
    "Dermofit": DERMOFIT_MAP,
    "Derm7pt": DERM7PT_MAP,
    "PH2": PH2_MAP,
    "MSK": ISIC_MAP,
    "UDA": ISIC_MAP,
    "SONIC": ISIC_MAP,
}


def map_label(source: str, diagnosis: str) -> str | None:
    """Class of ``diagnosis`` in ``source``'s own vocabulary, or None when it lies outside the seven."""
    table = LABEL_MAPS[source]
    key = diagnosis.strip()
    if source in ("Derm7pt", "MSK", "UDA", "SONIC"):
        key = key.lower()
    return table.get(key)
