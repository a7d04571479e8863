"""Dump the resolved configs (and their hashes) of every experiment x preset of a study to JSON.

Run once before a change to how studies are defined; ``tests/test_studies.py`` compares against the dump
(``tests/data/yoon2019_resolved.json``), so run folders keep their names. A person runs this; the package
never imports it.

    python tools/dump_resolved.py > tests/data/yoon2019_resolved.json
"""

from __future__ import annotations

import json
import sys

from domgen.config import config_hash, to_dict
from domgen.runs.registry import EXPERIMENTS, PRESETS, resolve_config


def dump() -> dict:
    out = {}
    for preset in sorted(PRESETS):
        for name in EXPERIMENTS.names():
            cfg = resolve_config(name, preset, seed=0)
            d = to_dict(cfg)
            d.pop("study", None), d.pop("study_file", None)  # constant here (yoon2019, found by name); not in the first dump
            out[f"{name}/{preset}"] = {"config": d, "hash": config_hash(cfg, "synthetic:snapshot")}
    return out


if __name__ == "__main__":
    json.dump(dump(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
