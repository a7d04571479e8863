"""``prune --thresholds`` / ``--target-params`` at the smoke preset: the curve, its files, its agreement
with a U run at one of its thresholds, and the budget search."""

from __future__ import annotations

import hashlib
import json

import pytest

from domgen.engine.trainer import Hooks
from domgen.runs.registry import resolve_config
from domgen.run import main, parse_count

THRESHOLDS = [1e-5, 1e-4, 1e-3]


def _args(cache, out) -> list[str]:
    return ["--preset", "smoke", "--cache-dir", str(cache), "--workers", "0", "--out", str(out), "--set", "threads=1"]


def _overrides(cache, out) -> list[str]:
    return [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}"]


@pytest.fixture(scope="module")
def curve(smoke_cache, seed_parents, tmp_path_factory):
    """The CLI's curve at three thresholds (of K, trained with A once per session: conftest.smoke_parents)."""
    out = tmp_path_factory.mktemp("curve-runs")
    seed_parents(out)
    cap = pytest.MonkeyPatch()
    lines: list[str] = []
    cap.setattr("domgen.cli_common.say", lambda line="": lines.append(line))
    try:
        code = main(["prune", "--exp", "U", *_args(smoke_cache, out), "--thresholds", ",".join(map(str, THRESHOLDS))])
    finally:
        cap.undo()
    (folder,) = out.glob("U-curve-s0-*")
    return {"code": code, "lines": lines, "folder": folder, "out": out,
            "record": json.loads((folder / "curve.json").read_text())}


def test_parse_count():
    assert [parse_count(t) for t in ("8.5M", "850k", "1.2G", "8500000", "8.5e6")] == [
        8_500_000, 850_000, 1_200_000_000, 8_500_000, 8_500_000]
    with pytest.raises(ValueError, match="8.5M"):
        parse_count("lots")


@pytest.mark.slow
def test_curve_table_files_and_monotone_sizes(curve):
    assert curve["code"] == 0
    rows = curve["record"]["rows"]
    assert [r["threshold"] for r in rows] == THRESHOLDS
    params = [r["params"] for r in rows]
    assert params[0] >= params[1] >= params[2] and params[0] > params[2]  # smaller threshold, more kept
    assert all(p < curve["record"]["params_before"] == 11_180_103 for p in params)
    assert all(r["macs"] < curve["record"]["macs_before"] for r in rows)
    assert all(0 <= r["val_macro_recall"] <= 100 for r in rows)
    table = [l for l in curve["lines"] if l.strip().split(" ")[0] in {f"{t:.3g}" for t in THRESHOLDS}]
    assert len(table) == 3 and f"{params[1] / 1e6:.3f}" in table[1]
    csv = (curve["folder"] / "curve.csv").read_text().splitlines()
    assert csv[0].startswith("threshold,params,macs,val_macro_recall") and len(csv) == 4
    assert (curve["folder"] / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # the selection says where it is, one line per layer as it starts (minutes on a CPU otherwise silent)
    dcp = [l for l in curve["lines"] if " DCP: selecting the channels of " in l]
    assert dcp[0] == "[U s0] DCP: selecting the channels of g.layer1.0.conv1 (64 inputs; layer 1)"
    assert {l.split(" of ")[1].split(" ")[0] for l in dcp} == set(rows[0]["channels_kept"])


@pytest.mark.slow
def test_a_u_run_at_a_curve_threshold_prunes_to_the_curve_size(curve, smoke_cache):
    """The curve reads every threshold off one sweep; U alone at 1e-3 selects the same channels."""
    from domgen.runs.prune import run_prune

    cfg = resolve_config("U", "smoke", 0, _overrides(smoke_cache, curve["out"]) + ["prune.threshold=1e-3"])
    s = run_prune(cfg).summary
    row = curve["record"]["rows"][2]
    assert (s["params"], s["macs"], s["channels_kept"]) == (row["params"], row["macs"], row["channels_kept"])


@pytest.mark.slow
def test_target_params_picks_the_largest_model_within_the_budget(curve, smoke_cache):
    from domgen.runs.prune_curve import run_prune_curve

    rows = curve["record"]["rows"]
    target = (rows[1]["params"] + rows[2]["params"]) // 2  # between 1e-4 (over) and 1e-3 (within)
    cfg = resolve_config("U", "smoke", 0, _overrides(smoke_cache, curve["out"]))
    lines: list[str] = []
    r = run_prune_curve(cfg, THRESHOLDS, target_params=target, refine=2, hooks=Hooks(log=lines.append))
    assert r.chosen["params"] <= target
    assert r.chosen["params"] == max(row["params"] for row in r.rows if row["params"] <= target)
    new = [row for row in r.rows if row["threshold"] not in THRESHOLDS]
    assert 1 <= len(new) <= 2 and all(1e-4 < row["threshold"] < 1e-3 for row in new)
    assert json.loads((r.out_dir / "curve.json").read_text())["chosen"]["threshold"] == r.chosen["threshold"]
    # the curve's rows, recorded from the same parent, are reused: only the thresholds the search adds are selected
    assert [row for row in r.rows if row["threshold"] in THRESHOLDS] == rows
    assert sum("DCP: selecting the channels of g.layer1.0.conv1 " in line for line in lines) == len(new)
    with pytest.raises(ValueError, match="add larger thresholds"):
        run_prune_curve(cfg, [1e-3], target_params=1000, refine=0)


def test_recorded_rows_are_reused_only_from_the_same_parent_weights(tmp_path):
    from domgen.runs.prune_curve import _recorded, file_sha256

    parent = tmp_path / "best.pt"
    parent.write_bytes(b"weights")
    record = {"parent_sha256": file_sha256(parent), "rows": [{"threshold": 1e-4, "params": 7}]}
    (tmp_path / "curve.json").write_text(json.dumps(record))
    assert file_sha256(parent) == hashlib.sha256(b"weights").hexdigest()
    assert _recorded(tmp_path, file_sha256(parent)) == record
    parent.write_bytes(b"weights, trained again")
    assert _recorded(tmp_path, file_sha256(parent)) == {}
    assert _recorded(tmp_path / "nowhere", "x") == {}
