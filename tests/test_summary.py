"""`summary` on the synthetic default: Table 1 layout for all seven domains, counts as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from domgen.data.labels import CLASSES, DOMAINS
from domgen.data.synthetic import planned_counts, planned_dropped

REPO = Path(__file__).resolve().parents[1]
CODES = {"HAM10000": "HAM", "Dermofit": "DMF", "Derm7pt": "D7P", "MSK": "MSK", "UDA": "UDA", "PH2": "PH2", "SONIC": "SON"}


def _summary(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DOMGEN_DATA"}
    return subprocess.run([sys.executable, "-m", "domgen.run", "summary", "--cache-dir", str(cache), "--scale", "0.25", *args],
                          cwd=REPO, capture_output=True, text=True, env=env)


def test_summary_json_counts_every_domain_as_planned(smoke_cache):
    out = _summary(smoke_cache, "--json")
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert list(counts) == list(DOMAINS)
    planned = {CODES[s]: c for s, c in planned_counts(0.25).items()}
    for d in DOMAINS:
        assert counts[d] == {c: planned[d].get(c, 0) for c in CLASSES}
    assert "synthetic" in out.stderr.splitlines()[0]


def test_summary_table_files_and_dropped_accounting(smoke_cache, tmp_path):
    out = _summary(smoke_cache, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("data: synthetic benchmark")
    table = pd.read_csv(tmp_path / "summary.csv", index_col=0)
    dropped = {CODES[s]: sum(v.values()) for s, v in planned_dropped(0.25).items()}
    for d in DOMAINS:
        assert table.loc[d, "dropped"] == dropped.get(d, 0)
        assert table.loc[d, "total"] == sum(table.loc[d, c] for c in CLASSES)
    assert table.loc["all", "total"] == sum(table.loc[d, "total"] for d in DOMAINS)
    assert (tmp_path / "summary.md").read_text().startswith("Data: synthetic")
