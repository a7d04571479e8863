"""The backbone lineup (issue #14): each named entry's feature dimension and input normalisation against
torchvision's / timm's own config, the CCSA margin rule at D = 192 and 512, the timm-tag weights' offline
error, and the two studies (davila2024, regimes-dg) resolving cell by cell. Models are built with weights
none: nothing is downloaded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domgen.config import config_hash
from domgen.config_check import validate
from domgen.models import build_model, input_normalization
from domgen.regimes import model_blocks
from domgen.runs.registry import resolve_config
from domgen.studies import load_study
from domgen.sweep.grid import grid_cells

# name -> (D, where the normalisation comes from): torchvision's weights enum, or timm's pretrained tag
LINEUP = {
    "densenet121": (1024, "tv"), "vgg19_bn": (4096, "tv"), "efficientnet_b0": (1280, "tv"),
    "convnext_tiny": (768, "tv"), "resnet50": (2048, "tv"),
    "vit_tiny": (192, "vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "vit_small": (384, "vit_small_patch16_224.augreg_in21k_ft_in1k"),
    "vit_small_dinov2": (384, "vit_small_patch14_dinov2.lvd142m"),
}


def _reference_normalization(name: str, source: str) -> tuple[tuple, tuple]:
    if source == "tv":  # the transforms torchvision's own ImageNet weights declare
        import torchvision

        t = torchvision.models.get_model_weights(name).IMAGENET1K_V1.transforms()
        return tuple(t.mean), tuple(t.std)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(source)
    return tuple(cfg.mean), tuple(cfg.std)


@pytest.mark.parametrize("name", list(LINEUP))
def test_each_backbone_gives_its_feature_dimension_and_its_own_normalisation(name):
    dim, source = LINEUP[name]
    torch.manual_seed(0)
    model = build_model(name, "none", num_classes=3).eval()
    assert model.feat_dim == model.h.in_features == dim
    with torch.no_grad():  # 32 px: VGG's five poolings need it; the ViTs pad and interpolate
        logits, z = model.forward_both(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, dim) and logits.shape == (2, 3)
    mean, std = _reference_normalization(name, source)
    norm = input_normalization(name)
    assert norm.mean == pytest.approx(mean) and norm.std == pytest.approx(std)
    # the regimes can split it: every parameter in one block, the head last, more than stem + head
    blocks = model_blocks(model)
    assert blocks[-1].name == "head" and len(blocks) > 3


def test_the_vits_differ_in_normalisation_from_imagenet_and_dinov2_does_not():
    assert input_normalization("vit_tiny").mean == (0.5, 0.5, 0.5)
    assert input_normalization("vit_small_dinov2").mean == pytest.approx((0.485, 0.456, 0.406))
    assert input_normalization("vit_tiny") == input_normalization("timm:vit_tiny_patch16_224")


def test_the_ccsa_margin_rule_scales_with_sqrt_of_the_feature_dimension():
    from domgen.algorithms.ccsa import scaled_margin

    assert scaled_margin(50.0, 0, 192) == 50.0  # default: the margin as given, whatever D
    assert scaled_margin(50.0, 512, 512) == 50.0
    assert scaled_margin(50.0, 512, 192) == pytest.approx(50 * math.sqrt(192 / 512)) == pytest.approx(30.6186, abs=1e-4)
    assert scaled_margin(50.0, 512, 2048) == pytest.approx(100.0)


def test_margin_dim_is_hashed_only_when_set_and_reaches_the_loss():
    from domgen.algorithms import ALGORITHMS

    base = resolve_config("K", "smoke", 0)
    assert base.algorithm.margin_dim == 0
    set_ = resolve_config("K", "smoke", 0, ["algorithm.margin_dim=512"])
    assert config_hash(base, "x") != config_hash(set_, "x")
    # the margin the loss uses once attached to a 192-d model
    from domgen.config import apply_overrides

    model = build_model("vit_tiny", "none", num_classes=7)
    for dim, want in ((0, 50.0), (512, 50 * math.sqrt(192 / 512))):
        cfg = apply_overrides(base, [f"algorithm.margin_dim={dim}"])
        method = ALGORITHMS.get("ccsa")(cfg.algorithm, cfg.loss, "cpu")
        method.attach(model)
        assert method.pair_loss.margin == pytest.approx(want)
    with pytest.raises(Exception, match="margin_dim"):
        validate(apply_overrides(base, ["algorithm.margin_dim=-1"]))


def test_a_timm_tag_offline_fails_with_the_clear_error(tmp_path):
    """A subprocess with an empty Hugging Face cache and HF_HUB_OFFLINE=1: nothing can be fetched."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    code = ("from domgen.models import build_model, WeightsUnavailable\n"
            "try:\n    build_model('vit_small_dinov2', 'timm:vit_small_patch14_dinov2.lvd142m')\n"
            "except WeightsUnavailable as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("ERR --weights timm:vit_small_patch14_dinov2.lvd142m: the pretrained weights are not "
                                 "in the Hugging Face cache"), out.stderr[-2000:]
    assert "--weights PATH" in out.stdout and "--weights none" in out.stdout


def test_a_timm_tag_loads_into_the_matching_backbone(monkeypatch):
    """The tag's state dict lands in g key for key (timm.create_model stubbed: no download)."""
    import timm

    torch.manual_seed(1)
    source = build_model("vit_tiny", "none").g
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: source if pretrained else real(name, **kw))
    model = build_model("vit_tiny", "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert torch.equal(model.g.pos_embed, source.pos_embed) and torch.equal(model.g.blocks[0].attn.qkv.weight,
                                                                            source.blocks[0].attn.qkv.weight)
    from domgen.models import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="does not fit the backbone"):
        build_model("resnet18", "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k")


def test_davila2024_is_eight_regimes_by_three_backbones_every_cell_valid():
    study = load_study("davila2024")
    assert study.ablation.exp == "base" and study.ablation.seeds == "5"
    cells = grid_cells(study.ablation.axes)
    assert len(cells) == 8 * 3
    cfgs = [resolve_config("base", "quick", 0, list(c.items), study=study) for c in cells]
    assert {c.regime.name for c in cfgs} == {"ft", "lp", "lp_ft", "gradual_unfreeze", "l2sp", "auto_rgn", "auto_snr", "tpgm"}
    assert {c.model.arch for c in cfgs} == {"resnet50", "densenet121", "vgg19_bn"}
    assert {c.data.primary for c in cfgs} == {"HAM"} and {c.data.nsec for c in cfgs} == {"0"}
    assert len({config_hash(c, "x") for c in cfgs}) == 24
    # the study's smoke preset is 32 px, the least VGG-19 and DenseNet-121 can pool down to 1 x 1
    smoke = resolve_config("base", "smoke", 0, study=study)
    assert smoke.transform.size == 32 and smoke.optim.epochs == 2
    for arch in ("vgg19_bn", "densenet121"):
        model = build_model(arch, "none", num_classes=7).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
        with pytest.raises(RuntimeError, match="too small"):  # why 28 px (presets.yaml's smoke) is not enough
            model(torch.randn(1, 3, 28, 28))


def test_regimes_dg_crosses_regime_algorithm_and_held_out_domain():
    study = load_study("regimes-dg")
    cells = grid_cells(study.ablation.axes)
    assert len(cells) == 2 * 4 * 6
    cfgs = [resolve_config("erm", "quick", 0, list(c.items), study=study) for c in cells]
    assert len({config_hash(c, "x") for c in cfgs}) == 48
    ccsa = [c for c in cfgs if c.algorithm.name == "ccsa"]
    assert len(ccsa) == 24 and {c.algorithm.sampler for c in ccsa} == {"pairs"}
    assert {c.data.holdout for c in cfgs} == {(d,) for d in ("DMF", "D7P", "MSK", "PH2", "SON", "UDA")}
    assert {c.regime.name for c in cfgs} == {"lp", "ft", "lp_ft", "gradual_unfreeze"}
