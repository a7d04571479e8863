"""Schedules and regularisers (issue 14): each schedule's rate against its formula, resume, gradient clipping,
early stopping and head dropout, on constructed values."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from domgen.algorithms.base import Step
from domgen.config import AverageConfig, OptimConfig, RunConfig, apply_overrides, config_hash
from domgen.config_check import validate
from domgen.engine.averaging import make_averager
from domgen.engine.loop import train_epoch
from domgen.engine.profile import NoProfile
from domgen.engine.schedules import ONECYCLE, make_schedule
from domgen.engine.trainer import Hooks, Trainer
from domgen.errors import ConfigError
from domgen.models import build_model
from domgen.models.backbones import Classifier

LR = (1e-3, 2e-4)  # two parameter groups (a regime's layer-wise rates): every schedule keeps their ratio


def optimiser() -> torch.optim.Optimizer:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [a], "lr": LR[0]}, {"params": [b], "lr": LR[1]}], weight_decay=0.0)


def rates(o: OptimConfig, epochs: int | None = None) -> list[list[float]]:
    """Each epoch's learning rate of both groups, stepping as the trainer does (once after each epoch)."""
    opt = optimiser()
    sched = make_schedule(opt, o)
    out = []
    for _ in range(epochs or o.epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()  # no gradients: a no-op, but the order torch expects
        sched.step()
    return out


def cosine(base: float, e: float, span: float, floor: float) -> float:
    return floor + (base - floor) * (1 + math.cos(math.pi * e / span)) / 2


def test_step_is_todays_steplr_exactly():
    o = OptimConfig(epochs=10, lr_step=3, lr_gamma=0.1)
    got = rates(o)
    for e in (0, 2, 3, 6, 9):
        assert got[e] == pytest.approx([lr * 0.1 ** (e // 3) for lr in LR], rel=1e-12)
    assert isinstance(make_schedule(optimiser(), o).scheduler, torch.optim.lr_scheduler.StepLR)


def test_constant_keeps_the_base_rate():
    assert rates(OptimConfig(epochs=6, schedule="constant")) == [list(LR)] * 6


def test_cosine_follows_the_closed_form_down_to_min_lr():
    o = OptimConfig(epochs=10, schedule="cosine", min_lr=1e-5)
    got = rates(o, 11)  # epoch E: the end of the cycle, the floor
    for e in (0, 3, 5, 9, 10):
        assert got[e][0] == pytest.approx(cosine(LR[0], e, 10, 1e-5), rel=1e-9)
        assert got[e][1] == pytest.approx(cosine(LR[1], e, 10, 1e-5), rel=1e-9)
    assert got[5][0] == pytest.approx((LR[0] + 1e-5) / 2)  # half way: the mean of the two ends


def test_warmup_cosine_ramps_linearly_then_cosines_over_the_rest():
    o = OptimConfig(epochs=12, schedule="warmup_cosine", warmup_epochs=3)
    got = rates(o)
    for e in (0, 1, 2):  # lr (e + 1) / (W + 1): never 0
        assert got[e] == pytest.approx([lr * (e + 1) / 4 for lr in LR], rel=1e-12)
    for e in (3, 6, 11):  # the cosine over the remaining 9 epochs
        assert got[e] == pytest.approx([cosine(lr, e - 3, 9, 0.0) for lr in LR], rel=1e-9)
    assert got[3] == pytest.approx(list(LR))


def test_onecycle_rises_to_lr_then_anneals_to_its_floor_over_the_epochs():
    o = OptimConfig(epochs=10, schedule="onecycle")
    got = rates(o, 12)  # two steps past the end: skipped, not an error
    start, peak_at = LR[0] / ONECYCLE["div_factor"], ONECYCLE["pct_start"] * 10 - 1  # 2.0
    floor = start / ONECYCLE["final_div_factor"]
    assert got[0][0] == pytest.approx(start)
    assert got[1][0] == pytest.approx(cosine(start, 1, peak_at, LR[0]), rel=1e-9)  # half way up: the mean
    assert got[2][0] == pytest.approx(LR[0])
    assert got[5][0] == pytest.approx(cosine(LR[0], 5 - peak_at, 9 - peak_at, floor), rel=1e-9)
    assert got[9][0] == pytest.approx(floor) and got[11][0] == pytest.approx(floor)
    assert got[5][1] / got[5][0] == pytest.approx(LR[1] / LR[0])


@pytest.mark.parametrize("name", ["step", "constant", "cosine", "warmup_cosine", "onecycle"])
def test_a_resumed_schedule_continues_on_the_uninterrupted_curve(name):
    o = OptimConfig(epochs=9, schedule=name, warmup_epochs=2, lr_step=4)
    whole = rates(o)
    opt = optimiser()
    sched = make_schedule(opt, o)
    for _ in range(4):
        opt.step(), sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # what last.pt holds, read as the trainer reads it
    opt2 = optimiser()
    sched2 = make_schedule(opt2, o)  # built fresh, as a resumed Trainer does
    opt2.load_state_dict(state["optimizer"]), sched2.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(5):
        rest.append([g["lr"] for g in opt2.param_groups])
        opt2.step(), sched2.step()
    assert rest == whole[4:]


def test_schedule_keys_validate_and_hash_only_when_set():
    base = RunConfig()
    assert config_hash(apply_overrides(base, ["optim.schedule=step", "optim.clip_norm=0", "model.head_dropout=0"])) == config_hash(base)
    assert config_hash(apply_overrides(base, ["optim.schedule=cosine"])) != config_hash(base)
    for bad in (["optim.schedule=linear"], ["optim.schedule=warmup_cosine", "optim.warmup_epochs=0"],
                ["optim.clip_norm=-1"], ["optim.patience=-2"], ["model.head_dropout=1"]):
        with pytest.raises(ConfigError, match=bad[-1].split("=")[0]):
            validate(apply_overrides(base, bad))


# ---- gradient clipping -------------------------------------------------------------------------------
class LinearLoss:
    """An 'algorithm' whose loss is <g, w> for a constructed g: the gradient of w is exactly g."""

    def __init__(self, g: torch.Tensor):
        self.g = g

    def loss(self, model, batch) -> Step:
        return Step((model.weight * self.g).sum())


def step_once(g: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, dict]:
    model = nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batch = type("Batch", (), {"y": torch.zeros(2)})()  # the loss ignores it; train_epoch reads y's size
    logs = train_epoch(model, [batch], LinearLoss(g), opt, torch.device("cpu"), "fp32", clip_norm=clip_norm)
    return model.weight.detach() - before, logs


def test_clipping_bounds_the_gradient_norm_and_keeps_its_direction():
    g = torch.tensor([[3.0, 4.0, 0.0, 12.0]])  # norm 13
    moved, logs = step_once(g, clip_norm=2.6)
    assert torch.allclose(moved, -g * 2.6 / 13, atol=1e-6)  # SGD, lr 1: the step is the clipped gradient
    assert float(torch.linalg.vector_norm(moved)) == pytest.approx(2.6, rel=1e-5)
    assert logs["grad_norm"] == pytest.approx(13.0)  # logged before clipping
    moved, logs = step_once(g, clip_norm=20.0)  # below the bound: untouched
    assert torch.allclose(moved, -g)
    moved, logs = step_once(g, clip_norm=0.0)  # off: the step of before, nothing logged
    assert torch.allclose(moved, -g) and "grad_norm" not in logs


# ---- early stopping ----------------------------------------------------------------------------------
class ScoredTrainer(Trainer):
    """The real :meth:`Trainer.fit` loop with training and validation replaced by a constructed score sequence."""

    def __init__(self, scores, patience, epochs, run_dir):
        self.cfg = replace(RunConfig(), optim=OptimConfig(epochs=epochs, patience=patience))
        self.scores, self.hooks, self.profile, self.run_dir = scores, Hooks(), NoProfile(), run_dir
        self.model = nn.Linear(1, 1)
        self.averager = make_averager(AverageConfig(), self.model)
        self.evaluator = SimpleNamespace(val_loss=None)  # no weight averaging: its validation loss is never asked
        self.epoch, self.best_score, self.best_epoch, self.saved_epoch, self.train_s = 0, -math.inf, -1, 0, 0.0
        self.trained: list[int] = []

    def fit(self):
        super().fit()
        self.tb.close()  # the real run closes it after its final evaluation, which this one skips

    def _train_one(self, epoch):
        self.trained.append(epoch)
        return {}

    def validate(self, epoch):
        return self.scores[epoch - 1], []

    def _log_epoch(self, *args):
        pass

    def state(self):
        return {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch}

    def best_state(self):
        return {"epoch": self.epoch}


SCORES = [50.0, 60.0, 59.0, 61.0, 60.0, 60.5, 58.0, 70.0, 71.0, 72.0]  # best at epochs 2, 4, then none until 8


def test_early_stopping_stops_patience_epochs_after_the_best(tmp_path):
    run = ScoredTrainer(SCORES, patience=3, epochs=10, run_dir=tmp_path)
    run.fit()
    # epoch 4 (61.0) is the last improvement; 5, 6, 7 do not improve: stop after epoch 7
    assert run.trained == list(range(7)) and run.epoch == 7 and run.best_epoch == 4 and run.stopped_early()
    run = ScoredTrainer(SCORES, patience=4, epochs=10, run_dir=tmp_path / "p4")
    run.fit()  # epoch 8 (70.0) comes in time: runs to the end
    assert run.epoch == 10 and run.best_epoch == 10 and not run.stopped_early()
    run = ScoredTrainer(SCORES, patience=0, epochs=10, run_dir=tmp_path / "off")
    run.fit()
    assert run.epoch == 10


@pytest.mark.parametrize("killed_after", [5, 7])
def test_a_resumed_run_stops_where_the_uninterrupted_one_does(tmp_path, killed_after):
    first = ScoredTrainer(SCORES[:killed_after], patience=3, epochs=killed_after, run_dir=tmp_path / "a")
    first.fit()  # the kill: last.pt holds epoch, best score and best epoch
    state = first.state()
    resumed = ScoredTrainer(SCORES, patience=3, epochs=10, run_dir=tmp_path / "b")
    resumed.epoch, resumed.best_score, resumed.best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
    resumed.fit()
    assert resumed.epoch == 7 and resumed.trained == list(range(killed_after, 7))  # killed after 7: nothing more


# ---- head dropout ------------------------------------------------------------------------------------
def test_head_dropout_zero_is_todays_model_and_its_state_dict():
    torch.manual_seed(0)
    plain = build_model("resnet18", "none", 7)
    torch.manual_seed(0)
    dropped = build_model("resnet18", "none", 7, head_dropout=0.3)
    assert "drop" not in dict(plain.named_modules()) and plain.drop is None
    assert list(plain.state_dict()) == list(dropped.state_dict())  # Dropout has no state: same keys either way
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropped.state_dict().values()))


def test_head_dropout_drops_features_before_the_head_in_training_only():
    torch.manual_seed(0)
    model = Classifier(nn.Flatten(), 6, 3, head_dropout=0.5)
    x = torch.randn(4, 6)
    torch.manual_seed(1)
    logits, z = model.forward_both(x)
    torch.manual_seed(1)
    mask = torch.empty_like(x).bernoulli_(0.5)  # what nn.Dropout(0.5) draws: keep with probability 1 - p
    assert torch.equal(z, x)  # the features are g's, not dropped
    assert torch.allclose(logits, model.h(x * mask / 0.5))
    model.eval()
    assert torch.allclose(model(x), model.h(x))
    model.set_head_dropout(0.0)
    assert model.drop is None and "drop" not in dict(model.named_modules())


def test_no_warning_from_the_schedules():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("step", "constant", "cosine", "warmup_cosine", "onecycle"):
            rates(OptimConfig(epochs=6, schedule=name, warmup_epochs=2))
