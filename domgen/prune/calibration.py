"""Which images DCP calibrates on: a seeded sample of the training pool, stratified by (domain, class).

DCP (Zhuang et al., NeurIPS 2018) selects channels on a subset of the training data. Taking the first
``batches x batch_size`` images in manifest order would see only the sources listed first (on the real
data at nsec = a: Derm7pt and a little Dermofit, no HAM at all), so the selection would reconstruct and
discriminate the wrong distribution. Here each (domain, class) stratum gets its share of the sample in
proportion to its share of the pool, by largest remainders (Hamilton's method, ties broken at random:
the rule sklearn's ``StratifiedShuffleSplit`` applies to classes), and its images are drawn without
replacement. The sample is returned shuffled, so every batch mixes the strata.
"""

from __future__ import annotations

import numpy as np


def stratified_sample(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions (into ``strata``) of ``n`` items, each stratum represented in proportion to its size.

    ``strata``: one key per item (e.g. ``"HAM/nv"``). A stratum of size c gets floor(n c / N) items,
    plus one for the ``n - sum(floors)`` strata with the largest remainders. ``n >= N`` returns every
    item, shuffled."""
    strata = np.asarray(strata)
    total = len(strata)
    rng = np.random.default_rng(seed)
    if n >= total:
        return rng.permutation(total)
    if n <= 0:
        raise ValueError(f"calibration sample size must be positive, got {n}")
    keys, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = n * counts / total
    take = np.floor(quota).astype(np.int64)
    remainder = quota - take
    # Largest remainders first; a random key breaks ties (lexsort: last key is the primary one).
    order = np.lexsort((rng.random(len(keys)), -remainder))
    take[order[: n - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == k), size=int(t), replace=False) for k, t in enumerate(take) if t]
    return rng.permutation(np.concatenate(chosen))
