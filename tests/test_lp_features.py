"""Linear probing on features computed once (``regime.precompute``, ``domgen.engine.features``, issue #14).

What must hold: the config hash of every lp run made before the field existed is unchanged; what cannot
train on fixed features is refused by name; a run on precomputed features equals the run on the images
(same seed, same draws, per-epoch validation metrics and final head weights); the features are read back
from the cache by a second run (the backbone never runs) and keyed on the backbone's weights; a killed and
resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace

import pytest
import torch
import torchvision
from torch import nn

from domgen.algorithms import ALGORITHMS
from domgen.config import RegimeConfig, RunConfig, apply_overrides, config_hash
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.features import FeatureView, backbone_fingerprint, feature_key
from domgen.engine.logging import read_results
from domgen.engine.trainer import Hooks
from domgen.errors import ConfigError, RunInterrupted
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train

CPU = torch.device("cpu")
PROBE = ["regime.name=lp", "augment.policy=none"]


def probe_cfg(cache, out, *extra: str, seed: int = 0):
    # lr 0.05 held for 3 epochs: the head moves enough that the validation metrics change from epoch to epoch;
    # the backbone from a file (``cache`` fixture), as a pretrained one: the same for every seed
    return resolve_config("A", "smoke", seed, [f"data.cache_dir={cache}", "data.workers=0", "threads=1", f"out={out}",
                                               f"model.weights={cache / 'backbone.pt'}", *PROBE, "optim.epochs=3",
                                               "optim.lr=0.05", "optim.lr_step=3", *extra])


@pytest.fixture
def cache(smoke_cache, tmp_path):
    """A cache folder of this test's own (the smoke benchmark copied: no other test's features in it) holding
    ``backbone.pt``, a "pretrained" ResNet-18: random weights and BatchNorm statistics far from a batch's,
    so g(x) in training mode (batch statistics) is far from the probe's."""
    folder = shutil.copytree(smoke_cache, tmp_path / "cache", ignore=shutil.ignore_patterns("features"))
    torch.manual_seed(123)
    g = torchvision.models.resnet18()
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(g.state_dict(), folder / "backbone.pt")
    return folder


class BackboneCalls:
    """Counts forward passes of every torchvision ResNet (the smoke model's g) while active."""

    def __init__(self):
        self.n = 0

    def __enter__(self):
        def hook(module, args, out):
            self.n += isinstance(module, torchvision.models.ResNet)

        self.handle = nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class Bar:
    """A progress bar as the CLI's tqdm is used: made with keyword arguments, then update(n) and close()."""

    def __init__(self, **kw):
        self.kw, self.n, self.closed = kw, 0, False

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


# ---- the config hash ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LPBefore(RegimeConfig):
    """lp's hyperparameters as they were before ``precompute`` existed."""

    name: str = "lp"


def test_lp_without_precompute_keeps_its_hash_and_precompute_changes_it():
    lp = apply_overrides(RunConfig(), ["regime.name=lp"])
    assert lp.regime.precompute is False
    assert config_hash(lp, "x") == config_hash(replace(lp, regime=LPBefore()), "x")
    assert config_hash(lp, "x") == "2c3fa55bda"  # computed on main before the field existed
    smoke = resolve_config("A", "smoke", 0, PROBE)
    assert config_hash(smoke, "x") == "850e38e176"  # likewise
    assert config_hash(apply_overrides(smoke, ["regime.precompute=true"]), "x") != "850e38e176"


# ---- what is refused -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_an_algorithm_is_refused_exactly_when_it_declares_it_needs_the_backbone(name):
    overrides = PROBE + ["regime.precompute=true", f"algorithm.name={name}"]
    why = ALGORITHMS.get(name).needs_backbone
    if not why:
        resolve_config("A", "smoke", 0, overrides)
        return
    with pytest.raises(ConfigError, match=f"algorithm.name='{name}'.*{name} {why[:20]}"):
        resolve_config("A", "smoke", 0, overrides)


def test_the_methods_that_act_on_images_or_inside_g_are_the_ones_refused():
    refused = {n for n in ALGORITHMS.names() if ALGORITHMS.get(n).needs_backbone}
    assert refused == {"mixup", "mixstyle"}  # RSC mutes features and runs the head on them: it trains on z


@pytest.mark.parametrize("extra, key", [
    (["augment.policy=paper"], "augment.policy='paper'.*differs every epoch"),
    (["augment.policy=dermoscopy"], "augment.policy='dermoscopy'"),
    (["augment.mix=cutmix"], "augment.mix='cutmix'.*blends images before the backbone"),
    (["average.name=swad"], "average.name='swad'.*BatchNorm statistics"),
])
def test_augmentation_mixing_and_swad_are_refused_with_the_reason(extra, key):
    with pytest.raises(ConfigError, match=key):
        resolve_config("A", "smoke", 0, PROBE + ["regime.precompute=true"] + extra)
    resolve_config("A", "smoke", 0, PROBE + extra)  # without precompute the same config is fine


@pytest.mark.parametrize("regime", ["ft", "lp_ft", "gradual_unfreeze"])
def test_other_regimes_have_no_precompute(regime):
    with pytest.raises(ConfigError, match=f"regime '{regime}' has no hyperparameter 'precompute'"):
        resolve_config("A", "smoke", 0, [f"regime.name={regime}", "augment.policy=none", "regime.precompute=true"])


# ---- the cache key -------------------------------------------------------------------------------------------
def test_the_key_follows_the_backbones_weights_and_statistics():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    key = lambda: feature_key(backbone_fingerprint(g), "data", 28, "resnet18", "fp32", False, "cpu")
    before = key()
    assert key() == before  # a function of the weights: the same twice
    with torch.no_grad():
        g[0].weight[0, 0, 0, 0] += 1e-6  # one weight, barely moved
    moved = key()
    assert moved != before
    g[1].running_mean[2] = 0.5  # a BatchNorm statistic: g(x) in evaluation mode changes with it
    assert key() != moved
    base = (backbone_fingerprint(g), "data", 28, "resnet18", "fp32", False, "cpu")
    for i, other in enumerate(["other", 32, "resnet50", "bf16", True, "cuda"], start=1):
        assert feature_key(*base[:i], other, *base[i + 1:]) != feature_key(*base)


def test_the_view_is_the_models_head_with_its_dropout():
    from domgen.models.backbones import Classifier

    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 5, 3, head_dropout=0.5)
    view = FeatureView(model)
    assert [id(p) for p in view.parameters()] == [id(p) for p in model.h.parameters()]  # trained by model's optimiser
    x = torch.randn(4, 3, 2, 2)
    z = model.g(x)
    torch.manual_seed(1)
    logits, features = model.forward_both(x)
    torch.manual_seed(1)
    vlogits, vz = view.forward_both(z)
    assert torch.equal(vz, z) and torch.equal(vlogits, logits)  # the same dropout mask from the same RNG state


# ---- end to end at the smoke preset ------------------------------------------------------------------------
def _val_rows(run_dir):
    """Every evaluation row (each epoch's validation, the final validation and test): where, and its metrics."""
    rows = [r for r in read_results(run_dir) if r["stage"] in ("val", "final")]
    metric = lambda k, v: isinstance(v, float) or k == "epoch"
    return [{k: v for k, v in r.items() if metric(k, v) or k in ("stage", "split", "domain")} for r in rows]


@pytest.mark.parametrize("extra", [(), ("algorithm.name=ccsa", "data.nsec=2", "model.head_dropout=0.3")], ids=["erm", "ccsa-dropout"])
def test_precomputed_features_give_the_run_on_the_images(cache, tmp_path, extra):
    images = run_train(probe_cfg(cache, tmp_path / "images", *extra))
    lines, bars = [], []
    hooks = Hooks(log=lines.append, bar=lambda **kw: bars.append(Bar(**kw)) or bars[-1])
    with BackboneCalls() as calls:
        feats = run_train(probe_cfg(cache, tmp_path / "features", *extra, "regime.precompute=true"), hooks)
    assert calls.n > 0  # g ran, to compute the features ...
    (stored,) = (cache / "features").glob("*.pt")  # one file: the features of every image the run uses
    n = torch.load(stored, weights_only=True)["features"].shape[0]
    shown = [b for b in bars if b.kw["desc"].startswith("features")]
    assert len(shown) == 1 and shown[0].kw["total"] == n == shown[0].n and shown[0].closed  # the progress, through the hooks
    assert sum("features of" in line and "computed once" in line for line in lines) == 1
    lines.clear()
    with BackboneCalls() as calls:
        again = run_train(probe_cfg(cache, tmp_path / "again", *extra, "regime.precompute=true", seed=1), hooks)
    assert calls.n == 0  # ... once: another seed reads them from the cache, g never runs
    assert sum(f"[A s1] features of {n} images read from" in line for line in lines) == 1
    assert again.summary["best_epoch"] >= 1
    # the record says so only when on: an lp run's rows are what they were before the field existed
    assert all(r["regime_precompute"] is True for r in read_results(feats.run_dir))
    assert not any("regime_precompute" in r for r in read_results(images.run_dir))
    a, b = _val_rows(images.run_dir), _val_rows(feats.run_dir)
    assert len(a) == len(b) and {r["epoch"] for r in a if r["stage"] == "val"} == {1, 2, 3}
    assert len({r["macro_recall"] for r in a if r["domain"] == "HAM" and r["split"] == "val"}) > 1  # the head moved
    # Bit for bit on the CPUs this was written on (the same draws, the same head, the same RNG stream); the
    # tolerance allows for kernels whose rounding depends on the batch: g ran on evaluation batches of
    # 2 x batch_size here and on each training draw there (cuDNN picks algorithms by shape; bf16 on a GPU).
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k, v in ra.items():
            assert v == (pytest.approx(rb[k], rel=1e-5, abs=1e-6) if isinstance(v, float) else rb[k]), (ra, k)
    ha = load_checkpoint(images.run_dir / "last.pt", CPU)["model"]
    hb = load_checkpoint(feats.run_dir / "last.pt", CPU)["model"]
    for k in ("h.weight", "h.bias"):
        torch.testing.assert_close(hb[k], ha[k], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, hb[k]) for k, v in ha.items() if k.startswith("g."))  # g frozen, statistics too


def test_the_features_are_the_frozen_g_in_evaluation_mode_in_manifest_order(cache, tmp_path):
    """What the equality above rests on, checked directly: the cached rows are g(x) of the evaluation crop in
    evaluation mode, in the order of the images they are looked up by; g in training mode would differ."""
    from domgen.runs.train import open_run, run_context
    from domgen.engine.trainer import Trainer

    cfg = probe_cfg(cache, tmp_path / "f", "regime.precompute=true", "optim.epochs=1")
    with open_run(cfg, Hooks(), False, False, None) as (data, run_dir, _):
        trainer = Trainer(cfg, data, run_dir, run_context(cfg, data, run_dir), Hooks())
        store = trainer.features.ready(trainer.model)
        pos = store.positions[::37][:8]  # a few images from across the manifest, out of their batch order
        x, _ = next(trainer.inputs.eval_batches(pos[::-1].copy(), 8))
        g = trainer.model.g.eval()
        with torch.no_grad():
            want = g(x).flip(0)
            z, _ = next(store.eval_batches(pos, 8))
            torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-6)
            g.train()
            assert float((g(x).flip(0) - z).abs().max()) > 1e-3  # batch statistics: not what the probe uses
        g.eval()


def test_a_killed_probe_resumes_to_exactly_the_uninterrupted_one(cache, tmp_path):
    from conftest import interrupt_at

    full = run_train(probe_cfg(cache, tmp_path / "full", "regime.precompute=true"))
    cfg = probe_cfg(cache, tmp_path / "killed", "regime.precompute=true")
    with pytest.raises(RunInterrupted):
        run_train(cfg, interrupt_at(2))  # Ctrl-C while epoch 2 is logged: last.pt holds epoch 1
    assert load_checkpoint(next((tmp_path / "killed").glob("A-s0-*")) / "last.pt", CPU)["epoch"] == 1
    resumed = run_train(cfg, resume=True)
    for name in ("best.pt", "last.pt"):
        a = torch.load(full.run_dir / name, weights_only=True)
        b = torch.load(resumed.run_dir / name, weights_only=True)
        assert a["epoch"] == b["epoch"] and all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()), name
    assert _val_rows(resumed.run_dir) == _val_rows(full.run_dir)
    assert resumed.summary["test_macro_recall"] == full.summary["test_macro_recall"]
