"""Training algorithms, DomainBed-style: one small class per method with ``loss(model, batch) -> dict``.

A batch arrives already augmented on the device. ERM sees ``(x, y)``; CCSA sees pairs
``(x1, y1, x2, y2, positive)`` drawn by ``domgen.data.pair_sampler.PairSampler``. The dict holds the
differentiable ``loss`` plus float-able components that the engine logs.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from domgen.config import LossConfig
from domgen.data.labels import NUM_CLASSES
from domgen.data.pair_sampler import PairSampler, inverse_probability_weights
from domgen.losses import LOSSES
from domgen.registry import Registry


class Algorithm(Protocol):
    paired: bool  # whether batches are pairs (x1, y1, x2, y2, positive)

    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, ...]) -> dict[str, Tensor]: ...


ALGORITHMS: Registry[type] = Registry("algorithm")


@ALGORITHMS.register("ce")
class ERM:
    """Cross-entropy on the aggregated data, class-weighted by default (Table 2's "w" for A-E)."""

    paired = False

    def __init__(self, class_w: Tensor | None = None, cls_reduction: str = "weighted_mean"):
        self.class_w = class_w
        self.criterion = LOSSES.get("ce")(reduction=cls_reduction)

    def loss(self, model, batch):
        x, y = batch
        return {"loss": self.criterion(model(x), y, self.class_w)}


def feature_grad_norms(terms: dict[str, Tensor], z: Tensor) -> dict[str, Tensor]:
    """``gn_<name>``: the norm of d term / d z over the batch, for each term's contribution to the loss.

    Each gradient stops at the features, so it costs a backward pass through the head only. It shows
    which term drives the backbone: a separation term whose gradient is 100x the classification's
    will move the features for its own sake.
    """
    out = {}
    for name, term in terms.items():
        (g,) = torch.autograd.grad(term, z, retain_graph=True, allow_unused=True)
        out[f"gn_{name}"] = torch.zeros((), device=z.device) if g is None else torch.linalg.vector_norm(g.float()).detach()
    return out


@ALGORITHMS.register("ccsa")
class CCSA:
    """Weighted CCSA on pairs (Yoon et al. 2019, eqs. 1-8): one forward pass over both streams."""

    paired = True

    def __init__(self, margin: float, weights: dict[str, Tensor | None], alpha: float = 0.1,
                 cls_reduction: str = "weighted_mean", grad_norms: bool = True):
        self.criterion = LOSSES.get("ccsa")(margin=margin, alpha=alpha, cls_reduction=cls_reduction)
        self.weights = weights  # class_w1, class_w2, pair_w (None = unweighted)
        self.grad_norms = grad_norms

    def loss(self, model, batch):
        x1, y1, x2, y2, positive = batch
        logits, z = model.forward_both(torch.cat([x1, x2]))  # [2B, K], [2B, D]: BN sees both streams
        b = x1.shape[0]
        zf = z.float()
        out = self.criterion(logits[:b], logits[b:], zf[:b], zf[b:], y1, y2, **self.weights, positive=positive)
        if self.grad_norms and torch.is_grad_enabled() and z.requires_grad:
            a = self.criterion.alpha
            out |= feature_grad_norms({"cls": (1 - a) * out["cls"], "align": a * out["align"], "sep": a * out["sep"]}, z)
        return out


def cls_reduction(norm: str) -> str:
    """The cross-entropy that goes with a weight normalisation: the authors' ``max`` weights with
    ``nn.CrossEntropyLoss(weight=...)``'s weighted mean, domgen 0.1's ``mean`` weights with mean(w CE)."""
    return "weighted_mean" if norm == "max" else "mean"


def make_sampler(loss: LossConfig, labels: np.ndarray, domains: np.ndarray, seed: int, num_classes: int = NUM_CLASSES) -> PairSampler:
    """The CCSA pair sampler over a training pool (labels and domains [N]) as the loss config asks."""
    return PairSampler(labels, domains, p_same=loss.p_same, seed=seed, num_classes=num_classes,
                       mode=loss.pairs, exclude_own_domain=loss.exclude_own_domain)


def make_algorithm(loss: LossConfig, labels: np.ndarray, domains: np.ndarray, seed: int, device: torch.device,
                   num_classes: int = NUM_CLASSES) -> tuple[PairSampler | None, Algorithm]:
    """(sampler or None, algorithm) for a training pool: ERM weighted by the pool's inverse class
    frequencies, or CCSA weighted by its pair sampler's exact inverse class probabilities."""
    reduction = cls_reduction(loss.weight_norm)
    if loss.name == "ce":
        p = np.bincount(labels, minlength=num_classes) / len(labels)
        w = torch.as_tensor(inverse_probability_weights(p, loss.weight_norm), dtype=torch.float32, device=device)
        return None, ALGORITHMS.get("ce")(class_w=w if loss.weighted_cls else None, cls_reduction=reduction)
    sampler = make_sampler(loss, labels, domains, seed, num_classes)
    w = {k: v.to(device) for k, v in sampler.loss_weights(loss.weight_norm).items()}
    weights = {
        "class_w1": w["class_w1"] if loss.weighted_cls else None,
        "class_w2": w["class_w2"] if loss.weighted_cls else None,
        "pair_w": w["pair_w"] if loss.weighted_align else None,
    }
    algorithm = ALGORITHMS.get(loss.name)(margin=loss.margin, weights=weights, alpha=loss.alpha, cls_reduction=reduction)
    return sampler, algorithm
