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
