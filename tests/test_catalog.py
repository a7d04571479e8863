"""A data root as users lay it out: present sources load, absent ones are skipped and reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from domgen.config import DataConfig
from domgen.data.catalog import dropped_report, load_catalog, summary_table
from domgen.data.labels import CLASSES

REPO = Path(__file__).resolve().parents[1]


def test_only_ham_present_loads_it_and_reports_the_six_absent(tmp_path, real_ham_root):
    root = real_ham_root
    catalog = load_catalog(DataConfig(root=str(root), cache_dir=str(tmp_path / "c")))
    # the line that opens every run on this root
    assert catalog.describe() == f"{root.resolve()} (1 of 7 sources loaded; skipped Dermofit, Derm7pt, MSK, UDA, PH2, SONIC)"
    assert not catalog.synthetic and catalog.domains == ["HAM"]
    assert sorted(catalog.absent) == ["Derm7pt", "Dermofit", "MSK", "PH2", "SONIC", "UDA"]
    assert catalog.counts().loc["HAM"].to_dict() == {c: 10 for c in CLASSES}  # the sample holds 10 real images per class
    assert summary_table(catalog).loc["all", "total"] == 70
    assert sum(line.endswith(")") and "skipped" in line for line in dropped_report(catalog)) == 6


def test_summary_cli_on_a_real_root(tmp_path, real_ham_root):
    root = real_ham_root
    out = subprocess.run([sys.executable, "-m", "domgen.run", "summary", "--data-root", str(root), "--out", str(tmp_path / "s")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"data: data root {root}"
    assert any(l.startswith("HAM ") and l.split()[-2:] == ["70", "0"] for l in lines)
    assert "PH2: skipped" in out.stdout


def test_missing_root_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "domgen.run", "summary", "--data-root", str(tmp_path / "nope")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr
