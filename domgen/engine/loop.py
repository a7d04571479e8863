"""One epoch of training and one pass of prediction: pure functions over iterables of device batches."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA (Ampere/Hopper run it natively), ``fp32`` elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "auto"):
    """The forward pass's autocast context: bf16 autocast on ``device`` or none (full precision)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def resolve_channels_last(channels_last: str, device: torch.device) -> bool:
    """``on``/``off``, or ``auto``: on for CUDA, where cuDNN's NHWC convolutions are faster under bf16
    (on a CPU it is usually slower)."""
    return channels_last == "on" or (channels_last == "auto" and device.type == "cuda")


def prepare_model(model: nn.Module, device: torch.device, channels_last: str = "auto") -> nn.Module:
    """``model`` on ``device``, in channels_last memory format when :func:`resolve_channels_last` says so."""
    model = model.to(device)
    if resolve_channels_last(channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def feature_grad_norms(terms: Mapping[str, torch.Tensor], z: torch.Tensor) -> dict[str, torch.Tensor]:
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


def step_values(step) -> dict[str, torch.Tensor]:
    """What a training step logs: ``loss``, the algorithm's own scalars, and ``gn_<term>`` for each term it
    names, whenever the features it gives are part of a graph (training, not ``no_grad``)."""
    values = {"loss": step.loss, **step.logs}
    z = step.features
    if step.terms and z is not None and torch.is_grad_enabled() and z.requires_grad:
        values |= feature_grad_norms(step.terms, z)
    return values


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    algorithm,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "auto",
    on_step: Callable[[], None] | None = None,
    regime=None,
    clip_norm: float = 0.0,
) -> dict[str, float]:
    """Train over ``batches`` (``domgen.algorithms.Batch``); return the mean of every logged value,
    weighted by the images in each batch. The engine never asks which algorithm it runs: the algorithm
    gives a :class:`domgen.algorithms.Step`, the engine backpropagates ``step.loss`` and steps.
    ``on_step`` is called after every optimiser step (a weight average's update). ``regime``
    (``domgen.regimes.Regime``; None = full fine-tuning) sets the frozen blocks' modes after
    ``model.train()``, adds its penalty to the loss (logged as ``regime_penalty``) and makes the step.
    ``on_step`` is called after every optimiser step (a weight average's update). ``clip_norm`` > 0 clips
    the global L2 norm of every optimised parameter's gradient to at most ``clip_norm`` before each step
    (``torch.nn.utils.clip_grad_norm_``, Pascanu et al. 2013); the norm before clipping is logged as
    ``grad_norm``. 0 (default) leaves the step as it was.

    Components are summed on the device and read once at the end: a per-step ``.item()`` would make
    the host wait for the GPU every step and leave it idle while the next batch is prepared.
    """
    model.train()
    if regime is not None:
        regime.train_mode(model)
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for batch in batches:
        with autocast(device, precision):
            values = step_values(algorithm.loss(model, batch))
        penalty = regime.penalty(model) if regime is not None else None  # on the fp32 weights, outside autocast
        if penalty is not None:
            values["loss"] = values["loss"] + penalty
            values["regime_penalty"] = penalty
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        if clip_norm > 0:
            values["grad_norm"] = clip_gradients(optimizer, clip_norm)
        if regime is not None:
            regime.step(optimizer)
        else:
            optimizer.step()
        if on_step is not None:
            on_step()
        n = batch.y.shape[0]
        for k, v in values.items():
            sums[k] = sums.get(k, 0) + v.detach().float() * n
        seen += n
    return {k: float(v) / max(seen, 1) for k, v in sums.items()}


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Scale the gradients of all of ``optimizer``'s parameters (every group: the model's and an algorithm's
    own modules) so that their global L2 norm is at most ``max_norm``; returns the norm before clipping."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm).detach()


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, features=False,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Softmax probabilities [N, K], labels [N] and, if asked, penultimate features [N, D]."""
    model.eval()
    probs, labels, feats = [], [], []
    for x, y in batches:
        with autocast(device, precision):
            logits, z = model.forward_both(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y.cpu())
        if features:
            feats.append(z.float().cpu())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), None
    f = torch.cat(feats).numpy() if features else None
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), f
