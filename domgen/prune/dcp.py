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

L_S is the discrimination-aware loss. DCP attaches an auxiliary classifier (BN-ReLU-avgpool-FC) after
each of P stages and fine-tunes it first; we use the simplification common to reimplementations: L_S
is the cross-entropy of the model's *own final logits* against the labels, with the unit's consumer
weight set to W (so the unselected channels are masked out), averaged over the calibration batches.
For ResNet-18's last stage this is exactly DCP's final loss L_f.

The greedy search (DCP Algorithm 2). Start from A = {} (W = 0). At step t compute G = dL/dW at W^t,
add the channel j not in A with the largest ||G[:, j]||_F, re-fit W on the channels in A, and stop as
soon as the relative decrease of the objective falls below the threshold (DCP's stopping condition):

    |L(W^{t-1}) - L(W^t)| / L(W^0) <= epsilon,

keeping the channel just added (the check runs after it, as in Algorithm 2), so at least one channel
stays. The data, not a ratio, decides how many channels each unit keeps. For a unit whose inputs are
the same, a smaller epsilon only runs the same greedy sequence longer, so it keeps a superset; later
units see inputs shaped by the earlier choices, so there it is the usual outcome, not a guarantee.

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
import itertools
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from domgen.config import PruneConfig

# progress(unit name, channels kept so far, channels in the unit, objective L(W^t))
Progress = Callable[[str, int, int, float], None]

_RIDGE = 1e-8  # relative to the mean diagonal of the Gram matrix; keeps the Cholesky factor defined


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
) -> dict[str, list[int]]:
    """Greedy DCP channel selection for every unit, in forward order; returns unit -> kept channels.

    ``batches`` yields ``(x, y, ...)``; the first ``cfg.batches`` are kept on the model's device for the
    whole search. ``cfg.threshold`` is epsilon and ``cfg.disc_weight`` lambda (module docstring). Each
    unit's consumer weight is re-fitted in place (zeros on the dropped channels), so later units see
    inputs from the partially pruned model; their targets come from a frozen copy of the model as it
    was on entry. ``only`` restricts the search to these unit names (the others are left whole)."""
    device = next(model.parameters()).device
    data = [(b[0].to(device), b[1].to(device)) for b in itertools.islice(iter(batches), cfg.batches)]
    if not data:
        raise ValueError("select_channels_dcp needs at least one batch of (x, y)")
    baseline = copy.deepcopy(model).eval()
    base_modules = dict(baseline.named_modules())
    was_training = model.training
    model.eval()
    try:
        kept = {}
        for unit in _chosen_units(model, only):
            target_conv = base_modules[unit.consumer_name]
            kept[unit.name] = _select_unit(model, baseline, target_conv, unit, data, cfg, progress)
    finally:
        model.train(was_training)
    return kept


def _chosen_units(model: nn.Module, only: Collection[str] | None) -> list[Unit]:
    units = prunable_units(model)
    if only is None:
        return units
    unknown = set(only) - {u.name for u in units}
    if unknown:
        raise KeyError(f"unknown units {sorted(unknown)}; known: {[u.name for u in units]}")
    return [u for u in units if u.name in only]


def _select_unit(model, baseline, target_conv, unit: Unit, data, cfg: PruneConfig, progress) -> list[int]:
    conv = unit.consumer
    c_in = conv.in_channels
    kk = conv.weight[0, 0].numel()  # k*k columns of the unfolded input per channel
    gram, cross, phi, q = _reconstruction_stats(model, conv, baseline, target_conv, data)
    search = _GreedyLeastSquares(gram, cross, kk)
    lam = cfg.disc_weight

    conv.weight.data.zero_()  # W^0 = 0: no channel selected
    ls, g_s = _disc_term(model, conv, data) if lam else (0.0, 0.0)
    l0 = float(phi) / (2 * q) + lam * ls
    prev, selected = l0, []
    grad = -search.residual / q + lam * g_s  # dL/dW at W^0, [C_out, C_in*k*k]
    while True:
        scores = grad.view(grad.shape[0], c_in, kk).pow(2).sum((0, 2))  # ||G[:, j]||_F^2 per channel
        scores[selected] = -1.0
        j = int(scores.argmax())
        search.add(j)
        selected.append(j)
        if lam:
            conv.weight.data.copy_(search.weights().view_as(conv.weight))
            ls, g_s = _disc_term(model, conv, data)
        loss = search.loss(phi, q) + lam * ls
        if progress is not None:
            progress(unit.name, len(selected), c_in, loss)
        if len(selected) == c_in or l0 <= 0 or abs(prev - loss) / l0 <= cfg.threshold:
            break
        prev = loss
        grad = -search.residual / q + lam * g_s
    conv.weight.data.copy_(search.weights().view_as(conv.weight))
    return selected


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


def _disc_term(model: nn.Module, conv: nn.Conv2d, data) -> tuple[float, torch.Tensor]:
    """L_S at the current consumer weight and its gradient dL_S/dW as [C_out, C_in*k*k] float64:
    the cross-entropy of the final logits, averaged over the calibration batches."""
    params = [p for p in model.parameters() if p.requires_grad and p is not conv.weight]
    for p in params:  # only W needs a gradient: no graph is kept for the other weights
        p.requires_grad_(False)
    w_grad = conv.weight.requires_grad
    conv.weight.requires_grad_(True)
    total, grad = 0.0, torch.zeros_like(conv.weight)
    try:
        with torch.enable_grad():
            for x, y in data:
                loss = F.cross_entropy(model(x), y)
                (g,) = torch.autograd.grad(loss, conv.weight)
                total += float(loss.detach())
                grad += g
    finally:
        for p in params:
            p.requires_grad_(True)
        conv.weight.requires_grad_(w_grad)
    return total / len(data), grad.flatten(1).double() / len(data)


class _GreedyLeastSquares:
    """Least squares on a growing set of column groups (k*k columns per channel), by a block Cholesky
    factor L of Gram[A, A] + ridge*I grown one group at a time.

    Kept up to date per step, with m selected columns:  Y = L^{-1} cross[A] [m, C_out];  Z = L^{-1}
    Gram[A, :] [m, D];  residual = cross^T - W_A Gram[A, :] = cross^T - Y^T Z [C_out, D], so that
    dL_M/dW = -residual / Q and min L_M = (phi - ||Y||^2) / (2Q) (up to the ridge term)."""

    def __init__(self, gram: torch.Tensor, cross: torch.Tensor, kk: int):
        self.gram, self.cross, self.kk = gram, cross, kk
        self.ridge = _RIDGE * float(gram.diagonal().mean()) + 1e-30
        self.residual = cross.T.clone()
        self.m = 0
        self._reserve(min(gram.shape[0], 16 * kk))

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` selected columns; grown by doubling, since most units keep far fewer
        than all of their D columns and a [D, D] float64 buffer is 170 MB for ResNet's layer4."""
        d, m = self.gram.shape[0], self.m
        chol, y, z, cols = (
            self.gram.new_zeros(rows, rows),
            self.gram.new_zeros(rows, self.cross.shape[1]),
            self.gram.new_zeros(rows, d),
            torch.zeros(rows, dtype=torch.long, device=self.gram.device),
        )
        if m:
            chol[:m, :m], y[:m], z[:m], cols[:m] = self.chol[:m, :m], self.y[:m], self.z[:m], self.cols[:m]
        self.chol, self.y, self.z, self.cols = chol, y, z, cols

    def add(self, channel: int) -> None:
        m, kk = self.m, self.kk
        if m + kk > self.chol.shape[0]:
            self._reserve(min(self.gram.shape[0], 2 * self.chol.shape[0]))
        cols = torch.arange(channel * kk, (channel + 1) * kk, device=self.gram.device)
        rows = self.gram[cols]  # Gram[j, :]  [kk, D]
        b = torch.linalg.solve_triangular(self.chol[:m, :m], rows[:, self.cols[:m]].T, upper=False)  # [m, kk]
        schur = rows[:, cols] - b.T @ b
        c = _cholesky(schur, self.ridge)
        self.chol[m : m + kk, :m] = b.T
        self.chol[m : m + kk, m : m + kk] = c
        y = torch.linalg.solve_triangular(c, self.cross[cols] - b.T @ self.y[:m], upper=False)  # [kk, C_out]
        z = torch.linalg.solve_triangular(c, rows - b.T @ self.z[:m], upper=False)  # [kk, D]
        self.y[m : m + kk], self.z[m : m + kk], self.cols[m : m + kk] = y, z, cols
        self.residual -= y.T @ z
        self.m = m + kk

    def loss(self, phi: float, q: int) -> float:
        return (phi - float(self.y[: self.m].pow(2).sum())) / (2 * q)

    def weights(self) -> torch.Tensor:
        """W [C_out, D]: the least-squares weights on the selected columns, zeros elsewhere."""
        m = self.m
        w_a = torch.linalg.solve_triangular(self.chol[:m, :m].T, self.y[:m], upper=True)  # [m, C_out]
        w = self.cross.new_zeros(self.cross.shape[1], self.cross.shape[0])
        w[:, self.cols[:m]] = w_a.T
        return w


def _cholesky(a: torch.Tensor, ridge: float) -> torch.Tensor:
    """Cholesky factor of a + ridge*I, adding more jitter when round-off makes it indefinite."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for scale in (1.0, 1e2, 1e4, 1e6):
        factor, info = torch.linalg.cholesky_ex(a + ridge * scale * eye)
        if int(info) == 0:
            return factor
    raise FloatingPointError("Gram block is not positive definite even with jitter")
