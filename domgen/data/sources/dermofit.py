"""Dermofit Image Library (Ballerini et al., 2013): 1,300 clinical images, ten class folders.

There is no metadata file: the class is the folder (`<CLASS>/<ID>/<ID>.png`, lesion mask
`<ID>mask.png` beside it). SCC is outside the seven classes and dropped; IEC joins AK as akiec and PYO
joins VASC, which gives Yoon et al., MICCAI 2019, Table 1's DMF row (331/76/239/65/257/121/123).
Group: the lesion ID (one image per lesion). See datasets/Dermofit.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, LoadResult, safe_join
from domgen.data.sources.spec import Acquisition, SyntheticSpec

CLASS_DIRS = ("AK", "BCC", "DF", "IEC", "MEL", "ML", "PYO", "SCC", "SK", "VASC")
# Images per class folder in the official release.
RELEASE_COUNTS = {"AK": 45, "BCC": 239, "DF": 65, "IEC": 78, "MEL": 76, "ML": 331, "PYO": 24, "SCC": 88,
                  "SK": 257, "VASC": 97}


# Folder codes -> classes. SCC (88) is outside the seven and dropped; IEC (Bowen's disease) joins AK as
# akiec, PYO (pyogenic granuloma) joins VASC: 45+78 = 123 akiec and 97+24 = 121 vasc, as in Table 1.
LABEL_MAP = {"AK": "akiec", "IEC": "akiec", "BCC": "bcc", "DF": "df", "MEL": "mel", "ML": "nv", "SK": "bkl",
             "VASC": "vasc", "PYO": "vasc"}

SYNTHETIC = SyntheticSpec(
    stream=1,
    counts={"nv": 331, "mel": 76, "bcc": 239, "df": 65, "bkl": 257, "vasc": 121, "akiec": 123},
    native={"nv": {"ML": 1}, "mel": {"MEL": 1}, "bcc": {"BCC": 1}, "df": {"DF": 1}, "bkl": {"SK": 1},
            "vasc": {"VASC": 97, "PYO": 24}, "akiec": {"AK": 45, "IEC": 78}},
    dropped={"SCC": (88, "akiec")},
    acquisition=Acquisition(1.0, (0.00, 0.25), (1.00, 0.98, 1.05), 0.02, 0.35, 0.00, None, 0.3, 1.0, 0.005, 1.0, 0.8,
                            glare=2.0),
    ids=lambda case, first_image, n: (f"P{case + 1:04d}", [f"P{case + 1:04d}"], {}),
)


class Dermofit(_io.SourceBase):
    name = "Dermofit"
    domain = "DMF"
    label_map = LABEL_MAP
    grouping = "the lesion ID (one image per lesion)"
    order, table2 = 1, 1
    synthetic = SYNTHETIC
    layout = f"<CLASS>/<ID>/<ID>.png (mask <ID>mask.png beside it), CLASS in {', '.join(CLASS_DIRS)}"

    def find_release(self, folder: Path) -> Path:
        return _io.find_release_any(folder, [f"{c}/" for c in CLASS_DIRS], self.name, self.layout)

    def load(self, folder: Path, skip_missing: bool = False) -> LoadResult:
        root = self.find_release(folder)
        rows = []
        for cls in CLASS_DIRS:
            cls_dir = root / cls
            if not cls_dir.is_dir():
                continue
            # One folder per lesion; anything else in a class folder (notes, thumbnails) is not a case.
            for case in sorted(p.name for p in cls_dir.iterdir() if p.is_dir()):
                path = safe_join(root, f"{cls}/{case}/{case}.png", self.name)
                rows.append({"path": path, "group": case, "image_id": case, "diagnosis": cls})
        table = pd.DataFrame(rows, columns=["path", "group", "image_id", "diagnosis"])
        kept, dropped = _io.apply_labels(table, self, table["diagnosis"])
        return _io.finish(self, root, kept, root, skip_missing, Counter(dropped))


SOURCES.add(Dermofit.name, Dermofit())
