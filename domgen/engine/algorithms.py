"""Training algorithms, DomainBed-style: one small class per method with ``loss(model, batch) -> dict``.

A batch arrives already augmented on the device. ERM sees ``(x, y)``; CCSA sees pairs
``(x1, y1, x2, y2)`` drawn by ``domgen.data.pair_sampler.PairSampler``. The dict holds the
differentiable ``loss`` plus float-able components that the engine logs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from domgen.losses import LOSSES
from domgen.registry import Registry


class Algorithm(Protocol):
    paired: bool  # whether batches are pairs (x1, y1, x2, y2)

    def loss(self, model: torch.nn.Module, batch: tuple[Tensor, ...]) -> dict[str, Tensor]: ...


ALGORITHMS: Registry[type] = Registry("algorithm")


@ALGORITHMS.register("ce")
class ERM:
    """Plain (optionally class-weighted) cross-entropy on the aggregated data: experiments A-E."""

    paired = False

    def __init__(self, class_w: Tensor | None = None):
        self.class_w = class_w
        self.criterion = LOSSES.get("ce")()

    def loss(self, model, batch):
        x, y = batch
        return {"loss": self.criterion(model(x), y, self.class_w)}


@ALGORITHMS.register("ccsa")
class CCSA:
    """Weighted CCSA on pairs (Yoon et al. 2019, eqs. 1-8): one forward pass over both streams."""

    paired = True

    def __init__(self, margin: float, weights: dict[str, Tensor | None]):
        self.criterion = LOSSES.get("ccsa")(margin=margin)
        self.weights = weights  # class_w1, class_w2, pair_w (None = unweighted)

    def loss(self, model, batch):
        x1, y1, x2, y2 = batch
        logits, z = model.forward_both(torch.cat([x1, x2]))  # [2B, K], [2B, D]: BN sees both streams
        b = x1.shape[0]
        return self.criterion(logits[:b], logits[b:], z[:b].float(), z[b:].float(), y1, y2, **self.weights)
