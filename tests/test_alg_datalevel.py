"""The data-level and self-supervised algorithms (mixup, mixstyle, selfreg, erm_pairs, sd, rsc) against
hand or NumPy computations on constructed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, Batch, make_algorithm
from domgen.algorithms.mixing import other_domain_partners
from domgen.config import LossConfig
from domgen.data.samplers import TrainPool

K = 3
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1])
DOMAINS = np.array(["A", "A", "A", "B", "B", "C", "C", "C"])


def built(name: str, weighted: bool = True, **hp):
    pool = TrainPool.of(LABELS, DOMAINS, num_classes=K, seed=0)
    return make_algorithm(ALGORITHMS.get(name).Hparams(**hp), LossConfig(weighted=weighted), "cpu").build(pool)


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
