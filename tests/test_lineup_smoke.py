"""Issue 14's "done when": every regime, every schedule and every augmentation policy trains at the smoke
preset with ERM and with weighted CCSA (one epoch, 1/20 of the synthetic benchmark, one thread, shared
data). Each run must record the knob it was given and end with a finite loss and a macro recall in [0, 100] (percent);
the regimes' own behaviour (which parameters train, their rates, penalties) is tested in test_regimes.py.
LoRA needs peft and a timm ViT: it runs on vit_tiny when peft is installed and is skipped otherwise."""

from __future__ import annotations

import math

import pytest

from conftest import TINY_SCALE
from domgen.config import POLICIES, SCHEDULES
from domgen.engine.logging import read_results
from domgen.regimes import REGIMES
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train

pytestmark = pytest.mark.slow

ALGORITHMS = {"erm": [], "ccsa": ["algorithm.name=ccsa", "data.nsec=1"]}  # CCSA pairs need a secondary domain
# the regimes that schedule phases by epoch need a phase to switch at: probe / unfreeze after epoch 1 of 2
REGIME_SET = {"lp_ft": ["regime.lp_epochs=1", "optim.epochs=2"], "gradual_unfreeze": ["optim.epochs=2"],
              "lora": ["model.arch=vit_tiny"]}
SCHEDULE_SET = {"warmup_cosine": ["optim.warmup_epochs=1", "optim.epochs=2"]}
CASES = ([("regime", r) for r in REGIMES.names()] + [("schedule", s) for s in SCHEDULES]
         + [("policy", p) for p in POLICIES])


@pytest.fixture(scope="module")
def cache(tiny_cache):
    """The synthetic benchmark at 1/20 scale, generated once per session (conftest.tiny_cache)."""
    return tiny_cache


@pytest.fixture(scope="module", autouse=True)
def no_figures():
    """The confusion-matrix figures (matplotlib, half of a smoke run's seconds) are not what this checks."""
    from domgen.engine import logging
    from domgen.engine.logging import TensorBoard

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logging, "confusion_figure", lambda *args, **kwargs: None)
        mp.setattr(TensorBoard, "figure", lambda *args, **kwargs: None)
        yield


def _overrides(kind: str, name: str) -> list[str]:
    if kind == "regime":
        return [f"regime.name={name}", *REGIME_SET.get(name, [])]
    if kind == "schedule":
        return [f"optim.schedule={name}", *SCHEDULE_SET.get(name, [])]
    return [f"augment.policy={name}"]


# Every case with ERM; with CCSA the regimes (which decide what CCSA's terms can move). Schedules and
# policies act in the engine and the input path, the same for every algorithm, so CCSA adds no new path there.
RUNS = [(a, k, n) for a in ALGORITHMS for k, n in CASES if a == "erm" or k == "regime"]


@pytest.mark.parametrize("algorithm,kind,name", RUNS, ids=[f"{a}-{k}-{n}" for a, k, n in RUNS])
def test_every_regime_schedule_and_policy_trains_at_smoke(cache, tmp_path, algorithm, kind, name):
    if name == "lora":
        pytest.importorskip("peft")
    cfg = resolve_config("A", "smoke", 0, [f"data.cache_dir={cache}", f"data.synthetic_scale={TINY_SCALE}", "data.workers=0",
                                           "threads=1", f"out={tmp_path}", "optim.epochs=1",
                                           *ALGORITHMS[algorithm], *_overrides(kind, name)])
    result = run_train(cfg)
    rows = read_results(result.run_dir)
    train = [r for r in rows if r["stage"] == "train"]
    assert len(train) == cfg.optim.epochs and all(math.isfinite(r["train_loss"]) for r in train)
    # the record names a knob only when it is not the default (ft, step, paper), so older records stay as they are
    record = {"regime": rows[0].get("regime", "ft"), "schedule": rows[0].get("schedule", "step"),
              "policy": rows[0].get("augment", "paper")}
    assert record[kind] == name and rows[0].get("algorithm", "erm") == algorithm
    if algorithm == "ccsa":  # the alignment terms were computed
        assert all(math.isfinite(r["train_sep"]) and math.isfinite(r["train_align"]) for r in train)
    recall = result.summary["test_macro_recall"]  # {domain: macro recall}
    assert recall and all(0.0 <= v <= 100.0 for v in recall.values())  # percent
