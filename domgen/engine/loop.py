"""One epoch of training and one pass of prediction: pure functions over iterables of device batches."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import numpy as np
import torch
from torch import nn


def autocast(device: torch.device):
    """bf16 autocast on CUDA (Hopper/Ampere run it natively), full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    algorithm,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> dict[str, float]:
    """Train over ``batches``; return the mean of every loss component (weighted by batch size).

    Components are summed on the device and read once at the end: a per-step ``.item()`` would make
    the host wait for the GPU every step and leave it idle while the next batch is prepared.
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for batch in batches:
        with autocast(device):
            out = algorithm.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        n = batch[0].shape[0]
        for k, v in out.items():
            sums[k] = sums.get(k, 0) + v.detach().float() * n
        seen += n
    return {k: float(v) / max(seen, 1) for k, v in sums.items()}


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, features=False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Softmax probabilities [N, K], labels [N] and, if asked, penultimate features [N, D]."""
    model.eval()
    probs, labels, feats = [], [], []
    for x, y in batches:
        with autocast(device):
            logits, z = model.forward_both(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y.cpu())
        if features:
            feats.append(z.float().cpu())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), None
    f = torch.cat(feats).numpy() if features else None
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), f
