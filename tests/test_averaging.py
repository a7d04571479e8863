"""Weight averaging (domgen.engine.averaging): EMA and SMA against their formulas on constructed weight
sequences, SWAD's window rule on hand-worked loss sequences, the online SWAD averager against the window's
mean, checkpoint round trips, and, through the trainer, that the averaged weights are the evaluated ones
and that a resumed run equals the uninterrupted one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_SCALE, interrupt_at
from domgen.config import AverageConfig, RunConfig, apply_overrides, config_hash
from domgen.config_check import validate
from domgen.engine.averaging import SMA, final_window, loss_valley, make_averager
from domgen.engine.logging import read_results
from domgen.errors import ConfigError, RunInterrupted
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train


class Toy(nn.Module):
    """Linear (2 x 3 + 2 parameters) then BatchNorm1d (2 + 2 parameters; running statistics), float64."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2).double()
        self.bn = nn.BatchNorm1d(2).double()

    def forward(self, x):
        return self.bn(self.fc(x))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def set_weights(model: nn.Module, step: int) -> list[torch.Tensor]:
    """Step ``step``'s constructed weights (each a deterministic function of the step) and BN statistics."""
    g = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        model.bn.running_mean.fill_(float(step))
    return params(model)


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- EMA and SMA -----------------------------------------------------------------------------------
def test_ema_after_k_steps_is_the_hand_formula_and_buffers_are_copied():
    model, d = Toy(), 0.9
    avg = make_averager(AverageConfig(name="ema", decay=d), model)
    e = None
    for step in range(1, 6):
        w = set_weights(model, step)
        avg.update(model)
        e = w if e is None else [d * a + (1 - d) * b for a, b in zip(e, w)]  # e_1 = w_1, e_t = d e_{t-1} + (1-d) w_t
    for got, want in zip(avg.eval_model(model).parameters(), e):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float(avg.eval_model(model).bn.running_mean[0]) == 5.0  # the last step's, not an average
    assert avg.eval_model(model) is not model


def test_sma_is_the_arithmetic_mean_from_the_start_epoch_on():
    model = Toy()
    avg = make_averager(AverageConfig(name="sma", start_epoch=1), model)
    seen = []
    for epoch in range(3):
        avg.begin_epoch(epoch)
        for k in range(2):
            seen.append(set_weights(model, 10 * epoch + k))
            avg.update(model)
        if epoch == 0:  # not started yet: the current weights
            for got, want in zip(avg.eval_model(model).parameters(), seen[-1]):
                assert torch.equal(got, want)
    # started after epoch 0: the mean of the last pre-start weights (Arpit et al. Eq. 1's w_{t0}) and
    # the four steps since
    window = seen[1:]
    for i, got in enumerate(avg.eval_model(model).parameters()):
        torch.testing.assert_close(got, sum(w[i] for w in window) / len(window), rtol=1e-12, atol=1e-12)


def test_sma_state_survives_a_weights_only_checkpoint_and_continues_identically():
    torch.manual_seed(0)
    model = Toy()
    a, b = make_averager(AverageConfig(name="sma"), model), None
    for step in range(6):
        if step == 3:  # "resume": a fresh averager of a fresh model, loaded from the checkpointed state
            b = make_averager(AverageConfig(name="sma"), Toy())
            b.load_state_dict(roundtrip(a.state_dict()))
        set_weights(model, step)
        a.update(model)
        if b is not None:
            b.update(model)
    for x, y in zip(a.eval_model(model).state_dict().values(), b.eval_model(model).state_dict().values()):
        assert torch.equal(x, y)


# ---- SWAD's window rule ----------------------------------------------------------------------------
def test_loss_valley_converges_extends_back_and_keeps_a_spike_followed_by_a_low_loss():
    losses = [2.0, 1.0, 0.9, 0.8, 0.85, 0.9, 1.5, 0.95, 3.0]
    # t = 5: [0.8, 0.85, 0.9] has its minimum first -> converged at segment 3 (earlier windows end lower);
    # threshold = 1.3 * mean(0.8, 0.85, 0.9) = 1.105; back from 3 over at most 6 - 3 segments: 0.9 and 1.0
    # are below it, 2.0 is not -> start 1; forward: 1.5 is above but 0.95 follows within 6 -> kept; 3.0
    # at the end has nothing below the threshold after it -> left out
    v = loss_valley(losses)
    assert (v.converged, v.start, v.end, v.dead) == (3, 1, 7, False)
    assert v.threshold == pytest.approx(1.105)
    assert final_window(losses) == (1, 7)
    assert loss_valley(losses[:5]).converged is None  # not yet: t = 5 is the first window with its minimum first


def test_loss_valley_looks_back_at_most_n_tolerance_minus_n_converge_segments():
    # converged at 5 (t = 7: [0.9, 0.92, 0.95]); threshold 1.3 * 0.9233 = 1.2003, which every loss is below;
    # the look-back stops at 5 - (6 - 3) = 2 although 1.15 at segment 1 is below the threshold too
    losses = [1.2, 1.15, 1.1, 1.05, 1.0, 0.9, 0.92, 0.95]
    v = loss_valley(losses)
    assert (v.converged, v.start, v.end) == (5, 2, 7)


def test_loss_valley_never_converging_keeps_the_last_segment():
    assert loss_valley([5.0, 4.0, 3.0, 2.0, 1.0]).converged is None  # still decreasing
    assert final_window([5.0, 4.0, 3.0, 2.0, 1.0]) == (4, 4)
    assert final_window([1.0, 0.5]) == (1, 1)  # fewer segments than n_converge
    assert final_window([1.0, 1.0, 1.0]) == (0, 2)  # ties: the oldest is the minimum (np.argmin)


def test_loss_valley_dies_after_n_tolerance_segments_above_the_threshold():
    # converged at 1 (t = 3: [0.5, 0.6, 0.7]); threshold 1.3 * 0.6 = 0.78; 1.0 before it is above -> start 1;
    # 0.6 and 0.7 in; six 2.0s in a row -> dead, and the later low losses no longer count
    losses = [1.0, 0.5, 0.6, 0.7, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.4]
    assert not loss_valley(losses[:9]).dead  # five above: not yet
    v = loss_valley(losses[:10])
    assert (v.converged, v.start, v.end, v.dead) == (1, 1, 3, True)
    assert final_window(losses) == (1, 3)
    # the custom rule's constants apply: with n_tolerance 2 it dies at the second 2.0, n_converge 2 converges at 1
    assert loss_valley(losses, n_converge=2, n_tolerance=2).end == 3
    assert loss_valley(losses, n_converge=2, n_tolerance=2, tolerance_ratio=4.0).end == 11  # 2.0 < 5 * 0.55


def _swad_epochs(model, avg, losses, steps=2, resume_at=None):
    """Runs epochs whose step weights are set_weights(10 e + k); returns the averager and each segment's mean."""
    segments = []
    for e, loss in enumerate(losses):
        if e == resume_at:
            fresh = make_averager(avg.cfg, Toy())
            fresh.load_state_dict(roundtrip(avg.state_dict()))
            avg = fresh
        avg.begin_epoch(e)
        ws = []
        for k in range(steps):
            ws.append(set_weights(model, 10 * e + k))
            avg.update(model)
        segments.append([sum(w[i] for w in ws) / steps for i in range(len(ws[0]))])
        out = avg.end_epoch(e, model, lambda m, loss=loss: loss)
        if out:
            assert out == {"swad_val_loss": loss}
    return avg, segments


@pytest.mark.parametrize("losses", [[2.0, 1.0, 0.9, 0.8, 0.85, 0.9, 1.5, 0.95, 3.0],
                                    [1.0, 0.5, 0.6, 0.7, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.4],
                                    [5.0, 4.0, 3.0, 2.0], [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
                                    # the look-back reaches its full depth (n_tolerance - n_converge): the
                                    # averager must still hold the segment it reaches back to
                                    [1.2, 1.15, 1.1, 1.05, 1.0, 0.9, 0.92, 0.95]])
def test_swad_model_is_the_mean_of_the_window_segments_with_bn_recomputed_and_resume_is_exact(losses):
    model = Toy()
    avg, segments = _swad_epochs(model, make_averager(AverageConfig(name="swad"), Toy()), losses)
    first, last = final_window(losses)
    assert len(avg.pending) < 6  # only segments the rule may still need are kept
    x = [torch.arange(6.0, dtype=torch.float64).reshape(2, 3) + b for b in range(3)]  # three batches of 2
    final = avg.finish(model, lambda: [(xb,) for xb in x])
    window = segments[first : last + 1]
    for i, got in enumerate(final.parameters()):
        torch.testing.assert_close(got, sum(s[i] for s in window) / len(window), rtol=1e-12, atol=1e-12)
    # update_bn: the running mean is the mean of the three batch means of the window model's fc outputs
    with torch.no_grad():
        want = torch.stack([final.fc(xb).mean(0) for xb in x]).mean(0)
    torch.testing.assert_close(final.bn.running_mean, want, rtol=1e-12, atol=1e-12)
    assert avg.summary() == {"average_epochs": list(range(first + 1, last + 2))}
    # resumed from a weights-only checkpoint after any epoch: the same model, bit for bit
    for resume_at in range(1, len(losses)):
        again, _ = _swad_epochs(Toy(), make_averager(AverageConfig(name="swad"), Toy()), losses, resume_at=resume_at)
        other = again.finish(Toy(), lambda: [(xb,) for xb in x])
        for a, b in zip(final.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b), resume_at


# ---- config ----------------------------------------------------------------------------------------
def test_average_keys_are_hashed_only_when_set_and_validated():
    default = RunConfig()
    assert config_hash(default, "synthetic") == "3ddc032b2f"  # the hash before average.* existed
    paper = resolve_config("A", "paper", 0, [])
    assert config_hash(paper, "synthetic") == "9ac389472b"
    hashes = {config_hash(apply_overrides(paper, [s]), "synthetic") for s in
              ("average.name=ema", "average.name=sma", "average.name=swad", "average.decay=0.99", "average.start_epoch=3",
               "average.n_converge=2", "average.n_tolerance=3", "average.tolerance_ratio=0.5")}
    assert len(hashes) == 8 and "9ac389472b" not in hashes
    for bad, key in (("average.name=swa", "average.name"), ("average.decay=1.0", "average.decay"),
                     ("average.decay=0", "average.decay"), ("average.n_tolerance=0", "average.n_tolerance"),
                     ("average.tolerance_ratio=-0.1", "average.tolerance_ratio")):
        with pytest.raises(ConfigError, match=key):
            validate(apply_overrides(paper, [bad]))
    with pytest.raises(ConfigError, match="average.start_epoch=135"):  # SMA would never start
        validate(apply_overrides(paper, ["average.name=sma", "average.start_epoch=135"]))


# ---- through the trainer (smoke preset, 2 epochs, 1 thread) ---------------------------------------


def smoke_cfg(cache: Path, out: Path, *extra: str):
    return resolve_config("A", "smoke", 0, [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}",
                                            "optim.epochs=2", *extra])


def test_sma_run_validates_selects_and_saves_the_mean_of_every_steps_weights(smoke_cache, tmp_path, monkeypatch):
    sums, count, per_epoch = {}, [0], {}
    update, end_epoch = SMA.update, SMA.end_epoch

    def record(self, model):
        update(self, model)
        for name, p in model.named_parameters():
            sums[name] = sums.get(name, 0) + p.detach().double()
        count[0] += 1

    def snapshot(self, epoch, model, val_loss):
        per_epoch[epoch + 1] = ({k: v.clone() for k, v in sums.items()}, count[0])
        return end_epoch(self, epoch, model, val_loss)

    monkeypatch.setattr(SMA, "update", record)
    monkeypatch.setattr(SMA, "end_epoch", snapshot)
    result = run_train(smoke_cfg(smoke_cache, tmp_path, "average.name=sma"))
    best = torch.load(result.run_dir / "best.pt", weights_only=True)
    last = torch.load(result.run_dir / "last.pt", weights_only=True)
    total, n = per_epoch[result.summary["best_epoch"]]
    assert best["epoch"] == result.summary["best_epoch"] and n > 1
    moved = 0.0
    for name, s in total.items():
        torch.testing.assert_close(best["model"][name].double(), s / n, rtol=1e-4, atol=1e-6)
        moved = max(moved, float((last["model"][name].double() - s / n).abs().max()))
    assert moved > 1e-3  # the trained weights are elsewhere: the check above could tell them apart
    rows = read_results(result.run_dir)
    assert all(r["average"] == "sma" and r["average_start_epoch"] == 0 for r in rows)
    # the epoch's validation evaluated the averaged weights: the final evaluation of best.pt repeats it
    val = {r["epoch"]: r["macro_recall"] for r in rows if r["stage"] == "val" and r["domain"] == "HAM"}
    final = [r["macro_recall"] for r in rows if r["stage"] == "final" and r["split"] == "val" and r["domain"] == "HAM"]
    assert final == [val[result.summary["best_epoch"]]]


@pytest.mark.parametrize("extra", [("average.name=ema", "average.decay=0.9"), ("average.name=swad", "average.n_converge=1")],
                         ids=["ema", "swad"])
def test_resumed_averaged_run_equals_the_uninterrupted_one(tiny_cache, tmp_path, extra):
    # on 1/20 of the synthetic benchmark: resuming must be exact whatever the data's size
    tiny = (f"data.synthetic_scale={TINY_SCALE}", *extra)
    full = run_train(smoke_cfg(tiny_cache, tmp_path / "full", *tiny))
    cfg = smoke_cfg(tiny_cache, tmp_path / "killed", *tiny)
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(2))
    resumed = run_train(cfg, resume=True)
    for name in ("best.pt", "last.pt"):
        a = torch.load(full.run_dir / name, weights_only=True)
        b = torch.load(resumed.run_dir / name, weights_only=True)
        for k, v in a["model"].items():
            assert torch.equal(v, b["model"][k]), (name, k)
    avg_a = torch.load(full.run_dir / "last.pt", weights_only=True)["average"]
    avg_b = torch.load(resumed.run_dir / "last.pt", weights_only=True)["average"]
    flat = lambda s: {k: v for k, v in _flatten(s)}
    fa, fb = flat(avg_a), flat(avg_b)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k] for k in fa)
    assert resumed.summary["test_macro_recall"] == full.summary["test_macro_recall"]
    if "average.name=swad" in extra:
        losses = [r["swad_val_loss"] for r in read_results(full.run_dir) if r["stage"] == "train"]
        first, last = final_window(losses, n_converge=1)
        # n_converge 1 converges at epoch 1: the window starts there and the record names its epochs
        assert first == 0 and full.summary["average_epochs"] == list(range(1, last + 2))
        assert torch.load(full.run_dir / "best.pt", weights_only=True)["average_epochs"] == full.summary["average_epochs"]
        final = [r for r in read_results(full.run_dir) if r["stage"] == "final"]
        assert final and all(r["average_epochs"] == full.summary["average_epochs"] and r["epoch"] == last + 1 for r in final)


def _flatten(state, prefix=""):
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix, state
