"""Classification losses by name: ``LOSSES.get("ce")(reduction="weighted_mean")``.

Every algorithm classifies with the run's ``loss.*`` choice, built by :func:`build_loss`. A classification
loss is an ``nn.Module`` constructed as ``cls(reduction=...)`` and called as ``loss(logits [B, K], y [B],
class_w [K] or None) -> scalar``; the class weights are the inverse probabilities of the classes the
algorithm's sampler draws (:func:`class_weights`; ``loss.class_weights=effective``: by the effective
number of samples instead). A new loss is one module that registers itself here and is imported below;
its constructor takes ``reduction`` and, by name, any ``LossConfig`` fields it needs (``gamma``, ...).
Registered: ``ce``, ``label_smoothing`` (``domgen.losses.ce``), ``focal``, ``asymmetric``
(``domgen.losses.focal``), ``ldam`` (``domgen.losses.ldam``); ``loss.drw_epoch`` defers any loss's
class weights (DRW). CCSA's pairwise terms (``domgen.losses.ccsa``) are not a classification loss: the
CCSA algorithm builds them itself.

Two optional hooks let a loss see the run (the algorithm calls them on every submodule of its criterion):
``fit_counts(counts [K])`` with the training pool's class counts at build (LDAM's margins), and
``begin_epoch(epoch, epochs)`` before each epoch (deferred re-weighting).
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import torch
from torch import Tensor, nn

from domgen.registry import Registry

LOSSES: Registry = Registry("classification loss")

# Imported after LOSSES exists: each module registers its losses on import.
from domgen.losses import ce, focal, ldam  # noqa: E402,F401
from domgen.losses.ccsa import CCSALoss  # noqa: E402
from domgen.losses.ce import CLS_REDUCTIONS, CrossEntropy  # noqa: E402
from domgen.losses.ldam import DeferredReweighting  # noqa: E402
from domgen.losses.weights import (  # noqa: E402
    CLASS_WEIGHTS, WEIGHT_NORMS, effective_number, effective_number_weights, inverse_probability_weights)

REDUCTIONS = ("auto", *CLS_REDUCTIONS)


def reduction(cfg) -> str:
    """``loss.reduction``, with ``auto`` resolved as the weights' normalisation implies: the authors'
    ``max`` weights with ``nn.CrossEntropyLoss(weight=...)``'s weighted mean, domgen 0.1's ``mean``
    weights with mean(w CE)."""
    if cfg.reduction != "auto":
        return cfg.reduction
    return "weighted_mean" if cfg.weight_norm == "max" else "mean"


def loss_options(cls: type, cfg) -> dict:
    """The ``LossConfig`` fields the loss class takes by name (besides ``reduction``): focal's ``gamma``, ..."""
    taken = inspect.signature(cls).parameters
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in taken and f.name != "reduction"}


def build_loss(cfg) -> nn.Module:
    """The classification loss a ``LossConfig`` names, with its reduction and hyperparameters; wrapped in
    deferred re-weighting when ``loss.drw_epoch`` > 0."""
    cls = LOSSES.get(cfg.name)
    loss = cls(reduction=reduction(cfg), **loss_options(cls, cfg))
    drw = getattr(cfg, "drw_epoch", 0)
    return DeferredReweighting(loss, drw) if drw > 0 else loss


def fit_loss(criterion: nn.Module, counts: np.ndarray) -> None:
    """Hand the training pool's class counts [K] to every part of the criterion that asks (``fit_counts``)."""
    for module in criterion.modules():
        if hasattr(module, "fit_counts"):
            module.fit_counts(np.asarray(counts))


def loss_begin_epoch(criterion: nn.Module, epoch: int, epochs: int) -> None:
    """Tell every part of the criterion that keeps a schedule (``begin_epoch``) which epoch starts."""
    for module in criterion.modules():
        if hasattr(module, "begin_epoch"):
            module.begin_epoch(epoch, epochs)


def class_weights(cfg, p: np.ndarray, device: torch.device | str = "cpu", counts: np.ndarray | None = None) -> Tensor | None:
    """Class weights [K] float32 for class probabilities ``p`` [K], normalised by ``loss.weight_norm``;
    None when ``loss.weighted`` is off (plain cross-entropy). ``loss.class_weights``: ``inverse`` = 1 / p;
    ``effective`` = Cui et al.'s effective-number weights for a pool of ``counts`` [K] drawn with ``p``
    (``domgen.losses.weights.effective_number_weights``, ``loss.beta``)."""
    if not cfg.weighted:
        return None
    kind = getattr(cfg, "class_weights", "inverse")
    if kind == "inverse":
        w = inverse_probability_weights(p, cfg.weight_norm)
    elif kind == "effective":
        if counts is None:
            raise ValueError("effective-number class weights need the pool's class counts")
        w = effective_number_weights(p, counts, cfg.beta, cfg.weight_norm)
    else:
        raise ValueError(f"loss.class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {kind!r}")
    return torch.as_tensor(w, dtype=torch.float32, device=device)


__all__ = ["CLASS_WEIGHTS", "LOSSES", "REDUCTIONS", "WEIGHT_NORMS", "CCSALoss", "CrossEntropy", "DeferredReweighting",
           "build_loss", "class_weights", "effective_number", "effective_number_weights", "fit_loss",
           "inverse_probability_weights", "loss_begin_epoch", "loss_options", "reduction"]
