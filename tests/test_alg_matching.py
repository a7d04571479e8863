"""Distribution matching (CORAL, MMD) and domain-adversarial training (DANN, CDANN), each against a hand
computation on constructed features: the penalties, the gradient reversal, Ganin's schedule, and the total
loss the engine backpropagates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.algorithms.matching import MMD_GAMMAS, coral_divergence, mmd_divergence, pairwise_penalty
from domgen.config import LossConfig
from domgen.data.samplers import TrainPool

K = 3
# 2-D features with means and covariances by hand (covariance = centred^T centred / (n - 1)):
A = [[1, 0], [-1, 0], [0, 1], [0, -1]]  # mean (0, 0), cov diag(2, 2) / 3
B = [[2, 1], [0, 1], [1, 3], [1, -1]]  # mean (1, 1), centred (±1, 0), (0, ±2): cov diag(2, 8) / 3
C = [[1, 1], [-1, -1]]  # mean (0, 0), cov [[2, 2], [2, 2]]
# CORAL (DomainBed: mean over D of the squared mean difference + mean over D^2 of the squared covariance
# difference): A-B: (1 + 1) / 2 + (0 + 0 + 0 + 2^2) / 4 = 2; A-C: 0 + ((4/3)^2 * 2 + 2^2 * 2) / 4 = 26/9;
# B-C: 1 + ((4/3)^2 + (2/3)^2 + 2 * 2^2) / 4 = 1 + 23/9; the mean over the three pairs is 76/27.
CORAL_AB, CORAL_ABC = 2.0, (2 + 26 / 9 + 32 / 9) / 3


def features(*groups) -> tuple[torch.Tensor, torch.Tensor]:
    """Features z [B, 2] and domain [B]: group i is domain i."""
    z = torch.tensor([p for g in groups for p in g], dtype=torch.float32)
    domain = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    return z, domain


def test_coral_divergence_is_the_hand_computed_mean_and_covariance_distance():
    z, d = features(A, B)
    assert coral_divergence(z[d == 0], z[d == 1]).item() == pytest.approx(CORAL_AB)
    assert pairwise_penalty(z, d, coral_divergence).item() == pytest.approx(CORAL_AB)
    z, d = features(A, B, C)
    assert pairwise_penalty(z, d, coral_divergence).item() == pytest.approx(CORAL_ABC)  # mean over 3 pairs


def test_coral_is_zero_for_identical_distributions_and_skips_a_domain_with_one_image():
    z, d = features(A, A[::-1])  # the same points in another order
    assert pairwise_penalty(z, d, coral_divergence).item() == pytest.approx(0.0, abs=1e-7)
    z, d = features(A, B, [[50.0, -50.0]])  # a third domain with one image: no covariance, left out
    assert pairwise_penalty(z, d, coral_divergence).item() == pytest.approx(CORAL_AB)
    z, d = features(A, [[50.0, -50.0]])  # one domain left: nothing to compare, 0 (not NaN)
    assert pairwise_penalty(z, d, coral_divergence).item() == 0.0


class Given(nn.Module):
    """A model whose features are its input [B, 2]; a zero head gives logits 0, so CE = ln K per image."""

    def __init__(self):
        super().__init__()
        self.h = nn.Linear(2, K)
        nn.init.zeros_(self.h.weight), nn.init.zeros_(self.h.bias)

    def forward_both(self, x):
        return self.h(x), x

    def forward(self, x):
        return self.h(x)


def pool() -> TrainPool:
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 1])
    return TrainPool.of(labels, ["A"] * 4 + ["B"] * 4 + ["C"] * 2, num_classes=K)


@pytest.mark.parametrize("name", ["coral", "mmd"])
def test_matching_loss_is_classification_plus_gamma_times_the_penalty(name):
    cls = ALGORITHMS.get(name)
    assert cls.Hparams().sampler == "domain_balanced" and cls.Hparams().mmd_gamma == 1.0
    algo = make_algorithm(cls.Hparams(mmd_gamma=0.5), LossConfig(weighted=False)).build(pool())
    z, d = features(A, B)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    step = algo.loss(Given(), Batch(z.clone().requires_grad_(), y, d))
    penalty = CORAL_AB if name == "coral" else mmd_divergence(z[:4], z[4:]).item()
    assert step.loss.item() == pytest.approx(math.log(K) + 0.5 * penalty, rel=1e-6)
    assert step.terms["penalty"].item() == pytest.approx(0.5 * penalty, rel=1e-6)
    assert step.logs["cls"].item() == pytest.approx(math.log(K))


def numpy_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 (biased) with k(a, b) = sum_g exp(-g ||a - b||^2), written out pair by pair."""
    def k(a, b):
        return sum(math.exp(-g * float(((a - b) ** 2).sum())) for g in MMD_GAMMAS)

    def mean_k(p, q):
        return np.mean([[k(a, b) for b in q] for a in p])

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_mmd_penalty_equals_a_direct_numpy_gaussian_kernel_mmd():
    rng = np.random.default_rng(0)
    x, y, w = rng.normal(0, 0.5, (3, 2)), rng.normal(0.3, 0.5, (4, 2)), rng.normal(-0.2, 1.0, (2, 2))
    z, d = features(x.tolist(), y.tolist())
    assert pairwise_penalty(z, d, mmd_divergence).item() == pytest.approx(numpy_mmd(x, y), rel=1e-5)
    z, d = features(x.tolist(), y.tolist(), w.tolist())
    want = (numpy_mmd(x, y) + numpy_mmd(x, w) + numpy_mmd(y, w)) / 3
    assert pairwise_penalty(z, d, mmd_divergence).item() == pytest.approx(want, rel=1e-5)
    assert numpy_mmd(x, y) > 1e-3  # the constructed pair differs: the check is not 0 == 0
    z, d = features(x.tolist(), x.tolist())
    assert pairwise_penalty(z, d, mmd_divergence).item() == pytest.approx(0.0, abs=1e-5)
