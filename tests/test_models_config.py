"""Backbones, weights loading and the typed config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from domgen.config import RunConfig, apply_overrides, config_hash, from_dict, run_keys, to_dict
from domgen.runs.registry import EXPERIMENTS, resolve_config
from domgen.models import WeightsUnavailable, build_model
from domgen.registry import Registry


def test_resnet18_is_h_of_g_with_512_features():
    model = build_model("resnet18", "none")
    logits, z = model.forward_both(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 512) and logits.shape == (2, 7)
    assert torch.allclose(model.h(z), logits)


def test_timm_model_by_name():
    model = build_model("timm:resnet10t", "none")
    logits, z = model.forward_both(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, model.feat_dim) == (2, 512) and logits.shape == (2, 7)


def test_local_weights_file_loads_every_backbone_tensor(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", "none")
    path = tmp_path / "backbone.pth"
    torch.save(source.g.state_dict(), path)
    loaded = build_model("resnet18", str(path))
    for (name, a), b in zip(source.g.state_dict().items(), loaded.g.state_dict().values()):
        assert torch.equal(a, b), name
    # A domgen checkpoint ({"model": Classifier state}) loads too.
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pt")
    again = build_model("resnet18", str(tmp_path / "ckpt.pt"))
    assert torch.equal(again.g.conv1.weight, source.g.conv1.weight)


def test_weights_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(WeightsUnavailable, match="no such file"):
        build_model("resnet18", str(tmp_path / "missing.pth"))
    torch.save(build_model("resnet34", "none").g.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        build_model("resnet18", str(tmp_path / "r34.pth"))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match=r"resnet18-f37072fd\.pth.*--weights PATH"):
        build_model("resnet18", "imagenet")


def test_overrides_are_typed_and_unknown_keys_fail():
    cfg = apply_overrides(RunConfig(), ["optim.lr=3e-4", "data.nsec=a", "data.holdout=PH2,UDA", "loss.weighted=false", "optim.epochs=7"])
    assert cfg.optim.lr == 3e-4 and cfg.data.nsec == "a" and cfg.data.holdout == ("PH2", "UDA")
    assert cfg.loss.weighted is False and cfg.optim.epochs == 7
    with pytest.raises(KeyError, match="optim.lr"):
        apply_overrides(RunConfig(), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="expects int"):
        apply_overrides(RunConfig(), ["optim.epochs=many"])
    assert from_dict(to_dict(cfg)) == cfg


def test_hash_follows_what_decides_the_result():
    cfg = resolve_config("K", "quick", 0)
    h = config_hash(cfg, "synthetic:x")
    assert config_hash(replace(cfg, out="elsewhere", device="cpu", threads=1), "synthetic:x") == h
    assert config_hash(apply_overrides(cfg, ["optim.lr=2e-3"]), "synthetic:x") != h
    assert config_hash(cfg, "/data/real") != h
    assert config_hash(resolve_config("K", "quick", 1), "synthetic:x") != h


def test_run_keys_group_the_leave_one_out_runs_and_the_trials_of_a_search():
    o, r = resolve_config("O", "quick", 0), resolve_config("R", "quick", 3)  # DMF / PH2 held out, other seed
    assert run_keys(o, "x")["family"] == run_keys(r, "x")["family"]  # siblings for lodo selection
    assert config_hash(o, "x") != config_hash(r, "x")
    other_margin = apply_overrides(r, ["algorithm.margin=20"])
    assert run_keys(other_margin, "x")["family"] != run_keys(r, "x")["family"]  # another trial...
    assert run_keys(other_margin, "x")["search"] == run_keys(r, "x")["search"]  # ...of the same search
    erm = apply_overrides(r, ["algorithm.name=erm"])
    assert run_keys(erm, "x")["search"] != run_keys(r, "x")["search"]  # another method
    assert run_keys(apply_overrides(r, ["optim.lr=1e-2"]), "x")["search"] != run_keys(r, "x")["search"]


def test_paper_preset_is_the_papers_recipe():
    a, k = resolve_config("A", "paper"), resolve_config("K", "paper")
    assert (a.transform.resize, a.transform.crop, a.transform.size, a.transform.cutout) == (650, 300, 224, 64)
    assert (a.optim.lr, a.optim.weight_decay, a.optim.batch_size, a.optim.epochs, a.optim.lr_step) == (1e-4, 1e-3, 32, 135, 45)
    assert (k.optim.epochs, k.optim.lr_step, k.algorithm.margin, k.algorithm.p_same, k.warm_start) == (20, 10, 50.0, 0.25, "A")
    assert [EXPERIMENTS.get(e).nsec for e in "FGHIJK"] == ["1", "2", "3", "4", "5", "a"]
    assert [EXPERIMENTS.get(e).holdout for e in "OPQRST"] == [("DMF",), ("D7P",), ("MSK",), ("PH2",), ("SON",), ("UDA",)]
    assert (resolve_config("U").prune.threshold, resolve_config("V").prune.threshold) == (1e-4, 1e-3)


def test_registry_fails_loudly_with_suggestions():
    reg: Registry[int] = Registry("thing")
    reg.add("resnet18", 1)
    with pytest.raises(KeyError, match="did you mean 'resnet18'"):
        reg.get("resnet81")
    with pytest.raises(KeyError, match="already registered"):
        reg.add("resnet18", 2)
