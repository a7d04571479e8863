"""``data.domain_by``: domains re-drawn by a metadata column (Yoon et al., MICCAI 2019, Sec. 5, future
work), checked on the real HAM10000 metadata: counts per new domain from the real file."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from domgen.config import DataConfig
from domgen.data.catalog import load_catalog
from domgen.data.repartition import domain_values
from domgen.data.sources import DataLayoutError
from domgen.data.sources.ham10000 import label_metadata
from domgen.data.run_data import prepare_data
from domgen.runs.registry import resolve_config


@pytest.fixture
def ham_rows(shared_data) -> pd.DataFrame:
    meta = pd.read_csv(shared_data / "HAM10000_metadata_full.csv", dtype=str, keep_default_na=False)
    rows, _ = label_metadata(meta)
    return rows.assign(domain="HAM")


def test_dx_type_domains_of_the_real_metadata(ham_rows):
    # No lesion of HAM10000 has two confirmation types, so each domain is its raw count in the file.
    assert Counter(domain_values(ham_rows, "dx_type")) == Counter(histo=5340, follow_up=3704, consensus=902, confocal=69)


def test_localization_moves_a_lesion_whole_to_its_majority_site(ham_rows):
    new = domain_values(ham_rows, "localization")
    raw = Counter(ham_rows["localization"])
    got = Counter(new)
    # Two real lesions span two sites: HAM_0000871 (chest, chest, trunk) and HAM_0001726 (back, back,
    # trunk); their trunk images follow the lesion, so no lesion can straddle two domains (or splits).
    assert {k: (raw[k], got[k]) for k in raw if raw[k] != got[k]} == {"back": (2192, 2193), "trunk": (1404, 1402),
                                                                     "chest": (407, 408)}
    assert len(got) == 15 and sum(got.values()) == 10015
    per_lesion = pd.DataFrame({"lesion": ham_rows["group"], "domain": new}).groupby("lesion")["domain"].nunique()
    assert per_lesion.max() == 1


def test_catalog_by_dx_type_on_the_real_sample_and_a_run_on_it(tmp_path, shared_data, real_ham_root):
    root = real_ham_root
    sample = pd.read_csv(shared_data / "ham10000_sample" / "HAM10000_metadata.csv", dtype=str)
    cfg = DataConfig(root=str(root), cache_dir=str(tmp_path / "c"), domain_by="dx_type")
    catalog = load_catalog(cfg)
    assert catalog.domains == ["confocal", "consensus", "follow_up", "histo"]
    totals = catalog.counts().sum(axis=1).to_dict()
    assert totals == {"confocal": 1, "consensus": 16, "follow_up": 8, "histo": 45} == sample["dx_type"].value_counts().to_dict()
    assert catalog.counts().loc["follow_up"].to_dict() == {"nv": 8, "mel": 0, "bcc": 0, "df": 0, "bkl": 0, "vasc": 0, "akiec": 0}
    assert set(catalog.records()["source_domain"]) == {"HAM"}
    run = resolve_config("D", "smoke", 0, [f"data.root={root}", "data.domain_by=dx_type", "data.primary=histo",
                                           "data.holdout=follow_up", f"data.cache_dir={tmp_path / 'c'}"])
    data = prepare_data(run.data)
    assert data.primary == "histo" and "follow_up" not in data.train_domains
    pool = Counter(data.manifest["domain"].iloc[data.pool])
    assert pool["follow_up"] == 0 and pool["histo"] == int(((data.manifest["domain"] == "histo") & (data.manifest["split"] == "train")).sum())


def test_default_primary_is_refused_when_domains_are_redrawn(tmp_path, real_ham_root):
    cfg = DataConfig(root=str(real_ham_root), cache_dir=str(tmp_path / "c"), domain_by="localization")
    with pytest.raises(ValueError, match=r"data.primary=HAM is not a domain of this data \(abdomen, back, "):
        prepare_data(cfg)


def test_unknown_column_lists_the_columns_there_are(tmp_path, real_ham_root):
    cfg = DataConfig(root=str(real_ham_root), cache_dir=str(tmp_path / "c"), domain_by="skin_tone")
    with pytest.raises(DataLayoutError, match="no loaded source has a column 'skin_tone' .*dx, dx_type, .*localization"):
        load_catalog(cfg)
