"""Linear CKA, SVCCA and PWCCA against their defining properties and against direct NumPy/SciPy versions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from domgen.analysis.similarity import (as_samples, cca, collect_activations, cross_products, layerwise_similarity,
                                        linear_cka, paired_samples, pwcca, similarity, svcca)
from domgen.models import build_model

METRICS = ("cka", "svcca", "pwcca")


def _data(n=40, p=7, q=5, seed=0):
    """X with a decaying spectrum (so SVCCA's 99% cut drops directions) and Y partly a linear map of X."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64) * torch.logspace(0, -2.5, p, dtype=torch.float64)
    y = x @ torch.randn(p, q, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x, y


def _orthogonal(d, seed=1):
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


# ---- direct NumPy / SciPy references, written from the papers, sharing no code with the module ----
def _centre(a):
    a = np.asarray(a, dtype=np.float64)
    return a - a.mean(0)


def np_cka(x, y):
    """Kornblith et al. eq. 3-4 via centred Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def np_cca(x, y):
    """Canonical correlations = cosines of the principal angles between the centred column spaces."""
    return np.sort(np.cos(scipy.linalg.subspace_angles(_centre(x), _centre(y))))[::-1]


def np_svcca(x, y, keep=0.99):
    def reduce(a):
        u, s, _ = np.linalg.svd(_centre(a), full_matrices=False)
        k = int(np.argmax(np.cumsum(s**2) / np.sum(s**2) >= keep)) + 1
        return u[:, :k] * s[:k], k

    (rx, kx), (ry, ky) = reduce(x), reduce(y)
    return np_cca(rx, ry).mean(), kx, ky


def np_pwcca(x, y):
    """Morcos et al. eq. 2, weights from the side with fewer dimensions (full rank here)."""
    x, y = _centre(x), _centre(y)
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    qx, qy = np.linalg.qr(x)[0], np.linalg.qr(y)[0]
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    h = qx @ u  # canonical variates of x, orthonormal columns [n, p]
    alpha = np.abs(h.T @ x).sum(1)
    return float(np.sum(alpha / alpha.sum() * rho))


# ---- properties ----
@pytest.mark.parametrize("metric", METRICS)
def test_one_for_itself_and_for_an_orthogonal_transform(metric):
    x, _ = _data(n=200)
    assert similarity(x, x, metric) == pytest.approx(1.0, abs=1e-9)
    assert similarity(x, x @ _orthogonal(7), metric) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_invariant_to_isotropic_scaling_only():
    x, _ = _data(n=200)
    assert linear_cka(x, 3.5 * x @ _orthogonal(7)) == pytest.approx(1.0, abs=1e-12)
    stretched = x * torch.tensor([1.0, 5, 1, 1, 1, 1, 1], dtype=torch.float64)
    assert linear_cka(x, stretched) < 0.95  # an anisotropic scaling does change it


@pytest.mark.parametrize("metric, bound", [("cka", 0.005), ("svcca", 0.05), ("pwcca", 0.05)])
def test_near_zero_for_independent_representations(metric, bound):
    # Expected sizes with n = 20000: CKA ~ sqrt(p q) / n ~ 3e-4; canonical correlations ~ sqrt(p / n) ~ 0.02.
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(20_000, 8, generator=g), torch.randn(20_000, 6, generator=g)
    assert 0 <= similarity(x, y, metric) < bound


@pytest.mark.parametrize("metric", METRICS + ("cca",))
def test_symmetric(metric):
    x, y = _data()  # 7 vs 5 columns: PWCCA takes its weights from Y either way
    f = (lambda a, b: cca(a, b).tolist()) if metric == "cca" else (lambda a, b: similarity(a, b, metric))
    assert f(x, y) == pytest.approx(f(y, x), abs=1e-10)


# ---- agreement with the direct implementations ----
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_numpy_and_scipy(seed):
    x, y = _data(seed=seed)
    xn, yn = x.numpy(), y.numpy()
    assert linear_cka(x, y) == pytest.approx(np_cka(_centre(xn), _centre(yn)), abs=1e-10)
    assert cca(x, y).numpy() == pytest.approx(np_cca(xn, yn), abs=1e-8)
    ref, kx, ky = np_svcca(xn, yn)
    assert kx < x.shape[1]  # the 99% cut really drops directions here
    assert svcca(x, y) == pytest.approx(ref, abs=1e-8)
    assert pwcca(x, y) == pytest.approx(np_pwcca(xn, yn), abs=1e-8)
    assert pwcca(x, y) != pytest.approx(cca(x, y).mean().item(), abs=1e-3)  # the weighting matters


def test_float32_inputs_are_computed_in_float64():
    x, y = _data(n=300)
    assert linear_cka(x.float(), y.float()) == pytest.approx(linear_cka(x, y), abs=1e-6)
    assert pwcca(x.float(), y.float()) == pytest.approx(pwcca(x, y), abs=1e-5)


def test_cross_products_streamed_in_chunks_equal_the_direct_ones():
    x, y = _data(n=103)
    c = cross_products(x, y, chunk=10)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert torch.allclose(c.xx, xc.T @ xc) and torch.allclose(c.yy, yc.T @ yc) and torch.allclose(c.yx, yc.T @ xc)


# ---- conv maps and sampling ----
def test_conv_maps_as_positions_or_pooled():
    a = torch.randn(3, 4, 5, 6)
    pos, pooled = as_samples(a), as_samples(a, "pool")
    assert pos.shape == (3 * 5 * 6, 4) and torch.equal(pos[7], a[0, :, 1, 1])  # row = (image, h, w)
    assert torch.allclose(pooled, a.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="conv='pool'"):
        linear_cka(a, torch.randn(3, 4, 2, 2))
    assert 0 <= linear_cka(a, torch.randn(3, 4, 2, 2), conv="pool") <= 1


def test_subsampling_takes_the_same_seeded_rows_on_both_sides():
    a = torch.randn(10, 3, 8, 8)  # 640 positions
    x, y = paired_samples(a, 2 * a, max_samples=50, seed=3)
    assert x.shape == (50, 3) and torch.equal(y, 2 * x)
    assert torch.equal(paired_samples(a, a, max_samples=50, seed=3)[0], x)
    assert not torch.equal(paired_samples(a, a, max_samples=50, seed=4)[0], x)
    assert linear_cka(a, 2 * a, max_samples=50) == pytest.approx(1.0, abs=1e-9)


# ---- activations ----
def test_collect_activations_names_the_layers_and_restores_the_mode():
    torch.manual_seed(0)
    model = build_model("cbr_tiny", "none", num_classes=3)
    model.train()
    x = torch.randn(5, 3, 40, 40)
    acts = collect_activations(model, x, batch_size=2)  # three forward passes, concatenated
    assert list(acts) == ["layer1", "layer2", "layer3", "layer4", "features"]
    # 5x5 'same' convs, 3x3/2 pools rounding up: 40 -> 20 -> 10 -> 5 -> 3
    assert [tuple(a.shape) for a in acts.values()] == [(5, 64, 20, 20), (5, 128, 10, 10), (5, 256, 5, 5), (5, 512, 3, 3), (5, 512)]
    assert model.training
    model.eval()
    assert torch.allclose(acts["features"], model.g(x), atol=1e-6)
    resnet = collect_activations(build_model("resnet18", "none"), torch.randn(2, 3, 32, 32))
    assert list(resnet) == ["conv1", "layer1", "layer2", "layer3", "layer4", "features"]
    sims = layerwise_similarity(acts, acts, "cka")
    assert list(sims) == list(acts) and all(s == pytest.approx(1.0, abs=1e-9) for s in sims.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    x, y = _data(n=500)
    for metric in METRICS:
        assert similarity(x.cuda(), y.cuda(), metric) == pytest.approx(similarity(x, y, metric), abs=1e-9)
