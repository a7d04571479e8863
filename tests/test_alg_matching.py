"""Distribution matching (CORAL, MMD) and domain-adversarial training (DANN, CDANN), each against a hand
computation on constructed features: the penalties, the gradient reversal, Ganin's schedule, and the total
loss the engine backpropagates."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.algorithms.adversarial import balanced_weights, ganin_lambda, grad_reverse
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


# ---- domain-adversarial: DANN and CDANN ---------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    c = torch.tensor([0.5, 2.0, -4.0])
    out = grad_reverse(x, 0.3)
    assert torch.equal(out, x.detach())
    (out * c).sum().backward()  # d/dx (GRL(x) c) = -0.3 c
    torch.testing.assert_close(x.grad, -0.3 * c)


def test_ganin_schedule_at_the_start_middle_and_end():
    assert ganin_lambda(0.0, 2.0) == 0.0
    assert ganin_lambda(0.5, 2.0) == pytest.approx(2.0 * (2 / (1 + math.exp(-5)) - 1))  # 2 x 0.98661
    assert ganin_lambda(0.5, 2.0) == pytest.approx(2.0 * 0.9866142981514303)
    assert ganin_lambda(1.0, 2.0) == pytest.approx(2.0 * 0.9999092042625951)  # tanh(5)
    assert ganin_lambda(1.7, 2.0) == ganin_lambda(1.0, 2.0)  # p is clipped to [0, 1]


def test_progress_counts_training_steps_within_the_epoch_and_survives_the_state():
    algo = make_algorithm(ALGORITHMS.get("dann").Hparams(lambda_max=2.0)).build(pool())
    model = Given()
    algo.attach(model)
    n = len(algo.batches(1, 4))  # 10 draws per epoch in batches of 4: 3 steps
    algo.begin_epoch(1, 4)
    z, d = features(A, B)
    batch = Batch(z, torch.zeros(8, dtype=torch.long), d)
    for _ in range(2):
        algo.loss(model, batch)
    with torch.no_grad():
        algo.loss(model, batch)  # an evaluation of the loss is no training step
    assert n == 3 and algo.progress() == pytest.approx((1 + 2 / 3) / 4)
    assert algo.lambda_now() == pytest.approx(ganin_lambda((1 + 2 / 3) / 4, 2.0))
    assert algo.state_dict()["epoch_step"] == 2
    algo.begin_epoch(2, 4)
    assert algo.progress() == 0.5


def test_discriminator_weights_balance_domains_and_classes_and_drop_single_domain_classes():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    d = torch.tensor([0, 0, 1, 0, 0, 1])
    # DANN, one group: domain 0 has 4 images, domain 1 has 2 -> 1/(2*4), 1/(2*2)
    dann = balanced_weights(d, torch.zeros_like(d), 1, 3)
    torch.testing.assert_close(dann, torch.tensor([1 / 8, 1 / 8, 1 / 4, 1 / 8, 1 / 8, 1 / 4]))
    # CDANN: class 0 in domains 0 (2 images) and 1 (1 image): 1/(1*2*2), 1/(1*2*1); classes 1 and 2 are
    # each in one domain only (the label names the domain): weight 0
    cdann = balanced_weights(d, y, 3, 3)
    torch.testing.assert_close(cdann, torch.tensor([1 / 4, 1 / 4, 1 / 2, 0, 0, 0]))
    assert balanced_weights(d[:2], y[:2], 3, 3).sum().item() == 0.0  # one domain: nothing to discriminate


def rigged(name: str, **hp):
    """A built, attached algorithm whose discriminator ignores its input: logits (ln 2, 0, 0) for the
    pool's 3 domains, so P(domain) = (1/2, 1/4, 1/4): CE ln 2 for domain 0, ln 4 for domain 1."""
    algo = make_algorithm(ALGORITHMS.get(name).Hparams(**hp), LossConfig(weighted=False)).build(pool())
    model = Given()
    algo.attach(model)
    last = algo.nets["discriminator"][-1]
    with torch.no_grad():
        last.weight.zero_(), last.bias.copy_(torch.tensor([math.log(2), 0.0, 0.0]))
    return algo, model


def test_dann_loss_is_classification_plus_the_balanced_discriminator_loss():
    algo, model = rigged("dann", schedule="constant", lambda_max=0.7)
    z, d = features(A[:3], B[:1])  # domains 0, 0, 0, 1 -> weights 1/6 x 3, 1/2
    step = algo.loss(model, Batch(z, torch.tensor([0, 1, 2, 0]), d))
    assert step.logs["adv"].item() == pytest.approx(3 / 6 * math.log(2) + 1 / 2 * math.log(4))
    assert step.loss.item() == pytest.approx(math.log(K) + 1.5 * math.log(2))
    assert step.logs["disc_acc"].item() == pytest.approx(0.5)  # it always says domain 0: right on half the weight
    assert step.logs["lambda"].item() == pytest.approx(0.7)


@pytest.mark.parametrize("name", ["dann", "cdann"])
def test_the_discriminator_reads_the_features_and_trains_in_the_optimiser_and_the_state(name):
    algo = make_algorithm(ALGORITHMS.get(name).Hparams(mlp_width=5, mlp_depth=3)).build(pool())
    model = Given()
    algo.attach(model)
    seen = []
    algo.nets["discriminator"].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    z, d = features(A, B)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    algo.loss(model, Batch(z, y, d))
    want = z + algo.nets["class_embedding"](y).detach() if name == "cdann" else z
    torch.testing.assert_close(seen[0], want)
    assert [m.out_features for m in algo.nets["discriminator"] if isinstance(m, nn.Linear)] == [5, 5, 3]  # 3 domains
    groups = algo.param_groups(model)
    in_optimiser = {id(p) for g in groups for p in g["params"]}
    assert {id(p) for p in algo.nets.parameters()} <= in_optimiser and len(groups) == 2
    keys = set(algo.state_dict()["nets"])
    assert "discriminator.0.weight" in keys and ("class_embedding.weight" in keys) == (name == "cdann")


@pytest.mark.parametrize("name", ["dann", "cdann"])
def test_features_receive_minus_lambda_times_the_discriminator_gradient(name):
    algo, model = rigged(name, schedule="constant", lambda_max=0.7, mlp_width=6)
    with torch.no_grad():  # a discriminator that reads its input, so dL_d/dz != 0
        algo.nets["discriminator"][-1].weight.normal_(generator=torch.Generator().manual_seed(1))
    z0, d = features(A, B)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])  # both classes in both domains: CDANN weighs every image
    z = z0.clone().requires_grad_()
    algo.loss(model, Batch(z, y, d)).loss.backward()
    disc_grads = [p.grad.clone() for p in algo.nets.parameters()]
    # the same two terms without the reversal, differentiated separately
    algo.nets.zero_grad()
    z2 = z0.clone().requires_grad_()
    cls = algo.criterion(model.h(z2), y, algo.class_w)
    h = z2 + algo.nets["class_embedding"](y) if name == "cdann" else z2
    w = balanced_weights(d, y if name == "cdann" else torch.zeros_like(d), K if name == "cdann" else 1, 3)
    l_d = (w * nn.functional.cross_entropy(algo.nets["discriminator"](h), d, reduction="none")).sum()
    (g_cls,) = torch.autograd.grad(cls, z2, retain_graph=True)
    g_d = torch.autograd.grad(l_d, [z2, *algo.nets.parameters()])
    assert g_d[0].abs().sum() > 0
    torch.testing.assert_close(z.grad, g_cls - 0.7 * g_d[0])  # the features play against the discriminator
    for got, want in zip(disc_grads, g_d[1:]):
        torch.testing.assert_close(got, want)  # the discriminator (and E) descend L_d


INVALID = [("coral", "mmd_gamma=-1", "must be >= 0"), ("mmd", "mmd_gamma=-0.5", "must be >= 0"),
           ("dann", "schedule=linear", "ganin | constant"), ("cdann", "mlp_depth=1", ">= 2")]


@pytest.mark.parametrize("name, bad, why", INVALID)
def test_invalid_hyperparameters_are_refused_by_the_config(name, bad, why):
    from domgen.errors import ConfigError
    from domgen.runs.registry import resolve_config

    assert resolve_config("A", "smoke", 0, [f"algorithm.name={name}"]).algorithm.sampler == "domain_balanced"
    with pytest.raises(ConfigError, match=re.escape(f"algorithm.{bad.split('=')[0]}=")) as err:
        resolve_config("A", "smoke", 0, [f"algorithm.name={name}", f"algorithm.{bad}"])
    assert why in str(err.value)
