"""GroupDRO, IRM, V-REx and Fishr against numbers worked out by hand on constructed batches.

The model is a fixed linear head on given features (g is the identity, so the batch's x are the features
z and the logits are z W^T + b): every per-domain loss is a cross-entropy of logits the test chooses,
such as (0, ln 3) -> softmax (1/4, 3/4), CE = ln(4/3) for class 1 and ln 4 for class 0.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.config import LossConfig
from domgen.data.samplers import TrainPool

LN2, LN3 = math.log(2.0), math.log(3.0)
CPU = torch.device("cpu")


class Head(nn.Module):
    """g: identity (x are the features [B, D]); h: nn.Linear(D, K) with the given weight and bias."""

    def __init__(self, weight, bias=None):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        self.g = nn.Identity()
        self.h = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.h.weight.copy_(weight)
            self.h.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.as_tensor(bias))

    def forward_both(self, x):
        z = self.g(x)
        return self.h(z), z

    def forward(self, x):
        return self.forward_both(x)[0]


def identity_head(k: int = 2) -> Head:
    """Logits = x: the batch gives the logits directly."""
    return Head(torch.eye(k))


def pool(n_domains: int = 3, k: int = 2) -> TrainPool:
    """A pool of ``n_domains`` domains (A, B, C, ...) holding every class (what the algorithm is built on)."""
    labels = np.tile(np.arange(k), 2 * n_domains)
    domains = np.repeat([chr(65 + d) for d in range(n_domains)], 2 * k)
    return TrainPool.of(labels, domains, num_classes=k)


def built(name: str, weighted: bool = False, n_domains: int = 3, k: int = 2, **hp):
    return make_algorithm(ALGORITHMS.get(name).Hparams(**hp), LossConfig(weighted=weighted), CPU).build(pool(n_domains, k))


def make_batch(x, y, domain) -> Batch:
    return Batch(torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(domain))


def through_checkpoint(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---- GroupDRO -------------------------------------------------------------------------------------
def dro_batch() -> Batch:
    """Domain 0: two images of class 1 at logits (0, ln 3): loss ln(4/3). Domain 1: one image of class 0
    at logits (0, 0): loss ln 2. Domain 2: absent."""
    return make_batch([[0.0, LN3], [0.0, 0.0], [0.0, LN3]], [1, 0, 1], [0, 1, 0])


def test_groupdro_defaults_follow_domainbed():
    hp = ALGORITHMS.get("groupdro").Hparams()
    assert (hp.eta, hp.sampler) == (1e-2, "domain_balanced")
    assert [w for w, *_ in ALGORITHMS.get("groupdro").problems(type(hp)(eta=-1.0))] == ["eta"]


def test_groupdro_q_and_loss_after_one_step_by_hand():
    dro = built("groupdro", eta=0.5)
    torch.testing.assert_close(dro.q, torch.full((3,), 1 / 3))
    step = dro.loss(identity_head(), dro_batch())
    # q_d <- q_d exp(eta L_d) for the present domains, then renormalised over all three:
    # (1/3)(sqrt(4/3), sqrt(2), 1) / sum -> the 1/3 cancels.
    raw = np.array([math.sqrt(4 / 3), math.sqrt(2.0), 1.0])
    q = raw / raw.sum()
    assert dro.q.tolist() == pytest.approx(q.tolist(), rel=1e-6)
    # the loss is sum over present domains of the updated q times their loss (Algorithm 1)
    assert step.loss.item() == pytest.approx(q[0] * math.log(4 / 3) + q[1] * LN2, rel=1e-6)
    assert step.logs["worst_domain_loss"].item() == pytest.approx(LN2, rel=1e-6)
    assert [step.logs[f"q_{d}"].item() for d in "ABC"] == pytest.approx(q.tolist(), rel=1e-6)  # logged per domain
    # a second identical step compounds: q proportional to exp(2 eta L_d)
    dro.loss(identity_head(), dro_batch())
    raw2 = np.array([4 / 3, 2.0, 1.0])
    assert dro.q.tolist() == pytest.approx((raw2 / raw2.sum()).tolist(), rel=1e-6)


def test_groupdro_per_domain_loss_uses_the_class_weights():
    dro = built("groupdro", weighted=True, eta=1.0)
    dro.class_w = torch.tensor([1.0, 3.0])
    # one domain, class 0 at (ln 3, 0): CE ln(4/3), weight 1; class 1 at (0, 0): CE ln 2, weight 3;
    # weighted mean (nn.CrossEntropyLoss(weight=w)): (ln(4/3) + 3 ln 2) / 4
    batch = make_batch([[LN3, 0.0], [0.0, 0.0]], [0, 1], [2, 2])
    step = dro.loss(identity_head(), batch)
    risk = (math.log(4 / 3) + 3 * LN2) / 4
    q2 = math.exp(risk) / (2 + math.exp(risk))
    assert dro.q[2].item() == pytest.approx(q2, rel=1e-6)
    assert step.loss.item() == pytest.approx(q2 * risk, rel=1e-6)


def test_groupdro_q_survives_a_checkpoint_and_resumes_exactly():
    dro = built("groupdro", eta=0.5)
    dro.loss(identity_head(), dro_batch())
    state = through_checkpoint(dro.state_dict())
    again = built("groupdro", eta=0.5)
    again.load_state_dict(state)
    assert torch.equal(again.q, dro.q) and not torch.equal(again.q, torch.full((3,), 1 / 3))
    batch = make_batch([[LN3, 0.0], [0.0, 0.0]], [0, 1], [2, 1])
    assert torch.equal(dro.loss(identity_head(), batch).loss, again.loss(identity_head(), batch).loss)
    assert torch.equal(dro.q, again.q)
    with pytest.raises(ValueError, match="different pool"):
        built("groupdro", n_domains=4).load_state_dict({**state, "sampler": built("groupdro", n_domains=4).sampler.state_dict()})


# ---- the annealed penalties ----------------------------------------------------------------------
@pytest.mark.parametrize("name, weight, steps", [("irm", 1e2, 500), ("vrex", 1e1, 500), ("fishr", 1e3, 1500)])
def test_penalty_defaults_follow_domainbed_and_bad_values_are_named(name, weight, steps):
    cls = ALGORITHMS.get(name)
    hp = cls.Hparams()
    assert (hp.penalty_weight, hp.anneal_steps, hp.sampler) == (weight, steps, "domain_balanced")
    bad = cls.Hparams(penalty_weight=-1.0, anneal_steps=-1)
    assert [f for f, *_ in cls.problems(bad)] == ["penalty_weight", "anneal_steps"]
    if name == "fishr":
        assert hp.ema == 0.95 and [f for f, *_ in cls.problems(cls.Hparams(ema=1.0))] == ["ema"]


# ---- V-REx ----------------------------------------------------------------------------------------
def test_vrex_is_mean_plus_lambda_variance_of_the_domain_risks_and_anneals():
    vrex = built("vrex", penalty_weight=10.0, anneal_steps=1)
    assert ALGORITHMS.get("vrex").Hparams().sampler == "domain_balanced"
    # domain 0: class 1 at (0, ln 3), twice: ln(4/3); domain 1: class 0 at (0, 0): ln 2;
    # domain 2: class 1 at (ln 3, 0): p = 1/4, ln 4
    batch = make_batch([[0.0, LN3], [0.0, 0.0], [0.0, LN3], [LN3, 0.0]], [1, 0, 1, 1], [0, 1, 0, 2])
    risks = np.array([math.log(4 / 3), LN2, math.log(4.0)])
    mean, var = risks.mean(), ((risks - risks.mean()) ** 2).mean()
    first = vrex.loss(identity_head(), batch)  # step 0 < anneal_steps: weight 1.0
    assert first.loss.item() == pytest.approx(mean + var, rel=1e-6)
    assert first.logs["penalty"].item() == pytest.approx(var, rel=1e-6)
    state = through_checkpoint(vrex.state_dict())
    second = vrex.loss(identity_head(), batch)  # step 1: lambda
    assert second.loss.item() == pytest.approx(mean + 10 * var, rel=1e-6)
    resumed = built("vrex", penalty_weight=10.0, anneal_steps=1)
    resumed.load_state_dict(state)
    assert state["steps"] == 1 and torch.equal(resumed.loss(identity_head(), batch).loss, second.loss)


# ---- IRM ------------------------------------------------------------------------------------------
def irm_batch(y0=(0, 1, 0, 1)) -> Batch:
    """Domain 0: four images at logits v = (0, ln 3) (p = (1/4, 3/4)), classes ``y0``; even positions are one
    half, odd the other. Domain 1: one image (no penalty). Domain 2: two images of class 0 at (ln 2, 0)."""
    x = [[0.0, LN3], [0.0, 0.0], [0.0, LN3], [LN2, 0.0], [0.0, LN3], [0.0, LN3], [LN2, 0.0]]
    return make_batch(x, [y0[0], 0, y0[1], 0, y0[2], y0[3], 0], [0, 1, 0, 2, 0, 0, 2])


def test_irm_penalty_by_hand_and_the_annealing_switch():
    irm = built("irm", penalty_weight=100.0, anneal_steps=2)
    # d/ds CE(s v, y) at s = 1 is sum_k p_k v_k - v_y. Domain 0, v = (0, ln 3): class 0 -> (3/4) ln 3,
    # class 1 -> -(1/4) ln 3; even half all class 0, odd half all class 1: product -(3/16) ln^2 3.
    # Domain 2, v = (ln 2, 0), p = (2/3, 1/3), class 0 in both halves: -(1/3) ln 2 each: ln^2 2 / 9.
    penalty = (-3 / 16 * LN3**2 + LN2**2 / 9) / 2
    # per-domain mean CE, then the mean over the three domains (domain 1 has a loss, not a penalty)
    nll = ((math.log(4.0) + math.log(4 / 3)) / 2 + LN2 + math.log(3 / 2)) / 3
    for step in range(3):  # weight 1.0 for steps 0 and 1, lambda from step 2 (DomainBed's update_count)
        out = irm.loss(identity_head(), irm_batch())
        assert out.logs["penalty"].item() == pytest.approx(penalty, rel=1e-5)
        assert out.loss.item() == pytest.approx(nll + (1.0 if step < 2 else 100.0) * penalty, rel=1e-5)
    assert through_checkpoint(irm.state_dict())["steps"] == 3


def test_irm_penalty_uses_the_class_weights():
    irm = built("irm", weighted=True)
    irm.class_w = torch.tensor([3.0, 1.0])
    # domain 0, classes (0, 1, 1, 1): even half classes 0 and 1 with weights 3 and 1: the weighted mean of
    # the gradients, (3 (3/4) - (1/4)) ln 3 / 4 = (1/2) ln 3; odd half class 1: -(1/4) ln 3. Domain 2 as above.
    out = irm.loss(identity_head(), irm_batch(y0=(0, 1, 1, 1)))
    assert out.logs["penalty"].item() == pytest.approx((-1 / 8 * LN3**2 + LN2**2 / 9) / 2, rel=1e-5)


def test_irm_without_a_splittable_domain_is_the_mean_loss():
    irm = built("irm")
    out = irm.loss(identity_head(), make_batch([[0.0, 0.0], [0.0, LN3]], [0, 1], [0, 1]))
    assert out.loss.item() == pytest.approx((LN2 + math.log(4 / 3)) / 2, rel=1e-6)
    assert out.logs["penalty"].item() == 0.0 and irm.steps == 1


# ---- Fishr ----------------------------------------------------------------------------------------
def random_head(k: int = 3, d: int = 4, seed: int = 0) -> Head:
    g = torch.Generator().manual_seed(seed)
    return Head(torch.randn(k, d, generator=g), torch.randn(k, generator=g))


@pytest.mark.parametrize("weights", [None, (1.0, 2.0, 0.5)])
def test_fishr_closed_form_head_gradients_equal_autograd_per_sample(weights):
    from domgen.algorithms.invariance import head_gradients

    head = random_head()
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    w = None if weights is None else torch.tensor(weights)
    logits, _ = head.forward_both(z)
    closed = head_gradients(logits, z, y, w)
    for i in range(len(y)):  # autograd, one image at a time: d (w_y CE_i) / d (W, b)
        ce = nn.functional.cross_entropy(head.h(z[i : i + 1]), y[i : i + 1]) * (1.0 if w is None else w[y[i]])
        gw, gb = torch.autograd.grad(ce, [head.h.weight, head.h.bias])
        torch.testing.assert_close(closed[i], torch.cat([gw.flatten(), gb]))


def numpy_head_grads(head: Head, z: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-sample gradients [B, K*D + K] of w_y CE and the weighted-mean CE, computed with NumPy."""
    W, b = head.h.weight.detach().double().numpy(), head.h.bias.detach().double().numpy()
    logits = z @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = (p - np.eye(W.shape[0])[y]) * w[y][:, None]
    grads = np.concatenate([(err[:, :, None] * z[:, None, :]).reshape(len(y), -1), err], axis=1)
    ce = -np.log(p[np.arange(len(y)), y])
    return grads, float((w[y] * ce).sum() / w[y].sum())


def numpy_penalty(variances: list[np.ndarray]) -> float:
    v = np.stack(variances)
    return float(((v - v.mean(0)) ** 2).mean(1).mean())


def test_fishr_penalty_and_its_moving_average_equal_numpy():
    ema, lam = 0.9, 10.0
    fishr = built("fishr", weighted=True, k=3, penalty_weight=lam, anneal_steps=1, ema=ema)
    fishr.class_w = torch.tensor([1.0, 2.0, 0.5])
    w, head, rng = np.array([1.0, 2.0, 0.5]), random_head(), np.random.default_rng(0)

    def step(domains, y):
        z = rng.normal(size=(len(y), 4)).astype(np.float32)
        out = fishr.loss(head, make_batch(z, y, domains))
        grads, nll = numpy_head_grads(head, z.astype(np.float64), np.array(y), w)
        var = {d: grads[np.array(domains) == d].var(axis=0) for d in set(domains) if domains.count(d) >= 2}
        return out, nll, var, make_batch(z, y, domains)

    # step 0: domains 0 and 1 (domain 2 has one image: skipped); the first average is the variance itself
    out, nll, v1, _ = step([0, 0, 0, 1, 1, 1, 1, 2], [0, 1, 2, 0, 1, 1, 2, 0])
    assert out.logs["penalty"].item() == pytest.approx(numpy_penalty([v1[0], v1[1]]), rel=1e-4)
    assert out.loss.item() == pytest.approx(nll, rel=1e-5)  # weight 0 before anneal_steps (DomainBed)
    state = through_checkpoint(fishr.state_dict())
    # step 1: domains 1 and 2; domain 1's average carries step 0's, domain 2 starts; weight lambda now.
    # Stored averages are DomainBed's ema_data: a = ema a + (1 - ema) v from a = 0; the penalty sees a / (1 - ema).
    out, nll, v2, batch = step([1, 1, 2, 2, 2, 0], [0, 2, 1, 1, 0, 2])
    smooth1 = (ema * (1 - ema) * v1[1] + (1 - ema) * v2[1]) / (1 - ema)
    penalty = numpy_penalty([smooth1, v2[2]])
    assert out.logs["penalty"].item() == pytest.approx(penalty, rel=1e-4)
    assert out.loss.item() == pytest.approx(nll + lam * penalty, rel=1e-4)
    # the averages are state: a resumed Fishr takes the same step
    again = built("fishr", weighted=True, k=3, penalty_weight=lam, anneal_steps=1, ema=ema)
    again.class_w = fishr.class_w
    again.load_state_dict(state)
    assert state["var_ema"][0] == pytest.approx(((1 - ema) * v1[0]).tolist(), rel=1e-4) and state["var_ema"][2] == [0.0] * 15
    assert torch.equal(again.loss(head, batch).loss, out.loss) and torch.equal(again.var_ema, fishr.var_ema)


def test_fishr_penalty_trains_the_head_as_the_autograd_penalty_does():
    # The closed form is a function of (W, b, z): its gradient must equal that of the penalty built from
    # autograd's per-sample gradients with create_graph (what BackPACK gives DomainBed).
    from domgen.algorithms.invariance import fishr_penalty, head_gradients

    head, y = random_head(), torch.tensor([0, 1, 2, 0, 2, 1, 1])
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
    domains = [torch.arange(0, 3), torch.arange(3, 7)]
    params = [head.h.weight, head.h.bias]

    def variances(grads):
        return torch.stack([grads[i].var(dim=0, unbiased=False) for i in domains])

    closed = fishr_penalty(variances(head_gradients(head.h(z), z, y, None)))
    rows = []
    for i in range(len(y)):
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(head.h(z[i : i + 1]), y[i : i + 1]), params, create_graph=True)
        rows.append(torch.cat([gw.flatten(), gb]))
    reference = fishr_penalty(variances(torch.stack(rows)))
    torch.testing.assert_close(closed, reference)
    for a, b in zip(torch.autograd.grad(closed, params), torch.autograd.grad(reference, params)):
        torch.testing.assert_close(a, b)


def test_groupdro_q_stays_a_distribution_when_eta_times_loss_is_huge():
    # exp(1000 * 5) overflows float32; the update is a softmax of log q, so q moves wholly to domain 0
    dro = built("groupdro", eta=1000.0)
    for _ in range(3):
        step = dro.loss(identity_head(), make_batch([[0.0, 5.0], [3.0, 0.0]], [0, 1], [0, 1]))
    assert dro.q.tolist() == [1.0, 0.0, 0.0] and torch.isfinite(step.loss)
