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
