"""How each experiment's algorithm is wired: the baselines' class weights, CCSA's weights and sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domgen.config import LossConfig
from domgen.engine.algorithms import CCSA, ERM, make_algorithm
from domgen.experiments.registry import EXPERIMENTS, resolve_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("exp", list("ABCDE"))
def test_baselines_are_weighted_cross_entropy_by_default(exp):
    loss = resolve_config(exp, "quick").loss
    assert loss.name == "ce" and loss.weighted_cls and loss.weight_norm == "max"
    assert "weighted cross-entropy" in EXPERIMENTS.get(exp).description


def test_erm_weights_are_the_pools_inverse_class_frequencies():
    # Pool: 6 of class 0, 2 of class 1, none of class 2 -> p = (3/4, 1/4, 0); max-normalised 1/p: (1/3, 1, 1).
    labels = np.array([0] * 6 + [1] * 2)
    sampler, algo = make_algorithm(LossConfig(), labels, np.array(["HAM"] * 8), 0, CPU, num_classes=3)
    assert sampler is None and isinstance(algo, ERM)
    np.testing.assert_allclose(algo.class_w.numpy(), [1 / 3, 1, 1])
    # Weighted mean over a batch (one of each class) with logits 0: CE = ln 3 each; the weighted mean
    # of a constant is the constant, and a batch of (class 0, class 1) logits (ln 2, 0, 0), (0, 0, 0):
    # CE_0 = ln(4/2) = ln 2, CE_1 = ln 3 -> (1/3 ln 2 + ln 3) / (4/3).
    model = torch.nn.Identity()
    x = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = algo.loss(model, (x, torch.tensor([0, 1])))["loss"].item()
    assert out == pytest.approx((math.log(2) / 3 + math.log(3)) / (4 / 3))
    _, plain = make_algorithm(LossConfig(weighted_cls=False), labels, np.array(["HAM"] * 8), 0, CPU, num_classes=3)
    assert plain.class_w is None
    assert plain.loss(model, (x, torch.tensor([0, 1])))["loss"].item() == pytest.approx((math.log(2) + math.log(3)) / 2)


def test_ccsa_wiring_follows_the_loss_config():
    labels = np.array([0, 0, 1, 1, 0, 1, 0])
    domains = np.array(["HAM"] * 4 + ["DMF"] * 3)
    cfg = LossConfig(name="ccsa", alpha=0.3, pairs="branch", weight_norm="mean", weighted_align=False)
    sampler, algo = make_algorithm(cfg, labels, domains, 5, CPU, num_classes=2)
    assert isinstance(algo, CCSA) and algo.criterion.alpha == 0.3 and algo.criterion.cls_loss.reduction == "mean"
    assert sampler.mode == "branch" and sampler.seed == 5 and algo.weights["pair_w"] is None
    probs = sampler.exact_probabilities()
    # mean normalisation: sum_c p1_c w1_c = 1.
    assert float((probs.p1 * algo.weights["class_w1"].numpy()).sum()) == pytest.approx(1.0)
