"""A new classification loss is one file: a toy focal loss written by the test, imported, and then chosen
with ``loss.name`` by every algorithm, with no edit to the package."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domgen.algorithms import ALGORITHMS, make_algorithm
from domgen.config import LossConfig
from domgen.engine.loop import train_epoch
from domgen.runs.registry import resolve_config
from domgen.losses import LOSSES
from tests.test_algorithm_contract import CPU, Toy, batches, toy_pool

FOCAL = '''
"""Focal loss (Lin et al., ICCV 2017, Eq. 5) with gamma = 2: mean_b (1 - p_b)^2 * CE_b, weighted by w[y_b]."""
import torch
import torch.nn.functional as F
from torch import nn

from domgen.losses import LOSSES


@LOSSES.register("toy_focal")
class ToyFocal(nn.Module):
    def __init__(self, reduction="weighted_mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits, y, class_w=None):
        ce = F.cross_entropy(logits, y, reduction="none")
        focal = (1 - torch.exp(-ce)) ** 2 * ce
        if class_w is None:
            return focal.mean()
        w = class_w.to(focal)[y]
        return (w * focal).sum() / w.sum() if self.reduction == "weighted_mean" else (w * focal).mean()
'''


@pytest.fixture
def focal(plugin):
    return plugin(LOSSES, "toy_focal", FOCAL)


def test_a_toy_loss_in_one_file_is_chosen_by_name_and_computes_what_it_says(focal):
    # by hand: logits (ln 3, 0) for class 0 -> p = 3/4, CE = ln(4/3), focal = (1/4)^2 ln(4/3);
    # logits (0, 0) for class 1 -> p = 1/2, CE = ln 2, focal = (1/2)^2 ln 2; weights 1 and 3
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    a, b = (1 / 16) * math.log(4 / 3), (1 / 4) * math.log(2)
    loss = LOSSES.get("toy_focal")()
    assert float(loss(logits, y)) == pytest.approx((a + b) / 2)
    assert float(loss(logits, y, torch.tensor([1.0, 3.0]))) == pytest.approx((a + 3 * b) / 4)
    cfg = resolve_config("A", "smoke", 0, ["loss.name=toy_focal"])  # validated against the registry
    assert cfg.loss.name == "toy_focal"


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_trains_with_the_toy_loss(focal, algorithm):
    torch.manual_seed(0)
    model = Toy()
    method = make_algorithm(ALGORITHMS.get(algorithm).Hparams(), LossConfig(name="toy_focal"), CPU).build(toy_pool())
    assert isinstance(method.criterion, focal.ToyFocal)
    method.attach(model)  # as the trainer does: a method's own modules (DANN's discriminator) train too
    optimizer = torch.optim.SGD(method.param_groups(model), lr=0.1)
    out = train_epoch(model, batches(method, toy_pool(), 0, n=2), method, optimizer, CPU)
    assert np.isfinite(out["loss"]) and out["loss"] > 0
