"""Issue 14's training knobs end to end at the smoke preset (CPU, seconds each): a schedule, a policy, batch
mixing, clipping, head dropout and early stopping in one ERM run, CCSA with another policy and schedule,
and a policy through the uncached PIL reference path."""

from __future__ import annotations

import math

import pytest

from domgen.engine.logging import read_results
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train

pytestmark = pytest.mark.slow


def smoke(cache, out, *extra, exp="A"):
    return resolve_config(exp, "smoke", 0, [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}", *extra])


def test_erm_with_every_knob_records_them_and_its_stopping_epoch(smoke_cache, tmp_path):
    cfg = smoke(smoke_cache, tmp_path, "optim.schedule=warmup_cosine", "optim.warmup_epochs=1", "augment.policy=dermoscopy",
                "augment.mix=cutmix", "optim.clip_norm=1.0", "optim.patience=1", "model.head_dropout=0.2")
    result = run_train(cfg)
    rows = read_results(result.run_dir)
    train = [r for r in rows if r["stage"] == "train"]
    assert train[0]["train_lr"] == pytest.approx(cfg.optim.lr / 2)  # warmup: lr (e + 1) / (W + 1) at epoch 0
    assert all(r["train_grad_norm"] > 0 for r in train)  # clipping on: the norm before clipping is logged
    assert result.summary["stopped_epoch"] == len(train)  # the epoch training stopped at (2 = all, or 1 = early)
    assert rows[0]["schedule"] == "warmup_cosine" and rows[0]["augment"] == "dermoscopy" and rows[0]["mix"] == "cutmix"
    assert rows[0]["head_dropout"] == 0.2 and rows[0]["augment_jitter"] == 0.1


def test_ccsa_trains_with_a_policy_and_a_schedule(smoke_cache, tmp_path):
    result = run_train(smoke(smoke_cache, tmp_path, "algorithm.name=ccsa", "data.nsec=1", "augment.policy=heavy", "optim.schedule=onecycle"))
    train = [r for r in read_results(result.run_dir) if r["stage"] == "train"]
    # two epochs: OneCycleLR's peak (step 0.3 E - 1 = -0.4) is before the first, which starts on the way down
    low = 1e-3 / 25 / 1e4
    assert len(train) == 2 and train[0]["train_lr"] == pytest.approx(low + (1e-3 - low) * (1 + math.cos(math.pi * 0.4 / 1.4)) / 2)
    assert train[1]["train_lr"] == pytest.approx(low)
    assert result.summary["test_macro_recall"]


def test_the_uncached_reference_path_takes_a_policy_and_mixing(smoke_cache, tmp_path):
    result = run_train(smoke(smoke_cache, tmp_path, "data.cached=false", "augment.policy=basic", "augment.mix=mixup",
                             "optim.schedule=cosine"))
    train = [r for r in read_results(result.run_dir) if r["stage"] == "train"]
    assert [r["train_lr"] for r in train] == pytest.approx([1e-3, 5e-4])  # cosine over 2 epochs: lr, lr / 2
