"""Preprocessing follows the model: torchvision ResNets keep ImageNet's mean/std (so earlier runs'
numbers stand), a timm backbone gets its own pretrained config's (timm.data.resolve_data_config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from domgen.config import DataConfig, TransformConfig
from domgen.data.transforms import IMAGENET, Normalization
from domgen.engine.inputs import Inputs
from domgen.runs.registry import resolve_config
from domgen.export import preprocessing
from domgen.models import input_normalization

HALF = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's test_resnet (and the ViTs): mean = std = 0.5
COLOUR = (200, 100, 50)


def test_each_backbone_names_its_normalization():
    assert input_normalization("resnet18") == IMAGENET == Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_normalization("resnet152") == IMAGENET
    assert input_normalization("timm:test_resnet") == HALF
    assert input_normalization("timm:efficientnet_b0") == IMAGENET  # a timm model trained on ImageNet's statistics
    with pytest.raises(KeyError, match="unknown timm model"):
        input_normalization("timm:no_such_net")
    with pytest.raises(KeyError, match="unknown backbone"):
        input_normalization("resnet19")


@pytest.mark.parametrize("cached", [True, False])
def test_inputs_normalize_with_the_models_mean_and_std(tmp_path, cached):
    """A flat-colour image: every evaluated pixel is (c / 255 - mean) / std, on both input paths."""
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"flat{i}.png"))
        Image.new("RGB", (60, 45), COLOUR).save(paths[-1])  # PNG: lossless, the colour survives exactly
    dcfg = DataConfig(cache_dir=str(tmp_path / "cache"), workers=0, cached=cached)
    tcfg = TransformConfig(40, 32, 28, 8)
    c = torch.tensor(COLOUR, dtype=torch.float32).view(3, 1, 1) / 255
    for norm, want in ((HALF, (c - 0.5) / 0.5), (IMAGENET, (c - torch.tensor(IMAGENET.mean).view(3, 1, 1)) / torch.tensor(IMAGENET.std).view(3, 1, 1))):
        x, _ = next(Inputs(paths, np.zeros(2, dtype=np.int64), tcfg, dcfg, "cpu", norm=norm).eval_batches(np.arange(2), 2))
        assert x.shape == (2, 3, 28, 28)
        assert torch.allclose(x, want.expand(2, 3, 28, 28), atol=1e-5)  # HALF: 0.569, -0.216, -0.608
    # the training augmentation too: Cutout (fill 0) aside, every pixel of a flat batch is (c - 0.5) / 0.5
    augment = Inputs(paths, np.zeros(2, dtype=np.int64), tcfg, dcfg, "cpu", norm=HALF).augment
    flat = torch.tensor(COLOUR, dtype=torch.uint8).expand(2, 32, 32, 3).contiguous()
    x = augment(flat, generator=0)
    assert x.shape == (2, 3, 28, 28) and bool((x == 0).any())  # some Cutout
    assert torch.allclose(x[x != 0].unique(), ((c - 0.5) / 0.5).view(-1).sort().values, atol=1e-4)


def test_the_trainer_and_the_export_use_the_backbones_normalization(smoke_cache, tmp_path):
    from domgen.data.run_data import prepare_data
    from domgen.engine.trainer import Hooks, Trainer

    cfg = resolve_config("A", "smoke", 0, [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1",
                                           f"out={tmp_path}", "model.arch=timm:test_resnet"])
    trainer = Trainer(cfg, prepare_data(cfg.data), tmp_path / "run", {}, Hooks())
    assert trainer.inputs.norm == HALF
    assert trainer.inputs.augment.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert preprocessing(cfg)["mean"] == [0.5, 0.5, 0.5] and preprocessing(cfg)["std"] == [0.5, 0.5, 0.5]
    resnet = resolve_config("A", "smoke", 0)
    assert preprocessing(resnet)["mean"] == [0.485, 0.456, 0.406] and preprocessing(resnet)["std"] == [0.229, 0.224, 0.225]
