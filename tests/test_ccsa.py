"""CCSA loss against numbers worked out by hand (softmax of logits built from logs, 3-4-5 triangles)."""

from __future__ import annotations

import math

import pytest
import torch

from domgen.losses import LOSSES, CCSALoss, CrossEntropy

LN3 = math.log(3.0)


def batch(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Two pairs, K = 2, D = 2.

    pair 0: y1 = y2 = 1 (same class), z1 = (0, 0), z2 = (3, 4): squared distance 25.
    pair 1: y1 = 0, y2 = 1 (different), z1 = (1, 1), z2 = (4, 5): distance 5, (50 - 5)^2 = 2025.
    logits1 = (0, ln 3) -> softmax (1/4, 3/4): CE(y=1) = ln(4/3), CE(y=0) = ln 4.
    logits2 = (0, 0)    -> softmax (1/2, 1/2): CE = ln 2.
    """
    t = {
        "logits1": torch.tensor([[0.0, LN3], [0.0, LN3]], dtype=torch.float64),
        "logits2": torch.zeros(2, 2, dtype=torch.float64),
        "z1": torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
        "z2": torch.tensor([[3.0, 4.0], [4.0, 5.0]], dtype=torch.float64),
    }
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    t["y1"] = torch.tensor([1, 0])
    t["y2"] = torch.tensor([1, 1])
    return t


def test_registry_names():
    assert LOSSES.get("ccsa") is CCSALoss and LOSSES.get("ce") is CrossEntropy
    with pytest.raises(KeyError, match="ccsa"):
        LOSSES.get("cssa")


def test_cross_entropy_by_hand():
    # K = 3: logits (0, ln 2, ln 5) -> softmax (1/8, 2/8, 5/8).
    logits = torch.tensor([[0.0, math.log(2), math.log(5)]] * 2, dtype=torch.float64)
    y = torch.tensor([2, 0])
    ce = CrossEntropy()
    assert ce(logits, y).item() == pytest.approx((math.log(8 / 5) + math.log(8)) / 2)
    w = torch.tensor([3.0, 1.0, 0.5])
    assert ce(logits, y, w).item() == pytest.approx((0.5 * math.log(8 / 5) + 3 * math.log(8)) / 2)


def test_unweighted_values_by_hand():
    out = CCSALoss(margin=50.0)(**batch())
    cls = (math.log(4 / 3) + math.log(4)) / 2 + math.log(2)
    assert out["cls"].item() == pytest.approx(cls)
    assert out["align"].item() == pytest.approx(25 / 2)  # mean over B = 2 pairs, one of them same-class
    assert out["sep"].item() == pytest.approx(2025 / 2)
    assert out["loss"].item() == pytest.approx(cls + 12.5 + 1012.5)
    assert out["pos_frac"].item() == pytest.approx(0.5)


def test_weights_scale_the_right_terms():
    w1 = torch.tensor([2.0, 0.5])  # stream 1: pair 0 has y1 = 1 (x0.5), pair 1 has y1 = 0 (x2)
    w2 = torch.tensor([3.0, 0.25])  # stream 2: both y2 = 1 (x0.25)
    pw = torch.tensor([[1.0, 4.0], [7.0, 0.5]])  # pair 0 is (1, 1): x0.5; pair 1 is (0, 1): x4, not 7
    out = CCSALoss()(**batch(), class_w1=w1, class_w2=w2, pair_w=pw)
    cls = (0.5 * math.log(4 / 3) + 2 * math.log(4)) / 2 + 0.25 * math.log(2)
    assert out["cls"].item() == pytest.approx(cls)
    assert out["align"].item() == pytest.approx(0.5 * 25 / 2)
    assert out["sep"].item() == pytest.approx(4 * 2025 / 2)
    assert out["loss"].item() == pytest.approx(cls + 6.25 + 4050)
    # Pair weights leave classification alone and class weights leave alignment alone.
    only_pair = CCSALoss()(**batch(), pair_w=pw)
    assert only_pair["cls"].item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2 + math.log(2))
    only_cls = CCSALoss()(**batch(), class_w1=w1, class_w2=w2)
    assert only_cls["align"].item() == pytest.approx(12.5) and only_cls["sep"].item() == pytest.approx(1012.5)


@pytest.mark.parametrize("dist, expected", [(30.0, 400.0), (49.0, 1.0), (50.0, 0.0), (80.0, 0.0)])
def test_margin_saturation(dist: float, expected: float):
    # One different-class pair at distance `dist` along a 3-4-5 direction: max(0, 50 - dist)^2.
    z1 = torch.zeros(1, 2, dtype=torch.float64)
    z2 = torch.tensor([[0.6 * dist, 0.8 * dist]], dtype=torch.float64)
    logits = torch.zeros(1, 2, dtype=torch.float64)
    out = CCSALoss(margin=50.0)(logits, logits, z1, z2, torch.tensor([0]), torch.tensor([1]))
    assert out["sep"].item() == pytest.approx(expected)
    assert out["align"].item() == 0.0 and out["pos_frac"].item() == 0.0


def test_gradients_reach_features_and_logits():
    t = batch(requires_grad=True)
    CCSALoss()(**t)["loss"].backward()
    # pair 0 (same): d/dz1 of (1/B) ||z1 - z2||^2 = (2/B)(z1 - z2) = (-3, -4).
    # pair 1 (different): d/dz1 of (1/B)(m - d)^2 = -(2/B)(m - d)(z1 - z2)/d = -45 (-3, -4)/5 = (27, 36).
    torch.testing.assert_close(t["z1"].grad, torch.tensor([[-3.0, -4.0], [27.0, 36.0]], dtype=torch.float64))
    torch.testing.assert_close(t["z2"].grad, -t["z1"].grad)
    # Stream 2, logits 0 and y = 1: (softmax - onehot) / B = ((1/2, 1/2) - (0, 1)) / 2.
    torch.testing.assert_close(t["logits2"].grad, torch.tensor([[0.25, -0.25]] * 2, dtype=torch.float64))


def test_saturated_or_coincident_pairs_give_finite_zero_feature_gradient():
    z1 = torch.tensor([[0.0, 0.0], [2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    z2 = torch.tensor([[60.0, 80.0], [2.0, 2.0]], dtype=torch.float64)  # beyond m; coincident
    logits = torch.zeros(2, 2, dtype=torch.float64)
    out = CCSALoss()(logits, logits, z1, z2, torch.tensor([0, 0]), torch.tensor([1, 1]))
    out["loss"].backward()
    assert out["sep"].item() == pytest.approx(2500 / 2)  # the coincident pair: (50 - 0)^2, mean over 2
    assert torch.isfinite(z1.grad).all()
    assert torch.equal(z1.grad[0], torch.zeros(2, dtype=torch.float64))  # saturated: no push


def test_pos_frac_counts_same_class_pairs():
    y1 = torch.tensor([0, 1, 2, 3])
    y2 = torch.tensor([0, 1, 2, 0])
    z = torch.zeros(4, 3)
    logits = torch.zeros(4, 4)
    out = CCSALoss()(logits, logits, z, z + 1.0, y1, y2)
    assert out["pos_frac"].item() == pytest.approx(0.75)
    # Three same-class pairs at squared distance 3 (1^2 in each of 3 dims): align = 3 * 3 / 4.
    assert out["align"].item() == pytest.approx(9 / 4)
    # One different-class pair at distance sqrt(3): sep = (50 - sqrt(3))^2 / 4.
    assert out["sep"].item() == pytest.approx((50 - math.sqrt(3)) ** 2 / 4)
