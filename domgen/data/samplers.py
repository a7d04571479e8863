"""Samplers: how an epoch of training batches is drawn from the pool, by name.

A sampler is built from a :class:`TrainPool` (``SAMPLERS.get(name)(pool, **options)``) and gives, for an
epoch, the list of batches as pool indices (:class:`Draw`, with any per-batch arrays the algorithm reads,
such as the pair labels), the class probabilities of what it draws (which the class weights invert), and
a ``state_dict`` that says which pool and seed it draws for. Every draw is a pure function of (seed, epoch),
so a resumed run replays its epochs exactly.

* ``uniform``: a seeded permutation of the pool, every image once per epoch (ERM, Table 2 A-E).
* ``domain_balanced``: every draw picks a domain uniformly, then one of its images (with replacement).
* ``class_balanced``: the same over the classes the pool holds.
* ``sqrt_frequency``: a class with probability proportional to sqrt(n_c), then one of its images.
* ``effective_number``: a class with probability proportional to n_c (1 - beta) / (1 - beta^{n_c}), the
  class mass Cui et al.'s class-balanced weights give the pool (beta is ``loss.beta``), then one of its images.
* ``pairs``: the CCSA pair sampler (``domgen.data.pair_sampler``): each image once as x1, its partner
  from a secondary domain; two images per sampled unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import numpy as np

from domgen.losses.weights import effective_number
from domgen.seeds import derive_seed
from domgen.registry import Registry

SAMPLERS: Registry = Registry("sampler")
NO_EXTRAS: Mapping[str, np.ndarray] = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class TrainPool:
    """The training pool an algorithm is built on: labels and domains of its N images, and the seed."""

    labels: np.ndarray  # [N] int64 class index, 0..num_classes-1
    domains: np.ndarray  # [N] int64 index into domain_names
    domain_names: tuple[str, ...]  # sorted domain codes present in the pool
    num_classes: int
    seed: int = 0
    primary: str | None = None  # the primary domain (the pair sampler's fallback source); None = none

    @classmethod
    def of(cls, labels, domains, num_classes: int, seed: int = 0, primary: str | None = None) -> "TrainPool":
        """From per-image labels [N] and domain codes [N] (strings such as ``"HAM"``)."""
        names, codes = np.unique(np.asarray(domains).astype(str), return_inverse=True)
        return cls(np.asarray(labels, dtype=np.int64).reshape(-1), codes.astype(np.int64).reshape(-1),
                   tuple(names.tolist()), int(num_classes), int(seed), primary)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def domain_labels(self) -> np.ndarray:
        """[N] domain code of every image (``"HAM"``, ...)."""
        return np.asarray(self.domain_names, dtype=str)[self.domains]

    def domain_index(self, codes) -> np.ndarray:
        """[M] index into ``domain_names`` of each domain code in ``codes``; -1 for a domain not in the pool."""
        lookup = {d: i for i, d in enumerate(self.domain_names)}
        return np.array([lookup.get(str(c), -1) for c in codes], dtype=np.int64)


class Draw(NamedTuple):
    """One training batch as indices (pool indices from a sampler, manifest positions once mapped)."""

    idx: np.ndarray  # [B'] images of the batch, in order (pairs: the B first images, then their B partners)
    extras: Mapping[str, np.ndarray] = NO_EXTRAS  # per-batch arrays for the algorithm, e.g. "positive" [B]


def chunks(order: np.ndarray, batch_size: int, drop_single: bool = True) -> list[np.ndarray]:
    """Consecutive batches; in training a trailing batch of one is dropped (BatchNorm cannot train on it)."""
    out = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_single and len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


class PoolSampler:
    """The sampler interface, with the state every sampler keeps (its seed and pool size)."""

    images_per_sample = 1  # images each sampled unit brings into a batch (the pair sampler: 2)

    def __init__(self, pool: TrainPool):
        if len(pool) == 0:
            raise ValueError("the training pool is empty")
        self.pool, self.seed = pool, pool.seed

    @classmethod
    def loss_options(cls, loss) -> dict[str, Any]:
        """Keyword arguments the sampler takes from the run's ``LossConfig`` (the effective-number beta)."""
        return {}

    def epoch_batches(self, epoch: int, batch_size: int) -> list[Draw]:
        raise NotImplementedError

    def class_probabilities(self) -> np.ndarray:
        """[K] P(a drawn image has class c)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "pool_size": len(self.pool)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["pool_size"] != len(self.pool):
            raise ValueError(f"sampler state is for seed {state['seed']} and a pool of {state['pool_size']}, not seed "
                             f"{self.seed} and {len(self.pool)}: resuming would draw different batches")


@SAMPLERS.register("uniform")
class Uniform(PoolSampler):
    """Every image once per epoch in a seeded order: ``permutation`` under ``derive_seed(seed, epoch, "order")``."""

    def epoch_batches(self, epoch: int, batch_size: int) -> list[Draw]:
        order = np.random.default_rng(derive_seed(self.seed, epoch, "order")).permutation(len(self.pool))
        return [Draw(c) for c in chunks(order, batch_size)]

    def class_probabilities(self) -> np.ndarray:
        return np.bincount(self.pool.labels, minlength=self.pool.num_classes) / len(self.pool.labels)


class Reweighted(PoolSampler):
    """N draws per epoch with replacement, image i with probability ``image_probabilities()[i]``."""

    def image_probabilities(self) -> np.ndarray:
        raise NotImplementedError

    def epoch_batches(self, epoch: int, batch_size: int) -> list[Draw]:
        rng = np.random.default_rng(derive_seed(self.seed, epoch, type(self).__name__))
        idx = rng.choice(len(self.pool), size=len(self.pool), p=self.image_probabilities())
        return [Draw(c) for c in chunks(idx, batch_size)]

    def class_probabilities(self) -> np.ndarray:
        return np.bincount(self.pool.labels, weights=self.image_probabilities(), minlength=self.pool.num_classes)


def _balanced(groups: np.ndarray) -> np.ndarray:
    """[N] probability of each image when a group is drawn uniformly, then an image within it."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


@SAMPLERS.register("domain_balanced")
class DomainBalanced(Reweighted):
    """Each domain of the pool equally often: P(image i) = 1 / (D n_{d(i)})."""

    def image_probabilities(self) -> np.ndarray:
        return _balanced(self.pool.domains)


@SAMPLERS.register("class_balanced")
class ClassBalanced(Reweighted):
    """Each class the pool holds equally often: P(image i) = 1 / (C n_{y(i)})."""

    def image_probabilities(self) -> np.ndarray:
        return _balanced(self.pool.labels)


class ClassReweighted(Reweighted):
    """A class c with probability ``class_mass(n)[c]`` (normalised over the classes the pool holds), then
    one of its images uniformly: P(image i) = P(y(i)) / n_{y(i)}, so ``class_probabilities()`` is exact."""

    def class_mass(self, counts: np.ndarray) -> np.ndarray:
        """[K] unnormalised class probabilities for class counts [K] (0 where a class has no image)."""
        raise NotImplementedError

    def image_probabilities(self) -> np.ndarray:
        n = np.bincount(self.pool.labels, minlength=self.pool.num_classes).astype(np.float64)  # [K]
        mass = np.where(n > 0, self.class_mass(n), 0.0)
        per_image = np.where(n > 0, mass / mass.sum() / np.where(n > 0, n, 1.0), 0.0)  # [K] P(one image of c)
        return per_image[self.pool.labels]


@SAMPLERS.register("sqrt_frequency")
class SqrtFrequency(ClassReweighted):
    """Square-root sampling (Mahajan et al., ECCV 2018; Kang et al., ICLR 2020, Eq. 1 with q = 1/2):
    P(class c) = sqrt(n_c) / sum_j sqrt(n_j), between the pool's frequencies (q = 1) and class balance (q = 0)."""

    def class_mass(self, counts: np.ndarray) -> np.ndarray:
        return np.sqrt(counts)


@SAMPLERS.register("effective_number")
class EffectiveNumber(ClassReweighted):
    """P(class c) proportional to n_c (1 - beta) / (1 - beta^{n_c}) = n_c / E_{n_c} (Cui et al., CVPR 2019,
    Eqs. 3 and 6): each image is drawn with probability proportional to its class's effective-number
    weight, so sampling gives the classes the mass that Cui et al.'s class-balanced loss gives them by
    weighting. beta -> 0 is the pool as it is; beta -> 1 is ``class_balanced``. beta is the run's
    ``loss.beta`` (one effective number per run): with ``loss.class_weights=effective`` the weights are
    then uniform, since the sampler already reached their target."""

    def __init__(self, pool: TrainPool, beta: float = 0.999):
        super().__init__(pool)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"the effective-number beta must lie in [0, 1), got {beta}")
        self.beta = float(beta)

    @classmethod
    def loss_options(cls, loss) -> dict[str, Any]:
        return {"beta": loss.beta}

    def class_mass(self, counts: np.ndarray) -> np.ndarray:
        return counts / np.maximum(effective_number(counts, self.beta), np.finfo(np.float64).tiny)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("beta", self.beta) != self.beta:
            raise ValueError(f"sampler state is for beta {state['beta']}, not {self.beta}: "
                             "resuming would draw different batches")
