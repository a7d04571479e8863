"""Per-case files a run keeps beside its metrics: the training subsample evaluated each epoch, and the
final test predictions that bootstrap intervals (``domgen.results.bootstrap``) are computed from.

``test_predictions.npz`` (written at final evaluation, test split of every domain, one row per case):
``case`` (the manifest's image_id, else its path), ``group`` (patient or lesion: the unit the splits keep
together, so the unit a bootstrap resamples), ``domain``, ``label`` (int, index into ``classes``),
``probs`` (float32, N x K) and ``classes``. Strings are stored as fixed-width unicode, so the file loads
with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from domgen.atomic import atomic_path

TEST_PREDICTIONS = "test_predictions.npz"


def stratified_subsample(domains: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` positions of ``domains`` (sorted), spread over the domains as evenly as their sizes
    allow: each domain gets an equal share, and a domain smaller than its share gives the rest to the
    others (water-filling), so the small secondary domains are not drowned by the primary one. Which
    positions within a domain: a permutation from ``seed`` alone, so the subsample is the same every epoch
    and after a resume."""
    domains = np.asarray(domains).astype(str)
    names, counts = np.unique(domains, return_counts=True)
    quota = np.zeros(len(names), dtype=np.int64)
    left, open_ = min(n, len(domains)), np.ones(len(names), dtype=bool)
    while left > 0 and open_.any():  # each round: an equal share of what is left among unfilled domains
        share = max(left // int(open_.sum()), 1)
        for i in np.flatnonzero(open_):
            take = min(share, counts[i] - quota[i], left)
            quota[i] += take
            left -= take
            open_[i] = quota[i] < counts[i]
            if left == 0:
                break
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(domains == d))[:q] for d, q in zip(names, quota)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def save_test_predictions(run_dir: Path, manifest: Any, positions: np.ndarray, labels: np.ndarray,
                          probs: np.ndarray, classes: list[str]) -> Path:
    """Write the test rows among ``positions`` (manifest positions, in the order of ``labels``/``probs``)."""
    m = manifest.iloc[positions]
    test = (m["split"] == "test").to_numpy()
    m = m[test]
    case = m["image_id"] if "image_id" in m.columns else m["path"]
    path = Path(run_dir) / TEST_PREDICTIONS
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, case=case.astype(str).to_numpy(dtype=str), group=m["group"].astype(str).to_numpy(dtype=str),
                            domain=m["domain"].astype(str).to_numpy(dtype=str), label=np.asarray(labels)[test].astype(np.int64),
                            probs=np.asarray(probs)[test].astype(np.float32), classes=np.asarray(classes, dtype=str))
    return path


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
