"""Classification losses by name: ``LOSSES.get("ce")(reduction="weighted_mean")``.

Every algorithm classifies with the run's ``loss.*`` choice, built by :func:`build_loss`. A classification
loss is an ``nn.Module`` constructed as ``cls(reduction=...)`` and called as ``loss(logits [B, K], y [B],
class_w [K] or None) -> scalar``; the class weights are the inverse probabilities of the classes the
algorithm's sampler draws (:func:`class_weights`). A new loss (focal, class-balanced, ...) is one module
that registers itself here and is imported below. CCSA's pairwise terms (``domgen.losses.ccsa``) are not
a classification loss: the CCSA algorithm builds them itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from domgen.registry import Registry

LOSSES: Registry = Registry("classification loss")

# Imported after LOSSES exists: each module registers its losses on import.
from domgen.losses import ce  # noqa: E402,F401
from domgen.losses.ccsa import CCSALoss  # noqa: E402
from domgen.losses.ce import CLS_REDUCTIONS, CrossEntropy  # noqa: E402
from domgen.losses.weights import WEIGHT_NORMS, inverse_probability_weights  # noqa: E402

REDUCTIONS = ("auto", *CLS_REDUCTIONS)


def reduction(cfg) -> str:
    """``loss.reduction``, with ``auto`` resolved as the weights' normalisation implies: the authors'
    ``max`` weights with ``nn.CrossEntropyLoss(weight=...)``'s weighted mean, domgen 0.1's ``mean``
    weights with mean(w CE)."""
    if cfg.reduction != "auto":
        return cfg.reduction
    return "weighted_mean" if cfg.weight_norm == "max" else "mean"


def build_loss(cfg) -> nn.Module:
    """The classification loss a ``LossConfig`` names, with its reduction."""
    return LOSSES.get(cfg.name)(reduction=reduction(cfg))


def class_weights(cfg, p: np.ndarray, device: torch.device | str = "cpu") -> Tensor | None:
    """Class weights [K] float32 for class probabilities ``p`` [K], normalised by ``loss.weight_norm``;
    None when ``loss.weighted`` is off (plain cross-entropy)."""
    if not cfg.weighted:
        return None
    return torch.as_tensor(inverse_probability_weights(p, cfg.weight_norm), dtype=torch.float32, device=device)


__all__ = ["LOSSES", "REDUCTIONS", "WEIGHT_NORMS", "CCSALoss", "CrossEntropy", "build_loss", "class_weights",
           "inverse_probability_weights", "reduction"]
