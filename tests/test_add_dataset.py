"""Adding a dataset is one adapter file (plus its card and this kind of test): a toy dermoscopy source,
written here as a file of its own, registers itself and is loaded, counted, split and held out through
the same catalog as the seven, with no edit anywhere else."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from domgen.config import DataConfig
from domgen.data import labels
from domgen.data import synthetic as syn
from domgen.data.catalog import dropped_report, load_catalog
from domgen.data.sources import SOURCES
from domgen.data.writers import Item, write_source
from domgen.data.run_data import prepare_data
from domgen.runs.registry import resolve_config

ADAPTER = '''"""ToyDerm: a made-up clinic's dermoscopy export (labels.csv: file, diagnosis, patient)."""
from pathlib import Path

from domgen.data.sources import _io
from domgen.data.sources.base import SOURCES, find_release, safe_join

LISTING = "labels.csv"


class ToyDerm(_io.SourceBase):
    name = "ToyDerm"
    domain = "TOY"
    layout = f"{LISTING} (columns file,diagnosis,patient) and the images it names"
    label_map = {"naevus": "nv", "melanoma": "mel", "seborrhoeic keratosis": "bkl"}
    case_insensitive = True
    grouping = "patient"

    def find_release(self, folder):
        return find_release(folder, LISTING, self.name, self.layout)

    def load(self, folder, skip_missing=False):
        root = self.find_release(folder)
        meta = _io.read_csv(root / LISTING, self.name, self.layout, ["file", "diagnosis", "patient"])
        rows = meta.assign(group=meta["patient"], image_id=[Path(f).stem for f in meta["file"]],
                           path=[safe_join(root, f, self.name) for f in meta["file"]])
        kept, dropped = _io.apply_labels(rows, self, meta["diagnosis"])
        return _io.finish(self, root, kept, root / LISTING, skip_missing, dropped)


SOURCES.add(ToyDerm.name, ToyDerm())
'''

TINY = np.full((8, 8, 3), 90, np.uint8)
DIAGNOSES = ["Naevus"] * 6 + ["melanoma"] * 4 + ["seborrhoeic keratosis"] * 3 + ["lentigo"] * 2  # lentigo: not mapped


@pytest.fixture
def toy(plugin):
    """The adapter file, imported as a module of its own; the registry is restored afterwards."""
    return plugin(SOURCES, "toyderm", ADAPTER)


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_source("HAM10000", root / "HAM10000",
                 [Item(TINY, ("nv", "mel", "bkl")[i % 3], f"HAM_{i // 2}", f"ISIC_{i:07d}") for i in range(18)])
    toy = root / "ToyDerm"
    (toy / "img").mkdir(parents=True)
    for i, _ in enumerate(DIAGNOSES):
        Image.fromarray(TINY).save(toy / "img" / f"t{i:02d}.png")
    pd.DataFrame({"file": [f"img/t{i:02d}.png" for i in range(len(DIAGNOSES))], "diagnosis": DIAGNOSES,
                  "patient": [f"P{i // 2}" for i in range(len(DIAGNOSES))]}).to_csv(toy / "labels.csv", index=False)
    return root


def test_a_toy_dataset_in_one_file_joins_every_list_and_loads(toy, tmp_path):
    assert labels.DOMAINS == ("HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON", "TOY")  # after the seven
    assert labels.DOMAIN_CODES["ToyDerm"] == "TOY" and labels.domain_code("toyderm") == "TOY"
    assert labels.TABLE2_DOMAINS == ("HAM", "DMF", "D7P", "MSK", "PH2", "SON", "UDA")  # not a column of Table 2
    assert "ToyDerm" not in syn.synthetic_sources()  # no synthetic spec: the benchmark is unchanged
    root = _root(tmp_path)
    catalog = load_catalog(DataConfig(root=str(root), cache_dir=str(tmp_path / "c")))
    assert catalog.domains == ["HAM", "TOY"]
    assert catalog.describe().endswith("(2 of 8 sources loaded; skipped Dermofit, Derm7pt, MSK, UDA, PH2, SONIC)")
    assert catalog.counts().loc["TOY"].to_dict() == {"nv": 6, "mel": 4, "bcc": 0, "df": 0, "bkl": 3, "vasc": 0, "akiec": 0}
    assert "TOY: dropped 2 outside the 7 classes (lentigo 2)" in dropped_report(catalog)
    assert set(catalog.results["TOY"].records["group"]) == {f"P{i}" for i in range(7)}


def test_the_toy_domain_is_held_out_by_its_folder_name(toy, tmp_path):
    root = _root(tmp_path)
    cfg = resolve_config("E", "smoke", 0, [f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.holdout=ToyDerm"])
    assert cfg.data.holdout == ("TOY",)
    data = prepare_data(cfg.data)
    assert data.train_domains == ["HAM"] and Counter(data.manifest["domain"]) == Counter(HAM=18, TOY=13)
    assert "TOY" not in set(data.manifest["domain"].iloc[data.pool])
