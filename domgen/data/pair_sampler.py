"""Dynamic pair sampler for the CCSA loss, with the exact class probabilities of the pairs it draws.

Yoon, Hamarneh & Garbi, MICCAI 2019 (dynamic pair sampling and its class probabilities, eqs. 1-8): CCSA
(Motiian et al., ICCV 2017) needs labelled pairs from two domains, but the available classes vary across
domains. Each epoch every image of the
training pool D1 is the first element x1 of exactly one pair; its partner x2 comes from a secondary
(non-primary) domain s drawn with probability pi_s = N_s / sum_t N_t. With probability ``p_same`` x2 is
drawn from D_s among the images of class y1 (from the primary domain when D_s has none: the fallback),
otherwise uniformly from D_s. Because the policy is explicit, the class probabilities of both streams
and of the pair are known in closed form:

    P(y1 = i)             = n1_i / N1
    P(y2 = j | y1 = i)    = sum_s pi_s [p_same 1[i = j] + (1 - p_same) n_{s,j} / N_s]
    P(y1 = i, y2 = j)     = P(y1 = i) P(y2 = j | y1 = i)

(the fallback also gives y2 = y1, so the same-class branch always yields j = i). The weights used by the
weighted CCSA loss are their inverses, normalised to mean 1 under the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from domgen.data.labels import CLASSES, NUM_CLASSES, PRIMARY_DOMAIN


@dataclass(frozen=True, eq=False)
class PairProbabilities:
    """Exact class probabilities of one epoch of pairs (Yoon et al. 2019's sampled class probabilities)."""

    p1: np.ndarray  # [K]    P(y1 = c)
    p2: np.ndarray  # [K]    P(y2 = c)
    joint: np.ndarray  # [K, K] P(y1 = i, y2 = j)
    p_equal: float  # P(y1 == y2) = trace(joint)


def inverse_probability_weights(p: np.ndarray) -> np.ndarray:
    """w = 1 / p where p > 0 and 0 elsewhere, scaled so that sum(p * w) = 1 (Yoon et al. 2019's weighting).

    The normalisation keeps the expected weight of a sampled example at 1, so weighting changes the
    balance between classes, not the overall scale of the loss.
    """
    p = np.asarray(p, dtype=np.float64)
    w = np.zeros_like(p)
    nonzero = p > 0
    w[nonzero] = 1.0 / p[nonzero]
    return w / float((p * w).sum())


class PairSampler(Sampler):
    """Yields ``(i1, i2)`` pool indices: every image once per epoch as x1, x2 from a secondary domain.

    Args:
        labels: [N] class index (0..num_classes-1) of every image in the training pool.
        domains: [N] domain code of each image (``"HAM"``, ``"DMF"``, ...).
        primary: the primary domain; its images are x1 like any other and serve as the fallback source
            of same-class partners, but never as a secondary domain.
        p_same: probability that x2 is drawn with the class of x1.
        seed: with the epoch, fixes every draw (``numpy.random.default_rng((seed, epoch))``).
        num_classes: length of the probability and weight vectors.

    Use like ``DistributedSampler``: call :meth:`set_epoch` before each epoch. The iterator resumes from
    the stored position, so ``load_state_dict(state)`` followed by iteration yields exactly the rest of
    that epoch. Drawing an epoch is O(N) vectorised numpy: indices are pre-sorted by (domain, class), so
    a draw is an offset plus ``Generator.integers`` below the size of the chosen group.
    """

    def __init__(
        self,
        labels: np.ndarray,
        domains: np.ndarray,
        primary: str = PRIMARY_DOMAIN,
        p_same: float = 0.25,
        seed: int = 0,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        domains = np.asarray(domains).astype(str).reshape(-1)
        _check_inputs(labels, domains, p_same, num_classes)
        self.labels, self.domains = labels, domains
        self.primary, self.p_same, self.seed = primary, float(p_same), int(seed)
        self.num_classes = num_classes
        self.secondaries: tuple[str, ...] = tuple(d for d in np.unique(domains).tolist() if d != primary)
        if not self.secondaries:
            raise ValueError(
                f"the pool holds only the primary domain {primary!r}: CCSA pairs need a second domain "
                "(give the pool at least one secondary image, e.g. nsec > 0)"
            )
        self._index_groups()
        self._check_fallback()
        self.epoch, self.position = 0, 0

    # ---- precomputation --------------------------------------------------------------------------
    def _index_groups(self) -> None:
        """Sort the pool by (row, class); rows are the secondaries in order, then the primary (row S)."""
        S, K = len(self.secondaries), self.num_classes
        row_of = {d: r for r, d in enumerate(self.secondaries)}
        names, inverse = np.unique(self.domains, return_inverse=True)
        row = np.array([row_of.get(d, S) for d in names.tolist()])[inverse]  # [N] row of each image
        group = row * K + self.labels  # [N] flat (row, class) key
        self._order = np.argsort(group, kind="stable")  # [N] pool indices grouped by (row, class)
        self._counts = np.bincount(group, minlength=(S + 1) * K).reshape(S + 1, K)  # n_{r,c}
        starts = np.concatenate([[0], np.cumsum(self._counts.ravel())[:-1]])
        self._start = starts.reshape(S + 1, K)  # first position of group (r, c) in _order
        self._size = self._counts[:S].sum(axis=1)  # [S] N_s; domain s is contiguous from _start[s, 0]
        self._pi = self._size / self._size.sum()  # [S] pi_s
        # Same-class source: the secondary itself, or the primary (row S) when it lacks the class.
        self._same_row = np.where(self._counts[:S] > 0, np.arange(S)[:, None], S)  # [S, K]

    def _check_fallback(self) -> None:
        present = np.bincount(self.labels, minlength=self.num_classes) > 0
        for c in np.flatnonzero(present):
            lacking = [self.secondaries[s] for s in np.flatnonzero(self._counts[:-1, c] == 0)]
            if lacking and self._counts[-1, c] == 0:
                raise ValueError(
                    f"class {_class_name(c)!r} is in the pool but absent from secondary domain(s) "
                    f"{', '.join(lacking)} and from the primary {self.primary!r}: no same-class partner "
                    "can be drawn for it"
                )

    # ---- drawing ---------------------------------------------------------------------------------
    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole epoch: (idx1, idx2), each [N] int64 pool indices; a pure function of (seed, epoch)."""
        rng = np.random.default_rng((self.seed, int(epoch)))
        n = len(self.labels)
        idx1 = rng.permutation(n)  # every x1 exactly once, seeded order
        y1 = self.labels[idx1]
        s = rng.choice(len(self.secondaries), size=n, p=self._pi)  # [N] secondary of each pair
        same = rng.random(n) < self.p_same  # [N] same-class branch
        row = self._same_row[s, y1]  # [N] s, or the primary as fallback
        start = np.where(same, self._start[row, y1], self._start[s, 0])
        size = np.where(same, self._counts[row, y1], self._size[s])  # >= 1 by construction
        idx2 = self._order[start + rng.integers(0, size)]
        return idx1, idx2

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = int(epoch), 0

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx1, idx2 = self.epoch_pairs(self.epoch)
        if self.position >= len(idx1):  # a finished epoch iterated again starts over
            self.position = 0
        for p in range(self.position, len(idx1)):
            self.position = p + 1
            yield int(idx1[p]), int(idx2[p])

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """(epoch, position) to resume from. ``position`` defaults to the pairs yielded so far; a caller
        behind a prefetching DataLoader should pass the number of pairs it actually consumed."""
        pos = self.position if position is None else int(position)
        return {"seed": self.seed, "pool_size": len(self), "epoch": self.epoch, "position": pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["pool_size"] != len(self):
            raise ValueError(
                f"sampler state is for seed {state['seed']} and a pool of {state['pool_size']}, "
                f"not seed {self.seed} and {len(self)}: resuming would draw different pairs"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ---- exact probabilities and weights ---------------------------------------------------------
    def exact_probabilities(self) -> PairProbabilities:
        """Closed-form P(y1), P(y2), P(y1, y2) and P(y1 == y2) of the sampling policy (module docstring)."""
        K, S = self.num_classes, len(self.secondaries)
        p1 = np.bincount(self.labels, minlength=K) / len(self.labels)
        # q_j = sum_s pi_s n_{s,j} / N_s: class distribution of a uniform draw from a drawn secondary.
        q = (self._pi[:, None] * self._counts[:S] / self._size[:, None]).sum(axis=0)  # [K]
        cond = self.p_same * np.eye(K) + (1.0 - self.p_same) * q[None, :]  # [K, K] P(y2 = j | y1 = i)
        joint = p1[:, None] * cond
        return PairProbabilities(p1=p1, p2=joint.sum(axis=0), joint=joint, p_equal=float(np.trace(joint)))

    def class_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-stream classification weights (w1 [K], w2 [K]): 1 / P(y = c), mean 1 under the sampler."""
        probs = self.exact_probabilities()
        return inverse_probability_weights(probs.p1), inverse_probability_weights(probs.p2)

    def pair_weights(self) -> np.ndarray:
        """Alignment weights [K, K]: 1 / P(y1 = i, y2 = j), mean 1 under the sampler."""
        return inverse_probability_weights(self.exact_probabilities().joint)

    def loss_weights(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The weights as tensors keyed like the CCSA loss arguments: class_w1, class_w2, pair_w."""
        w1, w2 = self.class_weights()
        return {
            "class_w1": torch.as_tensor(w1, dtype=dtype),
            "class_w2": torch.as_tensor(w2, dtype=dtype),
            "pair_w": torch.as_tensor(self.pair_weights(), dtype=dtype),
        }


def _class_name(c: int) -> str:
    return CLASSES[c] if c < len(CLASSES) else str(c)


def _check_inputs(labels: np.ndarray, domains: np.ndarray, p_same: float, num_classes: int) -> None:
    if len(labels) != len(domains):
        raise ValueError(f"labels ({len(labels)}) and domains ({len(domains)}) differ in length")
    if len(labels) == 0:
        raise ValueError("the training pool is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if not 0.0 <= p_same <= 1.0:
        raise ValueError(f"p_same must lie in [0, 1], got {p_same}")
