"""CCSA loss against numbers worked out by hand (softmax of logits built from logs, 3-4-5 triangles)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domgen.config import LossConfig
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
    # LOSSES holds classification losses only: CCSA's pairwise terms are the CCSA algorithm's, not a choice
    # of loss.name that an ERM run could make.
    assert LOSSES.get("ce") is CrossEntropy and "ccsa" not in LOSSES
    with pytest.raises(KeyError, match="did you mean 'ce'"):
        LOSSES.get("cee")


def test_cross_entropy_by_hand():
    # K = 3: logits (0, ln 2, ln 5) -> softmax (1/8, 2/8, 5/8).
    logits = torch.tensor([[0.0, math.log(2), math.log(5)]] * 2, dtype=torch.float64)
    y = torch.tensor([2, 0])
    ce = CrossEntropy()
    assert ce(logits, y).item() == pytest.approx((math.log(8 / 5) + math.log(8)) / 2)
    w = torch.tensor([3.0, 1.0, 0.5])
    # Default, nn.CrossEntropyLoss(weight=w) as in the authors' code: divided by the batch's weight sum.
    assert ce(logits, y, w).item() == pytest.approx((0.5 * math.log(8 / 5) + 3 * math.log(8)) / 3.5)
    torch.testing.assert_close(ce(logits, y, w), torch.nn.CrossEntropyLoss(weight=w.double())(logits, y))
    # domgen 0.1's mean(w CE): divided by the batch size, so it scales with the weights.
    mean = CrossEntropy(reduction="mean")
    assert mean(logits, y, w).item() == pytest.approx((0.5 * math.log(8 / 5) + 3 * math.log(8)) / 2)
    assert mean(logits, y, 10 * w).item() == pytest.approx(10 * mean(logits, y, w).item())
    assert ce(logits, y, 10 * w).item() == pytest.approx(ce(logits, y, w).item())
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropy(reduction="sum")


def test_unweighted_values_by_hand():
    out = CCSALoss(margin=50.0)(**batch())
    cls = (math.log(4 / 3) + math.log(4)) / 2 + math.log(2)
    assert out["cls"].item() == pytest.approx(cls)
    assert out["align"].item() == pytest.approx(25 / 2)  # mean over B = 2 pairs, one of them same-class
    assert out["sep"].item() == pytest.approx(2025 / 2)
    # The authors' balance: 0.9 classification + 0.1 alignment; the paper's "equal" balance: 0.5 each.
    assert out["loss"].item() == pytest.approx(0.9 * cls + 0.1 * (12.5 + 1012.5))
    assert CCSALoss(alpha=0.5)(**batch())["loss"].item() == pytest.approx(0.5 * (cls + 12.5 + 1012.5))
    assert out["pos_frac"].item() == pytest.approx(0.5)


def test_weights_scale_the_right_terms():
    w1 = torch.tensor([2.0, 0.5])  # stream 1: pair 0 has y1 = 1 (x0.5), pair 1 has y1 = 0 (x2)
    w2 = torch.tensor([3.0, 0.25])  # stream 2: both y2 = 1 (x0.25)
    pw = torch.tensor([[1.0, 4.0], [7.0, 0.5]])  # pair 0 is (1, 1): x0.5; pair 1 is (0, 1): x4, not 7
    out = CCSALoss(alpha=0.5, cls_reduction="mean")(**batch(), class_w1=w1, class_w2=w2, pair_w=pw)
    cls = (0.5 * math.log(4 / 3) + 2 * math.log(4)) / 2 + 0.25 * math.log(2)
    assert out["cls"].item() == pytest.approx(cls)
    assert out["align"].item() == pytest.approx(0.5 * 25 / 2)
    assert out["sep"].item() == pytest.approx(4 * 2025 / 2)
    assert out["loss"].item() == pytest.approx(0.5 * (cls + 6.25 + 4050))
    # Weighted mean (default): stream 1 divides by 0.5 + 2, stream 2 by 0.25 + 0.25.
    wm = CCSALoss()(**batch(), class_w1=w1, class_w2=w2, pair_w=pw)
    cls_wm = (0.5 * math.log(4 / 3) + 2 * math.log(4)) / 2.5 + math.log(2)
    assert wm["cls"].item() == pytest.approx(cls_wm)
    assert wm["loss"].item() == pytest.approx(0.9 * cls_wm + 0.1 * (6.25 + 4050))
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
    CCSALoss(alpha=0.1)(**t)["loss"].backward()
    # pair 0 (same): d/dz1 of (1/B) ||z1 - z2||^2 = (2/B)(z1 - z2) = (-3, -4).
    # pair 1 (different): d/dz1 of (1/B)(m - d)^2 = -(2/B)(m - d)(z1 - z2)/d = -45 (-3, -4)/5 = (27, 36).
    # Both times alpha = 0.1.
    torch.testing.assert_close(t["z1"].grad, 0.1 * torch.tensor([[-3.0, -4.0], [27.0, 36.0]], dtype=torch.float64))
    torch.testing.assert_close(t["z2"].grad, -t["z1"].grad)
    # Stream 2, logits 0 and y = 1: (softmax - onehot) / B = ((1/2, 1/2) - (0, 1)) / 2, times 1 - alpha.
    torch.testing.assert_close(t["logits2"].grad, 0.9 * torch.tensor([[0.25, -0.25]] * 2, dtype=torch.float64))


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


def test_pair_labels_override_class_equality():
    # The authors' branch labelling: pair 0 is same-class but labelled negative (pushed apart, 45^2 at
    # distance 5), pair 1 different-class but labelled positive (pulled in, squared distance 25).
    out = CCSALoss()(**batch(), positive=torch.tensor([False, True]))
    assert out["align"].item() == pytest.approx(25 / 2)
    assert out["sep"].item() == pytest.approx(45**2 / 2)
    assert out["pos_frac"].item() == pytest.approx(0.5)


# ---- the authors' code, line by line -------------------------------------------------------------
# chrisjmyoon/iccsa agents/base.py::_get_cb, agents/toy.py::_ml_logic and graphs/loss.py::weighted_ca_loss,
# transcribed on CPU (their .cuda() calls dropped), fed with counts proportional to the sampler's exact
# probabilities: domgen's default CCSA (alpha 0.1, max-normalised weights, weighted-mean CE) must agree.


def _authors_get_cb(counts: np.ndarray) -> torch.Tensor:
    c_copy = counts.copy()
    min_count = c_copy[c_copy != 0].min()
    c_copy[c_copy == 0] = min_count
    cb = np.sum(counts) / c_copy
    n_cb = cb.astype("float") / np.max(cb)
    return torch.tensor(n_cb).float()


def _authors_weighted_ca_loss(z1, z2, yc, y1, y2, weights, margin):
    yc = yc.float()
    dist = ((z1 - z2) ** 2).sum(dim=1).sqrt()
    loss_ca = yc * (dist**2) + (1 - yc) * ((margin - dist).max(other=torch.zeros(len(dist))) ** 2)
    wv = torch.zeros(y1.size(0))
    for i in range(y1.size(0)):
        wv[i] = weights[y1[i]][y2[i]] / y1.size(0)
    return torch.matmul(wv, loss_ca)


def _authors_loss(logits1, logits2, z1, z2, y1, y2, yc, count1, count2, pair_counts, margin=50.0, alpha=0.1):
    criterion1 = torch.nn.CrossEntropyLoss(weight=_authors_get_cb(count1))
    criterion2 = torch.nn.CrossEntropyLoss(weight=_authors_get_cb(count2))
    loss_c1 = criterion1(logits1, y1)
    loss_c2 = criterion2(logits2, y2)
    loss_ca = _authors_weighted_ca_loss(z1, z2, yc, y1, y2, _authors_get_cb(pair_counts), margin)
    return (1 - alpha) * (loss_c1 + loss_c2) + alpha * loss_ca


@pytest.mark.parametrize("mode", ["exclusive", "branch"])
def test_default_loss_equals_the_authors_code(mode):
    from domgen.data.pair_sampler import PairSampler

    rng = np.random.default_rng(0)
    domains = np.array(["HAM"] * 60 + ["DMF"] * 20 + ["UDA"] * 12)
    labels = np.concatenate([rng.integers(0, 4, 60), rng.integers(0, 4, 20), rng.integers(0, 2, 12)])
    sampler = PairSampler(labels, domains, num_classes=4, mode=mode, seed=3)
    probs = sampler.exact_probabilities()
    scale = 1e6  # the authors count pairs; counts proportional to the exact probabilities give the same cb
    count1, count2, pair_counts = probs.p1 * scale, probs.p2 * scale, probs.joint * scale
    pairs = sampler.epoch_draw(0)
    b = 16
    y1, y2 = torch.as_tensor(labels[pairs.idx1[:b]]), torch.as_tensor(labels[pairs.idx2[:b]])
    yc = torch.as_tensor(pairs.positive[:b])
    z1, z2 = torch.randn(b, 8) * 20, torch.randn(b, 8) * 20
    logits1, logits2 = torch.randn(b, 4), torch.randn(b, 4)
    expected = _authors_loss(logits1, logits2, z1, z2, y1, y2, yc, count1, count2, pair_counts)
    ours = CCSALoss()(logits1, logits2, z1, z2, y1, y2, **sampler.loss_weights(), positive=yc)
    assert ours["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


class _IdentityFeatures(torch.nn.Module):
    """g = identity, h = a fixed linear head: the features are the input, so gradients are known."""

    def __init__(self):
        super().__init__()
        self.h = torch.nn.Linear(2, 2, dtype=torch.float64)

    def forward_both(self, x):
        return self.h(x), x


def test_ccsa_algorithm_reports_each_terms_gradient_at_the_features():
    from domgen.algorithms import Batch, CCSA, CCSAHparams
    from domgen.engine.loop import step_values

    t = batch()
    x1, x2 = t["z1"].clone().requires_grad_(True), t["z2"].clone().requires_grad_(True)
    algo = CCSA(CCSAHparams(weighted_align=False), LossConfig(weighted=False))
    algo.class_w1 = algo.class_w2 = algo.pair_w = None  # unweighted, as built on a pool with weighting off
    y = torch.cat([t["y1"], t["y2"]])
    b = Batch(torch.cat([x1, x2]), y, torch.zeros_like(y), {"positive": t["y1"] == t["y2"]})
    step = algo.loss(_IdentityFeatures(), b)
    out = step_values(step)  # the engine's generic per-term gradients at the features the algorithm names
    # align (pair 0): d/dz of 0.1 (1/2) ||z1 - z2||^2 = +-0.1 (-3, -4) on z1, z2: norm 0.1 sqrt(50).
    assert out["gn_align"].item() == pytest.approx(0.1 * math.sqrt(50))
    # sep (pair 1): +-0.1 (27, 36): norm 0.1 sqrt(2 (27^2 + 36^2)).
    assert out["gn_sep"].item() == pytest.approx(0.1 * math.sqrt(2 * (27**2 + 36**2)))
    assert out["gn_cls"].item() > 0
    # the logged terms are the loss's, unweighted by alpha: align = 25 / 2, sep = 2025 / 2
    assert out["align"].item() == pytest.approx(12.5) and out["sep"].item() == pytest.approx(1012.5)
    step.loss.backward()  # the main backward still works after the per-term gradients
    assert x1.grad is not None
    with torch.no_grad():  # outside training nothing asks for gradients
        assert not any(k.startswith("gn_") for k in step_values(algo.loss(_IdentityFeatures(), b)))


def test_ccsa_algorithm_passes_the_samplers_pair_labels_to_the_loss():
    """In the authors' branch mode a same-class pair can be labelled negative: the algorithm must take the
    sampler's flag (batch.extras["positive"]), not y1 == y2. Pair 0 (same class, distance 5) labelled
    negative is separated, (50 - 5)^2 / 2; pair 1 (other class, distance 10) labelled positive is aligned,
    100 / 2. Labelled by class equality instead, they would give align 25 / 2 and sep (50 - 10)^2 / 2."""
    from domgen.algorithms import Batch, CCSA, CCSAHparams

    algo = CCSA(CCSAHparams(weighted_align=False), LossConfig(weighted=False))
    algo.class_w1 = algo.class_w2 = algo.pair_w = None
    z1 = torch.zeros(2, 2, dtype=torch.float64)
    z2 = torch.tensor([[3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 1])  # y1 = (1, 0), y2 = (1, 1)
    flags = torch.tensor([False, True])
    out = algo.loss(_IdentityFeatures(), Batch(torch.cat([z1, z2]), y, torch.zeros_like(y), {"positive": flags}))
    assert out.logs["sep"].item() == pytest.approx(45**2 / 2) and out.logs["align"].item() == pytest.approx(100 / 2)
