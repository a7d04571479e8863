"""Discrimination-aware channel pruning (DCP; Zhuang et al., NeurIPS 2018), pure torch.

What is pruned. In a residual block only the *inner* channels can go without touching the residual
shapes: the outputs of a block's first conv, which are the inputs of its second conv (BasicBlock,
ResNet-18/34), and for a Bottleneck (ResNet-50+) also the outputs of conv2 = the inputs of conv3. One
such pair is a ``Unit``: a *producer* conv whose output channels are kept or removed and the
*consumer* conv whose input channels they are. Units are named by the producer's module name
(``"g.layer1.0.conv1"``), and :func:`select_channels_dcp` returns, per unit, the kept channel indices
in the order the greedy search picked them.

The objective (DCP Sec. 3: reconstruction error, additional loss, joint loss). For the consumer's
weight W (C_out x C_in x k x k), with X its input computed by the *partially pruned* model and F the
*unpruned* model's consumer output on the same images:

    L(W) = L_M(W) + lambda * L_S(W),          L_M(W) = ||F - X *_c W||_F^2 / (2Q),

with Q = N * C_out * H_out * W_out, the number of entries of F. The reconstruction is taken at the
consumer conv's output (before its BatchNorm and the residual add), as in the authors' code, which
hooks ``conv2``/``conv3`` and uses ``nn.MSELoss`` (a mean over all entries, without the 1/2, so their
``mse_weight = softmax_weight = 1`` is our ``disc_weight = 0.5``). With this Q the two terms are on the
scale of a per-entry squared error and of a cross-entropy; a 1/(2N) normalisation would make the
cross-entropy vanish next to a sum over C x H x W entries.

L_S is the discrimination-aware loss: the cross-entropy against the labels of a classifier's logits,
with the unit's consumer weight set to W (so the unselected channels are masked out), averaged over
the calibration batches. ``prune.disc_head`` says which classifier:

- ``aux`` (default): DCP as published (Eq. 4-5, Algorithm 1). An auxiliary head (BN-ReLU-avgpool-FC)
  after each ResNet stage but the last, fitted first on the calibration data (``heads``), gives L_S^p
  for every unit of stage p; the last stage uses the final logits (DCP's L_f). The default because
  it is the method the paper ran: a stage's head asks what *that stage's* features must keep to stay
  discriminative, where the final logits only see what survives the later, still unpruned stages,
  and their gradient reaches early layers through all of them.
- ``final``: the final logits for every unit (the shortcut of many reimplementations, and domgen's
  earlier behaviour): no fitting, one less approximation to tune, but not DCP's objective.

The greedy search (DCP Algorithm 2). Start from A = {} (W = 0). At step t compute G = dL/dW at W^t,
add the channel j not in A with the largest ||G[:, j]||_F, re-fit W on the channels in A, and stop as
soon as the relative decrease of the objective falls below the threshold (DCP's stopping condition):

    |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon,

keeping the channel just added (the check runs after it, as in Algorithm 2), so at least one channel
stays. The data, not a ratio, decides how many channels each unit keeps. The greedy steps never
depend on epsilon, only the stop does, so on one unit a smaller epsilon runs the same sequence longer
and keeps a superset. ``sweep_channels_dcp`` uses this to run several thresholds at once: it reads
every threshold's stopping point off one trajectory per unit, and parts the paths where stopping
points differ, since later units then see differently pruned inputs (so across units a smaller
epsilon keeping more is the usual outcome, not a guarantee).

Re-fitting. DCP solves the sub-problem min_{W_A} L(W) by SGD. We re-fit by exact least squares on
L_M over the selected channels (the re-fit of He et al., ICCV 2017 and ThiNet), which needs no step
size and is solved incrementally: the selected columns' Gram matrix (plus a tiny ridge) is factored
by a block Cholesky grown by k*k columns per step, so L_M(W^t) and its gradient on the unselected
channels come from running sums (group orthogonal matching pursuit). L_S still drives the selection
and the stopping rule through its gradient and value at W^t. With ``disc_weight = 0`` the search is
pure reconstruction and never runs the network after collecting the statistics.

BatchNorm layers run in eval mode throughout (the authors "freeze the Batch Normalization" too). The
model is modified in place: the consumer weights of every unit hold the re-fitted values on the kept
channels and zeros on the others, so ``physical.apply_selection`` can remove them without changing
the model's outputs.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from domgen.config import PruneConfig
from domgen.prune.greedy_ls import GreedyLeastSquares
from domgen.prune.heads import DISC_HEADS, HeadFit, disc_logits, fit_aux_heads, stage_names, stage_of

# progress(unit name, channels kept so far, channels in the unit, objective L(W^t))
Progress = Callable[[str, int, int, float], None]

@dataclass(frozen=True)
class Unit:
    name: str  # producer conv's module name: the key of the selection
    producer: nn.Conv2d  # its output channels are selected
    consumer_name: str
    consumer: nn.Conv2d  # its input channels are the producer's outputs


def prunable_units(model: nn.Module) -> list[Unit]:
    """The inner channel pairs of every torchvision residual block, in forward order."""
    units = []
    for name, block in model.named_modules():
        if isinstance(block, BasicBlock):
            pairs = [("conv1", "conv2")]
        elif isinstance(block, Bottleneck):
            pairs = [("conv1", "conv2"), ("conv2", "conv3")]
        else:
            continue
        for prod, cons in pairs:
            units.append(Unit(f"{name}.{prod}", getattr(block, prod), f"{name}.{cons}", getattr(block, cons)))
    if not units:
        raise ValueError("no torchvision BasicBlock/Bottleneck found: DCP here supports ResNet backbones only")
    return units


def select_channels_dcp(
    model: nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    cfg: PruneConfig,
    progress: Progress | None = None,
    only: Collection[str] | None = None,
    heads: HeadFit | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Greedy DCP channel selection for every unit, in forward order; returns unit -> kept channels.

    ``batches`` yields ``(x, y, ...)``; the first ``cfg.batches`` are kept on the model's device for the
    whole search. ``cfg.threshold`` is epsilon, ``cfg.disc_weight`` lambda and ``cfg.disc_head`` where
    L_S comes from (module docstring); ``heads``: auxiliary heads already fitted (else fitted here, with
    ``seed``). Each unit's consumer weight is re-fitted in place (zeros on the dropped channels), so
    later units see inputs from the partially pruned model; their targets come from a frozen copy of
    the model as it was on entry. ``only`` restricts the search to these unit names."""
    paths = sweep_channels_dcp(model, batches, cfg, [cfg.threshold], progress, only, heads, seed)
    return paths[cfg.threshold].kept


@dataclass
class Branch:
    """One threshold's outcome of a sweep: the model pruned (masked) for it and its selection."""

    model: nn.Module
    kept: dict[str, list[int]]
    thresholds: list[float]  # the sweep's thresholds that share this model so far


def sweep_channels_dcp(
    model: nn.Module,
    batches: Iterable[Sequence[torch.Tensor]],
    cfg: PruneConfig,
    thresholds: Sequence[float],
    progress: Progress | None = None,
    only: Collection[str] | None = None,
    heads: HeadFit | None = None,
    seed: int = 0,
) -> dict[float, Branch]:
    """DCP at several thresholds at once: threshold -> its masked model and selection, each exactly
    what ``select_channels_dcp`` gives at that threshold alone.

    Thresholds whose selections agree on every unit so far share one model, so each unit's greedy
    sequence runs once per distinct model, as far as the smallest of its thresholds goes, and every
    threshold's stopping point is read off that one trajectory (the greedy steps never depend on the
    threshold, only the stop does). Where stopping points differ, the paths part: later units see
    differently pruned inputs, so they need their own search. ``model`` itself becomes the model of
    the smallest threshold; the others are copies."""
    device = next(model.parameters()).device
    data = [(b[0].to(device), b[1].to(device)) for b in itertools.islice(iter(batches), cfg.batches)]
    if not data:
        raise ValueError("select_channels_dcp needs at least one batch of (x, y)")
    if cfg.disc_head not in DISC_HEADS:
        raise ValueError(f"prune.disc_head must be one of {DISC_HEADS}, got {cfg.disc_head!r}")
    baseline = copy.deepcopy(model).eval()
    base_modules = dict(baseline.named_modules())
    was_training = model.training
    model.eval()
    if cfg.disc_weight and cfg.disc_head == "aux" and heads is None:
        heads = fit_aux_heads(model, data, cfg.aux_steps, cfg.aux_lr, seed)
    stages = stage_names(model)
    paths = [Branch(model, {}, sorted(set(thresholds)))]
    try:
        for name in [u.name for u in _chosen_units(model, only)]:
            stage = stage_of(name, stages)
            head = heads.heads.get(stage) if heads is not None and cfg.disc_head == "aux" else None
            logits = functools.partial(disc_logits, stage=stage, head=head)
            paths = [p for path in paths for p in _split(path, name, base_modules, data, cfg, logits, progress)]
    finally:
        model.train(was_training)
    return {t: path for path in paths for t in path.thresholds}


def _split(path: Branch, name: str, base_modules, data, cfg: PruneConfig, logits, progress) -> list[Branch]:
    """Search unit ``name`` in ``path``'s model; one path per distinct stopping point."""
    unit = next(u for u in prunable_units(path.model) if u.name == name)
    baseline, target_conv = base_modules[""], base_modules[unit.consumer_name]
    order, stops, search = _trajectory(path.model, baseline, target_conv, unit, data, cfg, path.thresholds,
                                       logits, progress)
    lengths = sorted(set(stops.values()), reverse=True)  # the longest (smallest threshold) keeps the model
    models = [path.model] + [copy.deepcopy(path.model) for _ in lengths[1:]]
    kk = unit.consumer.weight[0, 0].numel()
    out = []
    for length, model in zip(lengths, models):
        consumer = model.get_submodule(unit.consumer_name)
        consumer.weight.data.copy_(search.weights(length * kk).view_as(consumer.weight))
        out.append(Branch(model, path.kept | {name: order[:length]}, [t for t in path.thresholds if stops[t] == length]))
    return out


def _chosen_units(model: nn.Module, only: Collection[str] | None) -> list[Unit]:
    units = prunable_units(model)
    if only is None:
        return units
    unknown = set(only) - {u.name for u in units}
    if unknown:
        raise KeyError(f"unknown units {sorted(unknown)}; known: {[u.name for u in units]}")
    return [u for u in units if u.name in only]


def _trajectory(model, baseline, target_conv, unit: Unit, data, cfg: PruneConfig, thresholds, logits, progress):
    """DCP Algorithm 2 on one unit until the smallest threshold stops. Returns the channels in the
    order picked, the number kept at each threshold, and the least-squares state (for prefix weights)."""
    conv = unit.consumer
    c_in = conv.in_channels
    kk = conv.weight[0, 0].numel()  # k*k columns of the unfolded input per channel
    gram, cross, phi, q = _reconstruction_stats(model, conv, baseline, target_conv, data)
    search = GreedyLeastSquares(gram, cross, kk)
    lam = cfg.disc_weight

    conv.weight.data.zero_()  # W^0 = 0: no channel selected
    ls, g_s = _disc_term(model, conv, data, logits) if lam else (0.0, 0.0)
    l0 = float(phi) / (2 * q) + lam * ls
    prev, selected, stops = l0, [], {}
    grad = -search.residual / q + lam * g_s  # dL/dW at W^0, [C_out, C_in*k*k]
    while True:
        scores = grad.view(grad.shape[0], c_in, kk).pow(2).sum((0, 2))  # ||G[:, j]||_F^2 per channel
        scores[selected] = -1.0
        j = int(scores.argmax())
        search.add(j)
        selected.append(j)
        if lam:
            conv.weight.data.copy_(search.weights().view_as(conv.weight))
            ls, g_s = _disc_term(model, conv, data, logits)
        loss = search.loss(phi, q) + lam * ls
        if progress is not None:
            progress(unit.name, len(selected), c_in, loss)
        last = len(selected) == c_in or l0 <= 0
        for eps in thresholds:  # DCP's stopping rule; the check runs after the channel was added
            if eps not in stops and (last or abs(prev - loss) / l0 <= eps):
                stops[eps] = len(selected)
        if len(stops) == len(thresholds):
            return selected, stops, search
        prev = loss
        grad = -search.residual / q + lam * g_s


def _reconstruction_stats(model, conv: nn.Conv2d, baseline, target_conv: nn.Conv2d, data):
    """Sufficient statistics of L_M, in float64 (the stopping rule compares differences of 1e-4 of L):
    Gram = sum P P^T [D, D] and cross = sum P F^T [D, C_out] over the unfolded consumer inputs P
    (D = C_in*k*k columns, channel-major like ``conv.weight.flatten(1)``) and the unpruned outputs F;
    phi = ||F||^2 and Q = number of entries of F."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError("DCP expects dense, zero-padded consumer convolutions")
    d = conv.weight[0].numel()
    gram = conv.weight.new_zeros(d, d, dtype=torch.float64)
    cross = conv.weight.new_zeros(d, conv.out_channels, dtype=torch.float64)
    phi, q = 0.0, 0
    for x, _ in data:
        inp = _capture(model, conv, x, want_input=True)  # [B, C_in, H, W]
        target = _capture(baseline, target_conv, x, want_input=False)  # [B, C_out, Ho, Wo]
        patches = F.unfold(inp, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, D, L]
        target = target.flatten(2)  # [B, C_out, L]
        if conv.bias is not None:  # the bias is not selected; fit what the weights must produce
            target = target - conv.bias.detach()[None, :, None]
        step = max(1, 2**25 // max(1, patches[0].numel()))  # bound the float64 copies
        for i in range(0, x.shape[0], step):
            p = patches[i : i + step].double().transpose(0, 1).flatten(1)  # [D, b*L]
            t = target[i : i + step].double().transpose(0, 1).flatten(1)  # [C_out, b*L]
            gram.addmm_(p, p.T)
            cross.addmm_(p, t.T)
        phi += float(target.double().pow(2).sum())
        q += target.numel()
    return gram, cross, phi, q


class _Stop(Exception):
    pass


def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor, want_input: bool) -> torch.Tensor:
    """Run ``model`` on x only as far as ``module`` and return its input (or output)."""
    got = []

    def pre(_, inputs):
        got.append(inputs[0].detach())
        raise _Stop

    def post(_, inputs, output):
        got.append(output.detach())
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if want_input else module.register_forward_hook(post)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _disc_term(model: nn.Module, conv: nn.Conv2d, data, logits) -> tuple[float, torch.Tensor]:
    """L_S at the current consumer weight and its gradient dL_S/dW as [C_out, C_in*k*k] float64: the
    cross-entropy of ``logits(model, x)`` (the unit's stage head, or the final logits), averaged over
    the calibration batches."""
    params = [p for p in model.parameters() if p.requires_grad and p is not conv.weight]
    for p in params:  # only W needs a gradient: no graph is kept for the other weights
        p.requires_grad_(False)
    w_grad = conv.weight.requires_grad
    conv.weight.requires_grad_(True)
    total, grad = 0.0, torch.zeros_like(conv.weight)
    try:
        with torch.enable_grad():
            for x, y in data:
                loss = F.cross_entropy(logits(model, x), y)
                (g,) = torch.autograd.grad(loss, conv.weight)
                total += float(loss.detach())
                grad += g
    finally:
        for p in params:
            p.requires_grad_(True)
        conv.weight.requires_grad_(w_grad)
    return total / len(data), grad.flatten(1).double() / len(data)
