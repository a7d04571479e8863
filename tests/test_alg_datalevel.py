"""The data-level and self-supervised algorithms (mixup, mixstyle, selfreg, erm_pairs, sd, rsc) against
hand or NumPy computations on constructed batches."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.algorithms.mixing import other_domain_partners
from domgen.config import LossConfig
from domgen.data.samplers import TrainPool
from domgen.errors import ConfigError

K = 3
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
DOMAINS = np.array(["A", "A", "A", "B", "B", "C", "C", "C"])


def pool() -> TrainPool:
    return TrainPool.of(LABELS, DOMAINS, num_classes=K, seed=0, primary="A")  # A holds every class


def built(name: str, weighted: bool = True, **hp):
    return make_algorithm(ALGORITHMS.get(name).Hparams(**hp), LossConfig(weighted=weighted), "cpu").build(pool())


def np_ce(logits: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    """Cross-entropy, weighted mean sum w[y] CE / sum w[y] (nn.CrossEntropyLoss(weight=w)) or plain mean."""
    z = logits - logits.max(axis=1, keepdims=True)
    ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1)))
    if w is None:
        return float(ce.mean())
    return float((w[y] * ce).sum() / w[y].sum())


class Linear(nn.Module):
    """logits = flatten(x) W^T: features are the flattened image, so a test computes logits in NumPy."""

    def __init__(self, d: int, k: int = K, seed: int = 0):
        super().__init__()
        self.g = nn.Flatten()
        self.h = nn.Linear(d, k, bias=False)
        with torch.no_grad():
            self.h.weight.copy_(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)))

    def forward_both(self, x):
        z = self.g(x)
        return self.h(z), z

    def forward(self, x):
        return self.forward_both(x)[0]


# ---- mixup ---------------------------------------------------------------------------------------------

def test_partners_come_from_other_domains_uniformly():
    torch.manual_seed(0)
    domain = torch.tensor([0, 0, 0, 1, 2, 2])
    draws = torch.stack([other_domain_partners(domain) for _ in range(3000)])  # [T, B]
    assert bool((domain[draws] != domain).all())
    # image 0 (domain 0) picks among images 3, 4, 5 with 1/3 each; image 3 (domain 1) among 0,1,2,4,5: 1/5 each
    freq0 = np.bincount(draws[:, 0].numpy(), minlength=6) / len(draws)
    np.testing.assert_allclose(freq0, [0, 0, 0, 1 / 3, 1 / 3, 1 / 3], atol=0.03)
    freq3 = np.bincount(draws[:, 3].numpy(), minlength=6) / len(draws)
    np.testing.assert_allclose(freq3, [0.2, 0.2, 0.2, 0, 0.2, 0.2], atol=0.03)


def test_a_batch_of_one_domain_pairs_within_it_never_with_itself():
    torch.manual_seed(0)
    domain = torch.zeros(3, dtype=torch.long)
    draws = torch.stack([other_domain_partners(domain) for _ in range(300)])
    assert bool((draws != torch.arange(3)).all()) and set(draws.flatten().tolist()) == {0, 1, 2}
    assert other_domain_partners(torch.zeros(1, dtype=torch.long)).tolist() == [0]


@pytest.mark.parametrize("weighted", [True, False])
def test_mixup_loss_is_the_lam_mix_of_both_labels_losses(weighted):
    algorithm = built("mixup", weighted=weighted, alpha=0.4)
    w = None if not weighted else algorithm.class_w.numpy()
    assert weighted == (w is not None) and (w is None or not np.allclose(w, w[0]))  # weights that matter
    x = torch.randn(5, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    y, domain = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0, 0, 1, 2, 2])
    model = Linear(12)

    torch.manual_seed(7)
    lam, j = algorithm.draw(domain)
    torch.manual_seed(7)  # the loss draws the same lam and partners from the global RNG
    step = algorithm.loss(model, Batch(x, y, domain))
    assert 0 < lam < 1 and bool((domain[j] != domain).all())

    xn, jn = x.numpy().reshape(5, -1), j.numpy()
    logits = (lam * xn + (1 - lam) * xn[jn]) @ model.h.weight.detach().numpy().T
    expected = lam * np_ce(logits, y.numpy(), w) + (1 - lam) * np_ce(logits, y.numpy()[jn], w)
    assert step.loss.item() == pytest.approx(expected, rel=1e-5)
    assert step.logs["lam"].item() == pytest.approx(lam) and step.logs["cross_domain"].item() == 1.0


def test_mixup_rejects_a_non_positive_alpha():
    cls = ALGORITHMS.get("mixup")
    assert [p[0] for p in cls.problems(cls.Hparams(alpha=0.0))] == ["alpha"]
    assert cls.Hparams().sampler == "domain_balanced" and cls.Hparams().alpha == 0.2


# ---- selfreg -------------------------------------------------------------------------------------------

def np_bn_train(x: np.ndarray, bn: nn.BatchNorm1d) -> np.ndarray:
    """BatchNorm1d in training mode: the batch's mean and biased variance."""
    mean, var = x.mean(axis=0), x.var(axis=0)
    return (x - mean) / np.sqrt(var + bn.eps) * bn.weight.detach().numpy() + bn.bias.detach().numpy()


def np_cdpl(z: np.ndarray, net: nn.Sequential) -> np.ndarray:
    """DomainBed's CDPL recomputed layer by layer: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN."""
    lin = [m for m in net if isinstance(m, nn.Linear)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    assert len(lin) == len(bns) == 3 and [m.out_features for m in lin] == [24, 24, 12]  # hidden 2D for D != 2048
    h = z
    for i, (l, b) in enumerate(zip(lin, bns)):
        h = np_bn_train(h @ l.weight.detach().numpy().T + l.bias.detach().numpy(), b)
        h = np.maximum(h, 0) if i < 2 else h
    return h


@pytest.mark.parametrize("weighted", [True, False])
def test_selfreg_terms_equal_a_numpy_recomputation(weighted):
    algorithm = built("selfreg", weighted=weighted)
    model = Linear(12)
    torch.manual_seed(3)
    algorithm.attach(model)
    with torch.no_grad():  # BatchNorm affine parameters away from (1, 0), so the test sees them used
        for m in algorithm.nets["cdpl"]:
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(7, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    y, domain = torch.tensor([2, 0, 2, 1, 0, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2, 2])
    with torch.no_grad():  # image feature c marks class c and the head reads it: L_cls < 1, so C = L_cls
        x.view(7, -1)[torch.arange(7), y] += 2.0
        model.h.weight.mul_(0.2)[:, :K] += 2.0 * torch.eye(K)

    torch.manual_seed(11)
    lam, j, k = algorithm.draw(y)
    torch.manual_seed(11)
    step = algorithm.loss(model, Batch(x, y, domain))
    assert bool((y[j] == y).all() and (y[k] == y).all())  # same-class partners
    for c in range(K):  # each a permutation of the class's images
        idx = (y == c).nonzero().squeeze(1)
        assert sorted(j[idx].tolist()) == sorted(k[idx].tolist()) == idx.tolist()

    z = x.numpy().reshape(7, -1).astype(np.float64)
    o = z @ model.h.weight.detach().numpy().T.astype(np.float64)
    p = np_cdpl(z, algorithm.nets["cdpl"])
    jn, kn = j.numpy(), k.numpy()
    mse = lambda a, b: float(((a - b) ** 2).mean())  # noqa: E731
    ind = mse(o, o[jn]) + 0.3 * mse(z, p[jn])
    hdl = mse(o, lam * o[jn] + (1 - lam) * o[kn]) + 0.3 * mse(z, lam * p[jn] + (1 - lam) * p[kn])
    cls = np_ce(o, y.numpy(), algorithm.class_w.numpy() if weighted else None)
    assert cls < 1
    assert step.logs["ind"].item() == pytest.approx(ind, rel=1e-4)
    assert step.logs["hdl"].item() == pytest.approx(hdl, rel=1e-4)
    assert step.logs["c_scale"].item() == pytest.approx(cls, rel=1e-5)
    assert step.loss.item() == pytest.approx(cls + cls * (lam * ind + (1 - lam) * hdl), rel=1e-4)
    assert step.terms["selfreg"].requires_grad and step.features is not None


def test_selfreg_scale_is_capped_at_one_and_carries_no_gradient():
    algorithm = built("selfreg", weighted=False)
    model = Linear(12)
    algorithm.attach(model)
    model.h.weight.data *= 50.0  # large logits: L_cls >> 1, so C = 1
    x = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    step = algorithm.loss(model, Batch(x, y, torch.zeros(6, dtype=torch.long)))
    assert step.logs["cls"].item() > 1 and step.logs["c_scale"].item() == 1.0
    assert not step.logs["c_scale"].requires_grad


# ---- erm_pairs -----------------------------------------------------------------------------------------

def pair_batch(algorithm) -> Batch:
    """The first batch of pairs the sampler draws, with images made up for it."""
    d = algorithm.batches(0, batch_size=4)[0]
    idx = np.asarray(d.idx)
    x = torch.randn(len(idx), 3, 2, 2, generator=torch.Generator().manual_seed(5))
    extras = {k: torch.as_tensor(np.asarray(v)) for k, v in d.extras.items()}
    return Batch(x, torch.as_tensor(pool().labels[idx]), torch.as_tensor(pool().domains[idx]), extras)


@pytest.mark.parametrize("weighted", [True, False])
def test_erm_pairs_is_ccsa_at_alpha_zero(weighted):
    ours, ccsa = built("erm_pairs", weighted=weighted), built("ccsa", weighted=weighted, alpha=0.0)
    assert [f for f in ours.describe() if f in ("alpha", "margin", "weighted_align")] == []
    batch = pair_batch(ours)
    assert torch.equal(batch.x, pair_batch(ccsa).x) and batch.y.shape[0] == 8  # the same 4 pairs
    model = Linear(12)
    step, reference = ours.loss(model, batch), ccsa.loss(model, batch)
    assert step.loss.item() == reference.loss.item()
    # ... which is L_C1 + L_C2, each stream with its own class weights
    logits = model(batch.x).detach().numpy()
    y, b = batch.y.numpy(), 4
    w1, w2 = (ours.class_w1.numpy(), ours.class_w2.numpy()) if weighted else (None, None)
    assert weighted == (w1 is not None and not np.allclose(w1, w2))  # the streams' weights differ
    expected = np_ce(logits[:b], y[:b], w1) + np_ce(logits[b:], y[b:], w2)
    assert step.loss.item() == pytest.approx(expected, rel=1e-5)
    assert step.logs["align"].item() >= 0 and step.terms["align"].item() == 0.0  # logged, not trained


# ---- sd and rsc ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("weighted", [True, False])
def test_sd_adds_reg_times_the_mean_squared_logit(weighted):
    algorithm = built("sd", weighted=weighted, sd_reg=0.25)
    model = Linear(12)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 2, 1, 2])
    step = algorithm.loss(model, Batch(x, y, torch.zeros(4, dtype=torch.long)))
    logits = x.numpy().reshape(4, -1) @ model.h.weight.detach().numpy().T
    cls = np_ce(logits, y.numpy(), algorithm.class_w.numpy() if weighted else None)
    assert step.logs["penalty"].item() == pytest.approx(float((logits ** 2).sum() / 12), rel=1e-5)
    assert step.loss.item() == pytest.approx(cls + 0.25 * (logits ** 2).mean(), rel=1e-5)
    assert built("sd").hparams.sd_reg == 0.1 and built("sd").hparams.sampler == "uniform"


def rsc_case():
    """D = 6 features, K = 3 classes: head row c is a permutation of 0..5, so d logit_c / d z = W[c] and
    each class's top third (2 features) is known: class 0 -> features 4, 5; class 1 -> 0, 1; class 2 -> 2, 5."""
    model = Linear(6)
    w = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5, 4, 0, 1, 2, 3], [0, 1, 5, 2, 3, 4]]) / 4
    model.h.weight.data.copy_(w)
    x = torch.rand(6, 6, 1, 1, generator=torch.Generator().manual_seed(9)) + 0.1  # z = x flattened, positive
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, y, {0: [4, 5], 1: [0, 1], 2: [2, 5]}


def test_rsc_mask_drops_each_samples_top_third_features_on_the_top_third_samples():
    algorithm = built("rsc", weighted=False)
    model, x, y, top = rsc_case()
    z = model.g(x)
    m = algorithm.mask(model, z, y).numpy()

    # By hand: each sample's top-third features zeroed, then the confidence each sample loses.
    zn, wn = z.detach().numpy(), model.h.weight.detach().numpy()
    mask_f = np.ones((6, 6))
    for b, c in enumerate(y.tolist()):
        mask_f[b, top[c]] = 0
    softmax = lambda a: np.exp(a) / np.exp(a).sum(axis=1, keepdims=True)  # noqa: E731
    rows = np.arange(6)
    change = softmax(zn @ wn.T)[rows, y] - softmax((zn * mask_f) @ wn.T)[rows, y]
    chosen = np.argsort(change)[-2:]  # b_drop 1/3 of 6 samples: the two largest drops
    expected = np.ones((6, 6))
    expected[chosen] = mask_f[chosen]
    np.testing.assert_array_equal(m, expected)
    assert (m == 0).sum() == 4 and len(set(y[chosen].tolist())) == 2  # two samples (two classes) x two features

    step = algorithm.loss(model, Batch(x, y, torch.zeros(6, dtype=torch.long)))
    assert step.loss.item() == pytest.approx(np_ce((zn * expected) @ wn.T, y.numpy(), None), rel=1e-5)
    assert step.logs["muted_frac"].item() == pytest.approx(2 / 6)


# ---- mixstyle ------------------------------------------------------------------------------------------

class Staged(nn.Module):
    """g: stages layer1 and layer2 that pass the image through (so a hook's output is the mixed image),
    then flatten; h: linear."""

    def __init__(self):
        super().__init__()
        self.g = nn.Sequential(OrderedDict(layer1=nn.Identity(), layer2=nn.Identity(), flatten=nn.Flatten()))
        self.h = nn.Linear(12, K)

    def forward(self, x):
        return self.h(self.g(x))


def test_mixstyle_hook_mixes_each_samples_statistics_with_its_partners():
    algorithm = built("mixstyle", stages="layer1")
    model = Staged()
    algorithm.attach(model)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 + 1
    lam, perm = torch.tensor([0.2, 0.5, 0.9, 1.0]), torch.tensor([2, 3, 0, 1])
    algorithm.draw = lambda b, device: (lam, perm)  # the drawn lam and partners, fixed
    out = model.g.layer1(x).numpy()

    xn = x.numpy()
    mu = xn.mean(axis=(2, 3), keepdims=True)  # [B, C, 1, 1]
    sig = np.sqrt(xn.var(axis=(2, 3), ddof=1, keepdims=True) + 1e-6)
    ln = lam.double().numpy()[:, None, None, None]
    mu_mix = ln * mu + (1 - ln) * mu[perm.numpy()]
    sig_mix = ln * sig + (1 - ln) * sig[perm.numpy()]
    np.testing.assert_allclose(out, (xn - mu) / sig * sig_mix + mu_mix, rtol=1e-5, atol=1e-6)
    # the output carries the mixed statistics: its mean exactly, its std up to eps
    np.testing.assert_allclose(out.mean(axis=(2, 3), keepdims=True), mu_mix, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(2, 3), ddof=1, keepdims=True), sig_mix, rtol=1e-5)
    np.testing.assert_allclose(out[3], xn[3], atol=1e-5)  # lam = 1: the sample keeps its own style

    model.eval()  # evaluation: the identity
    assert torch.equal(model.g.layer1(x), x) and torch.equal(model.g.layer2(x), x)


def test_mixstyle_crossdomain_partners_and_probability():
    algorithm = built("mixstyle", p=1.0)
    assert algorithm.hparams.mode == "crossdomain" and algorithm.hparams.sampler == "domain_balanced"
    domain = torch.tensor([0, 0, 1, 2, 2])
    algorithm._domain = domain
    torch.manual_seed(0)
    for _ in range(50):
        lam, perm = algorithm.draw(5, torch.device("cpu"))
        assert bool((domain[perm] != domain).all()) and lam.shape == (5,) and bool(((lam >= 0) & (lam <= 1)).all())
    never = built("mixstyle", p=0.0)
    model = Staged()
    never.attach(model)
    x = torch.randn(5, 3, 2, 2)
    assert all(never.draw(5, torch.device("cpu")) is None for _ in range(20))
    assert torch.equal(model.g(x), x.flatten(1))  # training mode, p = 0: unchanged


def test_mixstyle_unknown_stage_fails_listing_the_models_stages():
    algorithm = built("mixstyle", stages="layer1,layer9")
    with pytest.raises(ConfigError, match=r"layer9 not a stage.*layer1, layer2, flatten"):
        algorithm.attach(Staged())
    cls = ALGORITHMS.get("mixstyle")
    assert {p[0] for p in cls.problems(cls.Hparams(stages=" , ", mode="half", p=1.5))} == {"stages", "mode", "p"}


def test_mixstyle_loss_shows_the_hooks_the_batchs_domains_and_only_while_it_runs():
    algorithm = built("mixstyle", weighted=False, p=1.0)
    model = Staged()
    algorithm.attach(model)
    seen, draw = [], algorithm.draw
    algorithm.draw = lambda b, device: (seen.append(algorithm._domain), draw(b, device))[1]
    x, y, domain = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 2])
    torch.manual_seed(0)
    step = algorithm.loss(model, Batch(x, y, domain))
    assert len(seen) == 2 and all(d is domain for d in seen) and algorithm._domain is None  # both stages
    model.eval()  # the same model without mixing gives another loss: the hooks acted in training
    assert step.loss.item() != pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-3)
