"""Representation similarity of two layers' activations on the same inputs: linear CKA, SVCCA, PWCCA.

- Linear CKA (Kornblith et al., ICML 2019, eq. 5, feature-space form):
  ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X [n, p], Y [n, q]. Invariant to orthogonal
  transforms and isotropic scaling of either side, not to arbitrary invertible linear maps.
- SVCCA (Raghu et al., NeurIPS 2017, Sec. 2): keep, on each side, the top principal directions explaining
  99% of the variance (eigenvalues of the covariance, i.e. squared singular values), then CCA between the
  two reduced representations; the score is the mean canonical correlation.
- PWCCA (Morcos et al., NeurIPS 2018, Sec. 2.2, eq. 2): the canonical correlations rho_i weighted by
  alpha_i ~ sum_j |<h_i, x_j>|, how much of the neurons x_j the canonical variate h_i accounts for. The
  weights come from the side with fewer (non-degenerate) directions, as in google/svcca's compute_pwcca, so
  the score is symmetric unless both sides have the same count (then the first argument's weights).
  google/svcca adds the neuron means back to the canonical directions before orthonormalising them; here
  the variates stay centred, as in the paper's definition.

Everything is computed from three float64 cross-product matrices (X^T X, Y^T Y, Y^T X after centring),
accumulated in row chunks: memory is O(chunk * (p + q) + (p + q)^2) whatever n is, on the device of the
inputs (CPU or GPU). CCA needs more samples than dimensions to mean anything: with n <= p every
correlation is 1, which is why SVCCA reduces first and why conv layers use positions as samples.

Conv maps [N, C, H, W] (``conv``): "positions" (default; each spatial position of each image a sample with
C features, as Raghu et al. 2017 and Morcos et al. 2018 treat conv layers; both sides need the same H x W)
or "pool" (global average over H x W, one sample per image). Beyond ``max_samples`` rows, a seeded
random subset of rows (the same rows on both sides) is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

CONV_MODES = ("positions", "pool")
MAX_SAMPLES = 10_000  # rows kept per comparison: X^T X on 10k x 2048 is ~40 GFLOP in float64
EIG_TOL = 1e-10  # directions with variance below this fraction of the largest are treated as absent


def as_samples(a: torch.Tensor, conv: str = "positions") -> torch.Tensor:
    """Activations -> [samples, features]: [N, D] as is; [N, C, H, W] by ``conv``; other shapes flattened."""
    if conv not in CONV_MODES:
        raise ValueError(f"conv={conv!r}: expected one of {CONV_MODES}")
    if a.dim() == 4:
        return a.mean(dim=(2, 3)) if conv == "pool" else a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])
    return a.reshape(a.shape[0], -1)


def paired_samples(a: torch.Tensor, b: torch.Tensor, conv: str = "positions", max_samples: int = MAX_SAMPLES,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides as [n, p] and [n, q] with the same rows, at most ``max_samples`` (a seeded subset)."""
    x, y = as_samples(a, conv), as_samples(b, conv)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{tuple(a.shape)} vs {tuple(b.shape)}: different sample counts ({x.shape[0]} vs "
                         f"{y.shape[0]}); conv maps of different sizes need conv='pool'")
    if x.shape[0] > max_samples:
        rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]
        x, y = x[rows.to(x.device)], y[rows.to(y.device)]
    return x, y


@dataclass(frozen=True)
class CrossProducts:
    """Centred cross-products (float64): xx = Xc^T Xc [p, p], yy [q, q], yx = Yc^T Xc [q, p]."""

    xx: torch.Tensor
    yy: torch.Tensor
    yx: torch.Tensor


def cross_products(x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> CrossProducts:
    """Two passes over row chunks (means first, then centred products), so float32 inputs never need a
    float64 copy in full and the centring is exact rather than sum-of-squares minus n * mean^2."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("similarity needs at least 2 samples")
    mx = sum(x[i:i + chunk].double().sum(0) for i in range(0, n, chunk)) / n
    my = sum(y[i:i + chunk].double().sum(0) for i in range(0, n, chunk)) / n
    p, q = x.shape[1], y.shape[1]
    xx = x.new_zeros((p, p), dtype=torch.float64)
    yy, yx = x.new_zeros((q, q), dtype=torch.float64), x.new_zeros((q, p), dtype=torch.float64)
    for i in range(0, n, chunk):
        xc, yc = x[i:i + chunk].double() - mx, y[i:i + chunk].double() - my
        xx += xc.T @ xc
        yy += yc.T @ yc
        yx += yc.T @ xc
    return CrossProducts(xx, yy, yx)


def linear_cka(a: torch.Tensor, b: torch.Tensor, **samples) -> float:
    """Kornblith et al. (2019) linear CKA; ``samples``: ``conv``, ``max_samples``, ``seed`` (paired_samples)."""
    c = cross_products(*paired_samples(a, b, **samples))
    return float(c.yx.square().sum() / (torch.linalg.matrix_norm(c.xx) * torch.linalg.matrix_norm(c.yy)))


def _eig(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of a PSD matrix, directions below EIG_TOL dropped."""
    lam, vec = torch.linalg.eigh(cov)
    lam, vec = lam.flip(0), vec.flip(1)
    keep = lam > EIG_TOL * lam[0].clamp(min=torch.finfo(lam.dtype).tiny)
    return lam[keep], vec[:, keep]


@dataclass(frozen=True)
class CCA:
    """rho: canonical correlations, descending [r]; ax: X-side directions [p, r] whose variates Xc @ ax
    are orthonormal; xx: X's cross-products (for the PWCCA weights). Built by :func:`_cca`."""

    rho: torch.Tensor
    ax: torch.Tensor
    xx: torch.Tensor


def _cca(xx: torch.Tensor, yy: torch.Tensor, yx: torch.Tensor) -> CCA:
    """CCA from cross-products: whiten each side (W^T S W = I on its non-degenerate span), then the
    singular values of Wx^T Sxy Wy are the canonical correlations (the standard whitening solution)."""
    lx, vx = _eig(xx)
    ly, vy = _eig(yy)
    if lx.numel() == 0 or ly.numel() == 0:
        raise ValueError("a representation is constant over the samples: its similarity is undefined")
    wx, wy = vx / lx.sqrt(), vy / ly.sqrt()  # [p, kx], [q, ky]
    u, s, _ = torch.linalg.svd(wx.T @ yx.T @ wy, full_matrices=False)  # [kx, r], [r]
    return CCA(s.clamp(0.0, 1.0), wx @ u, xx)


def cca(a: torch.Tensor, b: torch.Tensor, **samples) -> torch.Tensor:
    """All canonical correlations between two representations, descending (float64)."""
    c = cross_products(*paired_samples(a, b, **samples))
    return _cca(c.xx, c.yy, c.yx).rho


def svcca(a: torch.Tensor, b: torch.Tensor, keep: float = 0.99, **samples) -> float:
    """Raghu et al. (2017): mean canonical correlation between the top-``keep``-variance PCA subspaces."""
    c = cross_products(*paired_samples(a, b, **samples))
    lx, vx = _top_variance(c.xx, keep)
    ly, vy = _top_variance(c.yy, keep)
    # The reduced data Xc @ vx has cross-products diag(lx); between the sides vy^T Syx vx.
    return float(_cca(torch.diag(lx), torch.diag(ly), vy.T @ c.yx @ vx).rho.mean())


def _top_variance(cov: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    lam, vec = _eig(cov)
    k = int(torch.searchsorted(lam.cumsum(0) / lam.sum(), torch.tensor(keep, dtype=lam.dtype, device=lam.device))) + 1
    return lam[:k], vec[:, :k]


def pwcca(a: torch.Tensor, b: torch.Tensor, **samples) -> float:
    """Morcos et al. (2018): canonical correlations weighted by alpha_i = sum_j |<h_i, x_j>| (normalised)."""
    c = cross_products(*paired_samples(a, b, **samples))
    kx, ky = _eig(c.xx)[0].numel(), _eig(c.yy)[0].numel()
    res = _cca(c.xx, c.yy, c.yx) if kx <= ky else _cca(c.yy, c.xx, c.yx.T)  # weights from the smaller side
    alpha = (res.ax.T @ res.xx).abs().sum(1)  # <h_i, x_j> = (A^T Xc^T Xc)_ij, summed |.| over neurons j
    return float((alpha / alpha.sum() * res.rho).sum())


METRICS: dict[str, Callable[..., float]] = {"cka": linear_cka, "svcca": svcca, "pwcca": pwcca}


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str = "cka", **samples) -> float:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {sorted(METRICS)}")
    return METRICS[metric](a, b, **samples)


def layerwise_similarity(acts_a: dict[str, torch.Tensor], acts_b: dict[str, torch.Tensor], metric: str = "cka",
                         **samples) -> dict[str, float]:
    """Per layer (the names both dicts hold, in ``acts_a``'s order)."""
    return {name: similarity(acts_a[name], acts_b[name], metric, **samples) for name in acts_a if name in acts_b}


def default_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers the analysis reads, bottom-up, named for the report: ResNets conv1 (its raw output),
    layer1..layer4; CBR models layer1..layerN; every model ``features``, the output of ``g`` (the
    penultimate features [N, D] that ``h`` reads)."""
    g = getattr(model, "g", model)
    if hasattr(g, "block_names"):
        names = list(g.block_names)
    elif all(hasattr(g, n) for n in ("conv1", "layer1", "layer2", "layer3", "layer4")):
        names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    else:
        names = []
    return {**{n: g.get_submodule(n) for n in names}, "features": g}


@torch.no_grad()
def collect_activations(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module] | Iterable[str] | None = None,
                        batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Each layer's output on the batch ``x`` [N, 3, H, W], in eval mode, via forward hooks, as float32 on
    the CPU (so a probe set does not stay on the GPU). ``layers``: None (:func:`default_layers`), names of
    submodules of ``model`` (``"g.layer2"``), or a name -> module dict."""
    if layers is None:
        layers = default_layers(model)
    elif not isinstance(layers, dict):
        layers = {n: model.get_submodule(n) for n in layers}
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str):
        return lambda module, inputs, out: parts[name].append(out.detach().to("cpu", torch.float32, copy=True))

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i in range(0, x.shape[0], batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {n: torch.cat(p) for n, p in parts.items()}
