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

CLASS_DIRS = ("AK", "BCC", "DF", "IEC", "MEL", "ML", "PYO", "SCC", "SK", "VASC")
# Images per class folder in the official release.
RELEASE_COUNTS = {"AK": 45, "BCC": 239, "DF": 65, "IEC": 78, "MEL": 76, "ML": 331, "PYO": 24, "SCC": 88,
                  "SK": 257, "VASC": 97}


class Dermofit(_io.SourceBase):
    name = "Dermofit"
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
        kept, dropped = _io.apply_labels(table, self.name, table["diagnosis"])
        return _io.finish(self, root, kept, root, skip_missing, Counter(dropped))


SOURCES.add(Dermofit.name, Dermofit())
