"""Dynamic pair sampler for the CCSA loss, with the exact class probabilities of the pairs it draws.

Yoon, Hamarneh & Garbi, MICCAI 2019 (dynamic pair sampling and its class probabilities, eqs. 1-8): CCSA
(Motiian et al., ICCV 2017) needs labelled pairs from two domains, but the available classes vary across
domains. Each epoch every image of the training pool D1 is the first element x1 of exactly one pair; its
partner x2 comes from a secondary (non-primary) domain s drawn with probability pi_s = N_s / sum_t N_t.
With probability ``p_same`` (0.25, as Motiian et al. fix the share of positive pairs) the pair is a
*positive*: x2 is drawn from D_s among the images of class y1 (from the primary domain when D_s has none:
the fallback). Otherwise it is a *negative*, drawn by one of three policies (``mode``):

* ``exclusive`` (default; the paper's text and Motiian's pairs, negatives strictly of another class):
  x2 is uniform over the images of D_s whose class is not y1. When D_s has no other class (UDA holds nv
  and mel only), the secondary is redrawn among those that do (pi restricted and renormalised), else
  x2 comes from the primary. P(y1 == y2) = p_same exactly.
* ``branch`` (the authors' released code, chrisjmyoon/iccsa ``datasets/toy.py``): x2 uniform over D_s,
  and the pair is *labelled by the branch*, not by class, so exactly p_same of the pairs are treated as
  positives and a same-class negative is pushed apart.
* ``uniform`` (domgen 0.1): x2 uniform over D_s, the pair labelled by class equality; P(y1 == y2) is then
  0.42 at nsec = 1..5 and 0.72 at nsec = a on Table 1's counts.

``exclude_own_domain`` draws D_s among the secondaries other than x1's own (the primary when none is
left): at nsec = a a quarter of the pairs would otherwise be same-domain pairs, which align nothing.

Because the policy is explicit, the class probabilities are known in closed form. With r1 the domain of
x1, b(s | r1) the distribution of the partner's source (rows: the secondaries, then the primary),

    P(y1 = i)                 = n1_i / N1
    P(y2 = j | y1 = i, r1)    = p_same 1[i = j] + (1 - p_same) sum_r neg(r | r1, i) q_r(j | i)
    P(y1 = i, y2 = j)         = sum_r1 n_{r1,i} / N1  P(y2 = j | y1 = i, r1)

with q_r(j | i) = n_{r,j} / N_r (uniform, branch) or n_{r,j} 1[j != i] / (N_r - n_{r,i}) (exclusive).
The weights of the weighted CCSA loss are their inverses (``inverse_probability_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from domgen.data.labels import CLASSES, NUM_CLASSES, PRIMARY_DOMAIN
from domgen.data.samplers import SAMPLERS, Draw, TrainPool, chunks
from domgen.losses.weights import WEIGHT_NORMS, inverse_probability_weights  # noqa: F401 (WEIGHT_NORMS: re-exported)

PAIR_MODES = ("exclusive", "branch", "uniform")


@dataclass(frozen=True, eq=False)
class PairProbabilities:
    """Exact class probabilities of one epoch of pairs (Yoon et al. 2019's sampled class probabilities)."""

    p1: np.ndarray  # [K]    P(y1 = c)
    p2: np.ndarray  # [K]    P(y2 = c)
    joint: np.ndarray  # [K, K] P(y1 = i, y2 = j)
    p_equal: float  # P(y1 == y2) = trace(joint)
    p_positive: float  # P(the pair is labelled positive): p_same in exclusive and branch modes
    p_same_domain: float  # P(x2 comes from x1's own domain)


class Pairs(NamedTuple):
    """One epoch of pairs: pool indices of x1 and x2, and the label the loss uses (True = positive)."""

    idx1: np.ndarray  # [N] int64
    idx2: np.ndarray  # [N] int64
    positive: np.ndarray  # [N] bool: the branch flag (branch mode) or y1 == y2


class PairSampler(Sampler):
    """Yields ``(i1, i2)`` pool indices: every image once per epoch as x1, x2 from a secondary domain.

    Args:
        labels: [N] class index (0..num_classes-1) of every image in the training pool.
        domains: [N] domain code of each image (``"HAM"``, ``"DMF"``, ...).
        primary: the primary domain; its images are x1 like any other and serve as the fallback source
            of partners, but never as a secondary domain.
        p_same: probability of a positive pair (0.25 in the paper, after Motiian et al.).
        seed: with the epoch, fixes every draw (``numpy.random.default_rng((seed, epoch))``).
        num_classes: length of the probability and weight vectors.
        mode: how negatives are drawn and pairs labelled: ``exclusive``, ``branch`` or ``uniform``
            (module docstring).
        exclude_own_domain: draw x2's secondary among those other than x1's domain.

    Use like ``DistributedSampler``: call :meth:`set_epoch` before each epoch. The iterator resumes from
    the stored position, so ``load_state_dict(state)`` followed by iteration yields exactly the rest of
    that epoch. Drawing an epoch is O(N) vectorised numpy: indices are pre-sorted by (domain, class), so
    a draw is a source row from a small table, an offset and ``Generator.integers`` below a group size.
    """

    images_per_sample = 2  # x1 and its partner: a batch of B pairs holds 2B images

    def __init__(
        self,
        labels: np.ndarray,
        domains: np.ndarray,
        primary: str = PRIMARY_DOMAIN,
        p_same: float = 0.25,
        seed: int = 0,
        num_classes: int = NUM_CLASSES,
        mode: str = "exclusive",
        exclude_own_domain: bool = False,
    ):
        super().__init__()
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        domains = np.asarray(domains).astype(str).reshape(-1)
        _check_inputs(labels, domains, p_same, num_classes, mode)
        self.labels, self.domains = labels, domains
        self.primary, self.p_same, self.seed = primary, float(p_same), int(seed)
        self.num_classes, self.mode, self.exclude_own_domain = num_classes, mode, bool(exclude_own_domain)
        self.secondaries: tuple[str, ...] = tuple(d for d in np.unique(domains).tolist() if d != primary)
        if not self.secondaries:
            raise ValueError(
                f"the pool holds only the primary domain {primary!r}: CCSA pairs need a second domain "
                "(give the pool at least one secondary image, e.g. nsec > 0)"
            )
        self._index_groups()
        self._pos, self._neg = self._source_tables()
        self._check_sources()
        self._pos_cdf, self._neg_cdf = _cdf(self._pos), _cdf(self._neg)
        self.epoch, self.position = 0, 0

    # ---- precomputation --------------------------------------------------------------------------
    def _index_groups(self) -> None:
        """Sort the pool by (row, class); rows are the secondaries in order, then the primary (row S)."""
        S, K = len(self.secondaries), self.num_classes
        row_of = {d: r for r, d in enumerate(self.secondaries)}
        names, inverse = np.unique(self.domains, return_inverse=True)
        self._row = np.array([row_of.get(d, S) for d in names.tolist()])[inverse]  # [N] row of each image
        group = self._row * K + self.labels  # [N] flat (row, class) key
        self._order = np.argsort(group, kind="stable")  # [N] pool indices grouped by (row, class)
        self._counts = np.bincount(group, minlength=(S + 1) * K).reshape(S + 1, K)  # n_{r,c}
        starts = np.concatenate([[0], np.cumsum(self._counts.ravel())[:-1]])
        self._start = starts.reshape(S + 1, K)  # first position of group (r, c) in _order
        self._size = self._counts.sum(axis=1)  # [S + 1] N_r; row r is contiguous from _start[r, 0]
        self._pi = self._size[:S] / self._size[:S].sum()  # [S] pi_s

    def _source_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """P(partner's row | x1's row, y1) for the positive and the negative branch: [S+1, K, S+1] each."""
        S, K = len(self.secondaries), self.num_classes
        base = np.zeros((S + 1, S + 1))  # b(r | r1): the drawn secondary before any class rule
        base[:, :S] = self._pi
        if self.exclude_own_domain:
            for r1 in range(S):
                base[r1, r1] = 0.0
                total = base[r1].sum()
                base[r1] = base[r1] / total if total > 0 else np.eye(S + 1)[S]  # none left: the primary
        pos = np.repeat(base[:, None, :], K, axis=1)  # [S+1, K, S+1]
        lacking = np.zeros((K, S + 1), dtype=bool)
        lacking[:, :S] = (self._counts[:S] == 0).T  # secondary s lacks class i: fall back to the primary
        pos[:, :, S] += (pos * lacking[None]).sum(axis=2)
        pos[:, :, :S] *= ~lacking[None, :, :S]
        neg = np.repeat(base[:, None, :], K, axis=1)
        if self.mode == "exclusive":
            other = (self._size[None, :] - self._counts.T) > 0  # [K, S+1] row r has a class other than i
            neg = neg * other[None]
            total = neg.sum(axis=2, keepdims=True)
            neg = np.where(total > 0, neg / np.where(total > 0, total, 1.0), np.eye(S + 1)[S])
        return pos, neg

    def _check_sources(self) -> None:
        """Every (x1 row, class) that occurs can draw a partner in both branches."""
        S = len(self.secondaries)
        other_in_primary = self._size[S] - self._counts[S] if self.mode == "exclusive" else np.full(self.num_classes, self._size[S])
        for r1, c in zip(*np.nonzero(self._counts)):
            if self._pos[r1, c, S] > 0 and self._counts[S, c] == 0:
                lacking = [self.secondaries[s] for s in np.flatnonzero(self._counts[:S, c] == 0)]
                raise ValueError(
                    f"class {_class_name(c)!r} is in the pool but absent from secondary domain(s) "
                    f"{', '.join(lacking) or 'left after excluding its own'} and from the primary "
                    f"{self.primary!r}: no same-class partner can be drawn for it"
                )
            if self.p_same < 1 and self._neg[r1, c, S] > 0 and other_in_primary[c] == 0:
                raise ValueError(
                    f"no negative partner can be drawn for class {_class_name(c)!r}: no secondary domain "
                    f"and not the primary {self.primary!r} holds another class"
                )

    # ---- drawing ---------------------------------------------------------------------------------
    def epoch_draw(self, epoch: int) -> Pairs:
        """The whole epoch as :class:`Pairs`; a pure function of (seed, epoch)."""
        rng = np.random.default_rng((self.seed, int(epoch)))
        n, S = len(self.labels), len(self.secondaries)
        idx1 = rng.permutation(n)  # every x1 exactly once, seeded order
        y1, r1 = self.labels[idx1], self._row[idx1]
        branch = rng.random(n) < self.p_same  # [N] positive branch
        u = rng.random(n)
        cdf = np.where(branch[:, None], self._pos_cdf[r1, y1], self._neg_cdf[r1, y1])  # [N, S+1]
        row = np.minimum((u[:, None] >= cdf).sum(axis=1), S)  # [N] partner's row
        n_same = self._counts[row, y1]
        exclusive = self.mode == "exclusive"
        size = np.where(branch, n_same, self._size[row] - (n_same if exclusive else 0))  # >= 1 by construction
        k = rng.integers(0, np.maximum(size, 1))
        if exclusive:  # skip over class y1's block inside the row
            k = np.where(~branch & (k >= self._start[row, y1] - self._start[row, 0]), k + n_same, k)
        idx2 = self._order[np.where(branch, self._start[row, y1], self._start[row, 0]) + k]
        positive = branch if self.mode == "branch" else self.labels[idx2] == y1
        return Pairs(idx1, idx2, positive)

    def epoch_batches(self, epoch: int, batch_size: int) -> list[Draw]:
        """The epoch's pairs in batches of ``batch_size`` pairs (the sampler interface of
        ``domgen.data.samplers``): each batch's indices are its x1s, then their partners, so that one
        forward pass sees both streams; the pair labels [B] are ``extras["positive"]``."""
        pairs = self.epoch_draw(epoch)
        parts = zip(chunks(pairs.idx1, batch_size), chunks(pairs.idx2, batch_size), chunks(pairs.positive, batch_size))
        return [Draw(np.concatenate([a, b]), {"positive": pos}) for a, b, pos in parts]

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(idx1, idx2) of :meth:`epoch_draw`, each [N] int64 pool indices."""
        pairs = self.epoch_draw(epoch)
        return pairs.idx1, pairs.idx2

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
        """Closed-form P(y1), P(y2), P(y1, y2), P(y1 == y2), P(positive), P(same domain) (module docstring)."""
        K, N = self.num_classes, len(self.labels)
        n, size = self._counts.astype(np.float64), self._size.astype(np.float64)  # [S+1, K], [S+1]
        eye = np.eye(K, dtype=bool)
        if self.mode == "exclusive":  # q[r, i, j] = n_{r,j} [j != i] / (N_r - n_{r,i})
            denom = size[:, None] - n  # [S+1, K]
            q = np.where(eye[None], 0.0, n[:, None, :]) / np.where(denom > 0, denom, 1.0)[:, :, None]
        else:  # q[r, i, j] = n_{r,j} / N_r for every i
            q = np.repeat((n / np.where(size > 0, size, 1.0)[:, None])[:, None, :], K, axis=1)
        neg_q = np.einsum("aic,cij->aij", self._neg, q)  # [S+1, K, K] P(y2 = j | negative, r1, i)
        cond = self.p_same * eye[None] + (1.0 - self.p_same) * neg_q
        w1 = n / N  # [S+1, K] P(r1, y1 = i)
        joint = np.einsum("ai,aij->ij", w1, cond)
        p_equal = float(np.trace(joint))
        rows = np.arange(len(size))
        own = self.p_same * self._pos[rows, :, rows] + (1.0 - self.p_same) * self._neg[rows, :, rows]  # [S+1, K]
        return PairProbabilities(
            p1=joint.sum(axis=1), p2=joint.sum(axis=0), joint=joint, p_equal=p_equal,
            p_positive=p_equal if self.mode == "uniform" else self.p_same,
            p_same_domain=float((w1 * own).sum()),
        )

    def class_weights(self, norm: str = "max") -> tuple[np.ndarray, np.ndarray]:
        """Per-stream classification weights (w1 [K], w2 [K]): 1 / P(y = c), normalised by ``norm``."""
        probs = self.exact_probabilities()
        return inverse_probability_weights(probs.p1, norm), inverse_probability_weights(probs.p2, norm)

    def pair_weights(self, norm: str = "max") -> np.ndarray:
        """Alignment weights [K, K]: 1 / P(y1 = i, y2 = j), normalised by ``norm``."""
        return inverse_probability_weights(self.exact_probabilities().joint, norm)

    def class_probabilities(self) -> np.ndarray:
        """[K] P(y = c) of a drawn image, over both streams (the sampler interface)."""
        probs = self.exact_probabilities()
        return (probs.p1 + probs.p2) / 2

    def loss_weights(self, norm: str = "max", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The weights as tensors keyed like the CCSA loss arguments: class_w1, class_w2, pair_w."""
        w1, w2 = self.class_weights(norm)
        return {
            "class_w1": torch.as_tensor(w1, dtype=dtype),
            "class_w2": torch.as_tensor(w2, dtype=dtype),
            "pair_w": torch.as_tensor(self.pair_weights(norm), dtype=dtype),
        }


@SAMPLERS.register("pairs")
class PoolPairSampler(PairSampler):
    """The pair sampler as the sampler family builds it: from a training pool, seeded by the pool's seed."""

    def __init__(self, pool: TrainPool, p_same: float = 0.25, mode: str = "exclusive", exclude_own_domain: bool = False):
        super().__init__(pool.labels, pool.domain_labels, primary=pool.primary, p_same=p_same, seed=pool.seed,
                         num_classes=pool.num_classes, mode=mode, exclude_own_domain=exclude_own_domain)


def _cdf(table: np.ndarray) -> np.ndarray:
    """Cumulative sums over the last axis, the last entry exactly 1 so a uniform draw never passes it."""
    cdf = np.cumsum(table, axis=-1)
    cdf[..., -1] = 1.0
    return cdf


def _class_name(c: int) -> str:
    return CLASSES[c] if c < len(CLASSES) else str(c)


def _check_inputs(labels: np.ndarray, domains: np.ndarray, p_same: float, num_classes: int, mode: str) -> None:
    if len(labels) != len(domains):
        raise ValueError(f"labels ({len(labels)}) and domains ({len(domains)}) differ in length")
    if len(labels) == 0:
        raise ValueError("the training pool is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    if not 0.0 <= p_same <= 1.0:
        raise ValueError(f"p_same must lie in [0, 1], got {p_same}")
    if mode not in PAIR_MODES:
        raise ValueError(f"pair mode must be one of {', '.join(PAIR_MODES)}, got {mode!r}")
