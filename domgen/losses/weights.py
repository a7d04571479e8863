"""Inverse-probability weights: the class (and class-pair) weights of Yoon, Hamarneh & Garbi (MICCAI 2019).

Every weight in a run is 1 / P(what the sampler draws), normalised one of two ways (``loss.weight_norm``);
the probabilities come from the algorithm's sampler (``domgen.data.samplers``, ``domgen.data.pair_sampler``).
"""

from __future__ import annotations

import numpy as np

WEIGHT_NORMS = ("max", "mean")


def inverse_probability_weights(p: np.ndarray, norm: str = "max") -> np.ndarray:
    """Inverse-probability weights w = 1 / p, normalised.

    ``max`` (the authors' code, chrisjmyoon/iccsa ``agents/base.py::_get_cb``): ``cb = sum / count``
    divided by its maximum, so the rarest class (or class pair) has weight 1 and the common ones less;
    a class never drawn takes the rarest one's weight (the code replaces a zero count by the smallest
    nonzero one), which never matters since it never occurs. ``mean`` (domgen 0.1): w = 1 / p scaled so
    that sum(p * w) = 1, the expected weight of a drawn example; a class never drawn gets 0.
    """
    if norm not in WEIGHT_NORMS:
        raise ValueError(f"weight normalisation must be one of {', '.join(WEIGHT_NORMS)}, got {norm!r}")
    p = np.asarray(p, dtype=np.float64)
    nonzero = p > 0
    if not nonzero.any():
        raise ValueError("every probability is zero: nothing to weight")
    if norm == "max":
        return np.where(nonzero, p[nonzero].min() / np.where(nonzero, p, 1.0), 1.0)
    w = np.zeros_like(p)
    w[nonzero] = 1.0 / p[nonzero]
    return w / float((p * w).sum())


CLASS_WEIGHTS = ("inverse", "effective")


def effective_number(counts: np.ndarray, beta: float) -> np.ndarray:
    """Cui et al. (CVPR 2019, Eq. 3): E_n = (1 - beta^n) / (1 - beta), the expected volume of n samples.

    beta = 0 gives E_n = 1 for every n > 0 (and 0 for n = 0); beta -> 1 gives E_n -> n. Computed as
    -expm1(n log beta) / (1 - beta) so that beta close to 1 keeps its precision."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"the effective-number beta must lie in [0, 1), got {beta}")
    n = np.asarray(counts, dtype=np.float64)
    if beta == 0.0:
        return (n > 0).astype(np.float64)
    return -np.expm1(n * np.log(beta)) / (1.0 - beta)


def effective_number_weights(p: np.ndarray, counts: np.ndarray, beta: float, norm: str = "max") -> np.ndarray:
    """Class weights [K] by the effective number of samples (Cui et al., CVPR 2019, Eq. 6), for a sampler
    drawing class c with probability ``p`` [K] from a pool holding ``counts`` [K] images of each class.

    Cui et al. weight class c by (1 - beta) / (1 - beta^{n_c}) = 1 / E_{n_c} under the pool's own
    frequencies, which gives the classes the target mass q_c proportional to n_c / E_{n_c}. Under another
    sampler the weight that reaches the same target is q_c / p_c, so with the ``uniform`` sampler
    (p_c = n_c / N) this is exactly Cui's 1 / E_{n_c}; with the ``effective_number`` sampler (same beta)
    it is uniform. beta -> 1 gives q uniform, i.e. :func:`inverse_probability_weights`; beta = 0 gives
    q = the pool's frequencies (no correction under the uniform sampler). Normalised like the inverse
    weights: ``max`` puts the largest weight at 1 (a class never drawn takes 1), ``mean`` makes
    sum(p * w) = sum(q) = 1 (a class never drawn gets 0).
    """
    if norm not in WEIGHT_NORMS:
        raise ValueError(f"weight normalisation must be one of {', '.join(WEIGHT_NORMS)}, got {norm!r}")
    p, n = np.asarray(p, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if p.shape != n.shape:
        raise ValueError(f"class probabilities {p.shape} and class counts {n.shape} disagree")
    drawn = (p > 0) & (n > 0)
    if not drawn.any():
        raise ValueError("no class is both drawn and held by the pool: nothing to weight")
    q = np.zeros_like(p)
    q[drawn] = n[drawn] / effective_number(n[drawn], beta)
    q /= q.sum()
    w = np.zeros_like(p)
    w[drawn] = q[drawn] / p[drawn]
    if norm == "max":
        return np.where(drawn, w / w[drawn].max(), 1.0)
    return w  # sum(p w) = sum(q) = 1 already
