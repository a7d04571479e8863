"""The algorithm interface: one class is the whole method (DomainBed's habit), the engine only runs it.

An algorithm declares, beside its class, its hyperparameters (``Hparams``: a frozen dataclass that extends
``domgen.config.AlgorithmConfig``, each field with a default and, via :func:`hparam`, a random-search
distribution, as DomainBed's ``hparams_registry`` does), the images each sampled unit brings
(``images_per_sample``) and whether the run should record its test features for the projector
(``shapes_features``), and the paper it follows (``reference``, shown by ``list algorithms``).
:meth:`Algorithm.build` makes its sampler and class weights from the training pool; :meth:`Algorithm.attach`
sees the model once, before the optimiser is built (a method with modules of its own, such as DANN's
discriminator, puts them in ``self.nets``, whose parameters train in the same optimiser; a method that
changes the backbone's forward pass, such as MixStyle, registers its hooks there);
:meth:`Algorithm.begin_epoch` tells it where training is (schedules such as DANN's lambda or IRM's
annealing); :meth:`Algorithm.batches` lists an epoch's batches; :meth:`Algorithm.loss` turns one device
batch into a :class:`Step`; ``state_dict``/``load_state_dict`` hold what it keeps beside the model (its
sampler's identity, ``nets``, and state such as GroupDRO's q; saved in and resumed from the run
checkpoint); :meth:`Algorithm.describe` is what the run record says about the method. The engine's one
optimiser/autocast path (``domgen.engine.loop``) does the rest.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from domgen.config import AlgorithmConfig, LossConfig, to_dict
from domgen.data import pair_sampler  # noqa: F401  (registers CCSA's "pairs" in SAMPLERS)
from domgen.data.samplers import SAMPLERS, Draw, TrainPool
from domgen.losses import LOSSES, build_loss, class_weights, fit_loss, loss_begin_epoch, loss_options
from domgen.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")
NO_TENSORS: Mapping[str, Tensor] = MappingProxyType({})


class Batch(NamedTuple):
    """One training batch on the device, augmented. Every batch carries the domain of each image."""

    x: Tensor  # [B, 3, s, s] images (pairs: the B' first images, then their partners in the same order)
    y: Tensor  # [B] class index
    domain: Tensor  # [B] int64 index into TrainPool.domain_names
    extras: Mapping[str, Tensor] = NO_TENSORS  # what the sampler adds per batch, e.g. "positive" [B'] bool


class Step(NamedTuple):
    """What :meth:`Algorithm.loss` returns for one batch."""

    loss: Tensor  # the differentiable total the engine backpropagates
    logs: Mapping[str, Tensor] = NO_TENSORS  # scalars logged as train_<name> (epoch means), besides train_loss
    # Each term's weighted contribution to ``loss`` (differentiable) and the features they are measured
    # at: the engine logs gn_<term>, the norm of d term / d features (``domgen.engine.loop``).
    terms: Mapping[str, Tensor] = NO_TENSORS
    features: Tensor | None = None


def hparam(default: Any, search: Callable[[np.random.Generator], Any] | None = None) -> Any:
    """A hyperparameter field: its default and the random-search distribution ``search(rng) -> value``
    (None: the hyperparameter is not searched)."""
    return dataclasses.field(default=default, metadata={"search": search})


def random_hparams(cls: type, seed: int) -> AlgorithmConfig:
    """``cls.Hparams`` with every searched hyperparameter drawn from its distribution (seeded)."""
    rng = np.random.default_rng(seed)
    drawn = {f.name: f.metadata["search"](rng) for f in dataclasses.fields(cls.Hparams) if f.metadata.get("search")}
    return cls.Hparams(**drawn)


class Algorithm:
    """Base class: ERM's wiring (a sampler, class weights of what it draws, no state of its own)."""

    Hparams: ClassVar[type] = AlgorithmConfig
    images_per_sample: ClassVar[int] = 1  # images per sampled unit; the sampler must agree (CCSA: pairs, 2)
    shapes_features: ClassVar[bool] = False  # True: the run writes test features to TensorBoard's projector
    reference: ClassVar[str] = ""  # the paper (and equation) it implements, one line: `list algorithms` shows it
    # Why the method cannot train a linear probe on features computed once (``regime.precompute``), as a
    # phrase: it reads the images or acts inside the backbone. "" (most): its loss sees the images only as
    # ``model.forward_both(x)``, ``model(x)`` or ``model.h(model.g(x))``, so g(x) can be computed beforehand.
    needs_backbone: ClassVar[str] = ""

    def __init__(self, hparams: AlgorithmConfig, loss: LossConfig = LossConfig(), device: torch.device | str = "cpu"):
        if type(hparams) is not self.Hparams:
            raise TypeError(f"{type(self).__name__} takes {self.Hparams.__name__}, got {type(hparams).__name__}")
        self.hparams, self.loss_cfg, self.device = hparams, loss, torch.device(device)
        self.criterion = build_loss(loss)  # the classification loss: criterion(logits, y, class_w)
        self.sampler = None
        self.nets = nn.ModuleDict()  # the algorithm's own trainable modules (see attach), empty for most
        self.epoch, self.epochs = 0, 1  # where training is (begin_epoch): 0-based epoch of how many

    # ---- declared hyperparameters ----------------------------------------------------------------
    @classmethod
    def problems(cls, hp: AlgorithmConfig) -> Iterator[tuple[str, Any, str]]:
        """(field, value, why) for each hyperparameter that cannot work; subclasses add their own."""
        if hp.sampler not in SAMPLERS:
            yield "sampler", hp.sampler, f"a registered sampler: {', '.join(SAMPLERS.names())}"
        elif (n := getattr(SAMPLERS.get(hp.sampler), "images_per_sample", 1)) != cls.images_per_sample:
            yield "sampler", hp.sampler, f"draws {n} image(s) per sample; {hp.name} needs {cls.images_per_sample}"

    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments for the sampler (the pair sampler's p_same, mode, ...)."""
        return {}

    # ---- wiring ----------------------------------------------------------------------------------
    def build(self, pool: TrainPool) -> "Algorithm":
        """Make the sampler and the class weights for this training pool, and give the criterion the pool's
        class counts (LDAM's margins; ``domgen.losses.fit_loss``); returns self."""
        sampler = SAMPLERS.get(self.hparams.sampler)
        # what the sampler takes from the loss section (the effective_number sampler's beta), then the method's
        options = getattr(sampler, "loss_options", lambda loss: {})(self.loss_cfg) | self.sampler_options()
        self.sampler = sampler(pool, **options)
        if self.sampler.images_per_sample != self.images_per_sample:
            raise ValueError(f"algorithm {self.hparams.name!r} needs {self.images_per_sample} image(s) per sample; "
                             f"sampler {self.hparams.sampler!r} draws {self.sampler.images_per_sample}")
        self.class_counts = np.bincount(pool.labels, minlength=pool.num_classes)  # [K] images of each class
        fit_loss(self.criterion, self.class_counts)
        self.fit_weights()
        return self

    def class_weights_for(self, p: np.ndarray) -> Tensor | None:
        """Class weights [K] (``loss.class_weights``: inverse or effective-number) for a stream drawing
        class c with probability ``p`` [K] from this pool; None when ``loss.weighted`` is off."""
        return class_weights(self.loss_cfg, p, self.device, counts=self.class_counts)

    def fit_weights(self) -> None:
        """The classification weights of the classes the sampler draws (inverse probabilities by default)."""
        self.class_w = self.class_weights_for(self.sampler.class_probabilities())

    def attach(self, model: nn.Module) -> None:
        """Called once with the model (already on its device), after :meth:`build` and before the optimiser
        is made from :meth:`param_groups`. Modules the method trains (a domain discriminator sized to
        ``model.h.in_features``) go into ``self.nets`` on ``self.device``; forward hooks on the backbone
        (MixStyle) are registered here. The base class needs nothing."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """What the one optimiser trains: the model's parameters, then those of ``self.nets`` (if any) as a
        second group with the same settings. A method needing other settings for its own modules
        (another learning rate) overrides this."""
        groups = [{"params": list(model.parameters())}]
        own = list(self.nets.parameters())
        return groups + ([{"params": own}] if own else [])

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (0-based ``epoch`` of ``epochs``), a resumed one included; the
        criterion's schedule (deferred re-weighting) hears of it too. An override calls super()."""
        self.epoch, self.epochs = epoch, epochs
        loss_begin_epoch(self.criterion, epoch, epochs)

    def batches(self, epoch: int, batch_size: int) -> list[Draw]:
        """The epoch's batches as pool indices; ``batch_size`` counts sampled units (CCSA: pairs)."""
        return self.sampler.epoch_batches(epoch, batch_size)

    def loss(self, model: nn.Module, batch: Batch) -> Step:
        """The loss on one batch (ERM: the classification loss on the batch as drawn)."""
        loss = self.criterion(model(batch.x), batch.y, self.class_w)
        return Step(loss)

    # ---- state and record ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the algorithm keeps beside the model: which sampler state it draws from and, when it has
        any, its own modules. Subclasses with state of their own (GroupDRO's q) add to this dict; every
        value must survive ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts)."""
        state: dict[str, Any] = {"sampler": self.sampler.state_dict()}
        if len(self.nets):
            state["nets"] = self.nets.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if len(self.nets):
            self.nets.load_state_dict(state["nets"])

    def describe(self) -> dict[str, Any]:
        """The method as the run record states it: the algorithm's hyperparameters and the loss's options;
        the imbalance keys (the loss's own hyperparameters such as focal's gamma, the kind of class weights,
        beta when they are effective-number weights, a DRW epoch) as ``loss_<key>``."""
        loss = self.loss_cfg
        own = loss_options(LOSSES.get(loss.name), loss) | {"class_weights": loss.class_weights}
        own |= ({"beta": loss.beta} if loss.class_weights == "effective" else {}) | (
            {"drw_epoch": loss.drw_epoch} if loss.drw_epoch else {})
        return ({"algorithm": self.hparams.name} | {k: v for k, v in to_dict(self.hparams).items() if k != "name"}
                | {"loss": loss.name, "weighted_cls": loss.weighted, "weight_norm": loss.weight_norm, "reduction": loss.reduction}
                | {f"loss_{k}": v for k, v in own.items()})


def make_algorithm(hparams: AlgorithmConfig, loss: LossConfig = LossConfig(), device: torch.device | str = "cpu") -> Algorithm:
    """The registered algorithm ``hparams.name``, not yet built on a pool."""
    return ALGORITHMS.get(hparams.name)(hparams, loss, device)


def images_per_sample(hparams: AlgorithmConfig) -> int:
    """Images each sampled unit of the named algorithm brings (what a run's cost scales with)."""
    return ALGORITHMS.get(hparams.name).images_per_sample
