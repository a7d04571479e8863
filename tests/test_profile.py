"""Where a run's time goes: the profile's phases account for its wall time, per epoch and for the
final evaluation, and the torch.profiler trace is written."""

from __future__ import annotations

import json

import pytest

from domgen.engine.profile import PHASES, RunProfile, format_profile
from domgen.engine.trainer import Hooks
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train


@pytest.fixture(scope="module")
def profiled(smoke_cache, seed_parents, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    seed_parents(out, ["A"])  # F's parent, trained once per session
    cfg = resolve_config("F", "smoke", 0, [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1", f"out={out}"])
    prof = RunProfile(trace_steps=2)
    result = run_train(cfg, Hooks(profile=prof))
    return result, prof.report(), cfg


@pytest.mark.slow
def test_phases_sum_to_wall_time(profiled):
    result, report, cfg = profiled
    assert [r["stage"] for r in report["per_stage"]] == [1, 2, "final"]  # smoke CCSA stage: 2 epochs
    assert report["accounted_s"] == pytest.approx(report["wall_s"], rel=0.05)
    assert sum(report["shares"].values()) == pytest.approx(1.0, abs=0.05)
    for r in report["per_stage"][:2]:  # every training epoch reads data, steps and evaluates
        assert all(r[p] > 0 for p in PHASES)
    final = report["per_stage"][-1]
    assert final["data"] == final["forward_backward"] == final["optimizer"] == 0  # no training at the end
    assert final["evaluation"] > 0
    saved = json.loads((result.run_dir / "profile.json").read_text())
    assert saved["totals_s"] == pytest.approx(report["totals_s"])
    assert "share" in format_profile(report)


@pytest.mark.slow
def test_trace_holds_the_named_phases(profiled):
    result, report, _ = profiled
    traces = list((result.run_dir / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    names = {e.get("name") for e in json.loads(traces[0].read_text())["traceEvents"]}
    # two active steps (after one skipped and one warm-up): each a "data" wait and a "step"
    assert {"data", "step", "ProfilerStep#2", "ProfilerStep#3"} <= names
    assert "aten::convolution" in names
