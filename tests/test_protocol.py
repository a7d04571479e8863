"""The protocol as configuration: domain lists derived from the sources, the label space, the primary
domain and the held-out domains, each with one spelling and one hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from domgen.config import _HASHED_WHEN_SET, _NOT_HASHED, RunConfig, config_hash, flatten, to_dict
from domgen.data import labels
from domgen.data.label_space import DERMOSCOPY7, LABEL_SPACES, LabelSpace, from_labels
from domgen.data.sources import SOURCES
from domgen.errors import ConfigError
from domgen.runs.loo import format_loo
from domgen.runs.registry import EXPERIMENTS, resolve_config
from domgen.runs.train import RunResult


def test_global_lists_are_derived_from_the_sources_in_the_papers_orders():
    # Table 1 rows and Table 2 columns of Yoon et al. (MICCAI 2019), read from each source's own module.
    assert labels.DOMAINS == ("HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON")
    assert labels.TABLE2_DOMAINS == ("HAM", "DMF", "D7P", "MSK", "PH2", "SON", "UDA")
    assert labels.DOMAIN_CODES == {"HAM10000": "HAM", "Dermofit": "DMF", "Derm7pt": "D7P", "MSK": "MSK",
                                   "UDA": "UDA", "PH2": "PH2", "SONIC": "SON"}
    assert labels.PRIMARY_DOMAIN == "HAM" == RunConfig().data.primary
    assert labels.CLASSES == ("nv", "mel", "bcc", "df", "bkl", "vasc", "akiec") == DERMOSCOPY7.classes
    assert {n: SOURCES.get(n).domain for n in SOURCES} == labels.DOMAIN_CODES
    # every label map lands in its source's label space
    for name in SOURCES:
        source = SOURCES.get(name)
        assert set(source.label_map.values()) <= set(LABEL_SPACES.get(source.label_space).classes), name


def test_label_maps_live_with_their_sources():
    assert labels.map_label("Dermofit", "PYO") == "vasc" and labels.map_label("Dermofit", "SCC") is None
    assert labels.map_label("SONIC", " Nevus ") == "nv"  # ISIC vocabularies are matched lower-cased
    assert labels.map_label("PH2", "melanoma") is None  # PH2's column names are exact
    assert labels.LABEL_MAPS["MSK"] is labels.ISIC_MAP


def test_label_space_from_labels_is_sorted_and_refuses_repeats():
    assert from_labels(["dog", "cat", "dog", "horse"]).classes == ("cat", "dog", "horse")
    with pytest.raises(ValueError, match="without repeats"):
        LabelSpace("bad", ("a", "a"))


def test_holdout_sonic_and_son_are_one_run_with_one_hash():
    canonical = resolve_config("S", "smoke")
    assert canonical.data.holdout == ("SON",)
    for spelling in ("SONIC", "sonic", "son", "SON,SONIC"):
        cfg = resolve_config("S", "smoke", overrides=[f"data.holdout={spelling}"])
        assert cfg == canonical and config_hash(cfg, "x") == config_hash(canonical, "x"), spelling
    two = resolve_config("A", "smoke", overrides=["data.holdout=SONIC,ph2"])
    assert two.data.holdout == ("PH2", "SON")  # Table 1 order, whatever order they were typed in


def test_the_loo_table_stars_a_holdout_given_by_folder_name():
    cfg = resolve_config("S", "smoke", overrides=["data.holdout=SONIC"])
    summary = {"exp": cfg.exp, "holdout": list(cfg.data.holdout), "algorithm": "coral",  # what run_context writes
               "test_macro_recall": {d: 50.0 + i for i, d in enumerate(labels.TABLE2_DOMAINS)}}
    row = format_loo([RunResult(Path("runs/S"), summary)]).splitlines()[1]
    cells = row.split()
    assert cells[:3] == ["S", "coral", "SON"]
    son = labels.TABLE2_DOMAINS.index("SON")
    assert cells[3 + son] == "55.0*" and sum(c.endswith("*") for c in cells) == 1
    averaged = format_loo([RunResult(Path("runs/S"), summary | {"average": "swad"})]).splitlines()[1]
    assert averaged.split()[1] == "coral+swad"


def test_new_protocol_keys_leave_every_existing_hash_alone_until_set():
    cfg = resolve_config("K", "paper")
    explicit = resolve_config("K", "paper", overrides=["data.primary=ham10000", "data.layout=native",
                                                       "data.label_space=dermoscopy7", "data.domain_by="])
    assert explicit == cfg and config_hash(explicit, "r") == config_hash(cfg, "r")
    # the hash as it was computed before these keys existed: the same blob without them
    old = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in _NOT_HASHED and k not in _HASHED_WHEN_SET}
    blob = json.dumps(old | {"data.identity": "r"}, sort_keys=True).encode()
    assert config_hash(cfg, "r") == hashlib.sha256(blob).hexdigest()[:10]
    changed = {config_hash(resolve_config("K", "paper", overrides=[o]), "r") for o in
               ("data.primary=DMF", "data.domain_by=localization", "data.layout=metadata_csv")}
    assert len(changed) == 3 and config_hash(cfg, "r") not in changed


def test_primary_none_is_domainbeds_pool_and_spelled_once():
    for spelling in ("none", "None", ""):
        cfg = resolve_config("A", "smoke", overrides=[f"data.primary={spelling}"])
        assert cfg.data.primary == "none" and cfg.data.nsec == "a"  # every training split: nsec = a


def test_protocol_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.primary='HAM'.*also held out"):
        resolve_config("A", "smoke", overrides=["data.holdout=HAM10000"])
    with pytest.raises(ConfigError, match="data.label_space='pacs7'.*dermoscopy7"):
        resolve_config("A", "smoke", overrides=["data.label_space=pacs7"])
    with pytest.raises(ConfigError, match="data.layout='csv'.*metadata_csv"):
        resolve_config("A", "smoke", overrides=["data.layout=csv"])


def test_every_experiment_resolves_to_canonical_holdouts():
    for name in EXPERIMENTS.names():
        cfg = resolve_config(name, "smoke")
        assert all(h in labels.DOMAINS for h in cfg.data.holdout)


def test_a_warm_start_parent_without_primary_is_the_run_a_direct_launch_makes():
    from domgen.runs.train import parent_config

    child = resolve_config("F", "smoke", overrides=["data.primary=none"])
    direct = resolve_config("A", "smoke", overrides=["data.primary=none"])
    parent = parent_config(child)
    assert parent.data == direct.data and config_hash(parent, "x") == config_hash(direct, "x")
