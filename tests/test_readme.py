"""The README quotes what the code prints today: `list` verbatim, Table 2's captions and header, and (slow)
the `summary` block on the synthetic default. The quotes are read from the README itself, so refreshing
them with ``tools/readme_outputs.sh --write`` keeps this test meaningful."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from domgen import run

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_outputs", REPO / "tools" / "readme_outputs.py")
readme_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_outputs)
QUOTED = readme_outputs.blocks((REPO / "README.md").read_text())


def test_list_output_is_quoted_verbatim(capsys):
    assert run.main(["list"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == QUOTED["list"]


def test_list_algorithms_output_is_quoted_verbatim(capsys):
    assert run.main(["list", "algorithms"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == QUOTED["algorithms"]


def _write_run(root: Path, exp: str, holdout: list[str], nsec: str, algorithm: str, recalls: dict[str, float]) -> None:
    run_dir = root / f"{exp}-s0-0123456789"
    run_dir.mkdir(parents=True)
    align = {"weighted_align": True} if algorithm == "ccsa" else {}  # what CCSA's describe() records
    ctx = dict(exp=exp, seed=0, preset="quick", config_hash="0123456789", data="synthetic:x", synthetic=True,
               arch="resnet18", nsec=nsec, algorithm=algorithm, loss="ce", weighted_cls=True, holdout=holdout,
               train_domains=["HAM"]) | align
    rows = [ctx | dict(epoch=1, stage="final", split="test", domain=d, n=10, macro_recall=v) for d, v in recalls.items()]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "done").write_text("{}\n")


def test_table_captions_and_header_are_quoted(tmp_path, capsys):
    quoted = QUOTED["table"].splitlines()
    header = next(i for i, line in enumerate(quoted) if line.startswith("| Exp"))
    domains = [c.strip() for c in quoted[header].split("|")[7:14]]
    # the main job's two runs (A, and R holding out PH2), one seed of the quick preset on synthetic data
    _write_run(tmp_path, "A", [], "0", "erm", {d: 50.0 for d in domains})
    _write_run(tmp_path, "R", ["PH2"], "a", "ccsa", {d: 60.0 for d in domains})
    assert run.main(["table", "--runs", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[: header + 2] == quoted[: header + 2]  # captions, header and alignment row


@pytest.mark.slow
def test_summary_block_reproduces_on_the_synthetic_default(tmp_path):
    assert readme_outputs.summary_output(cache=tmp_path / "cache") == QUOTED["summary"]
