"""The torch-pruning edge: physical channel removal, importance baselines, counting, save/load.

Everything that touches ``torch_pruning`` (Fang et al., CVPR 2023, "DepGraph") lives here. A selection
is a dict ``{producer conv name: kept output channels}`` over the units of ``dcp.prunable_units``
(the inner channels of each residual block); removing a producer's output channels with the dependency
graph also shrinks its BatchNorm and the consumer conv's inputs, so residual shapes never change.

Pruned models are saved through ``tp.state_dict`` / ``tp.load_state_dict``, which carry each
module's tensors *and* shape attributes (``out_channels``, ``num_features`` ...), so a fresh unpruned
model of the same architecture becomes the pruned one on load. Of each module's ``__dict__`` we keep
only ``_parameters`` and ``_buffers`` (plus torch-pruning's attribute dict): the rest holds references
to submodules, hooks and classes (e.g. ResNet's ``_norm_layer``), which would make the file a pickled
model that ``torch.load(weights_only=True)`` refuses. With that filter the file loads with
``weights_only=True`` (tested), and nothing else is lost: channel pruning edits modules in place.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from domgen.config import PruneConfig
from domgen.models import build_model
from domgen.prune.dcp import Progress, prunable_units, select_channels_dcp
from domgen.prune.heads import HeadFit
from domgen.registry import Registry
from domgen.atomic import atomic_path

IMPORTANCES: Registry[Callable[[], tp.importance.Importance]] = Registry("importance")
IMPORTANCES.add("magnitude", lambda: tp.importance.MagnitudeImportance(p=2))  # L2 of the whole group
IMPORTANCES.add("taylor", tp.importance.TaylorImportance)  # |w * dL/dw| (Molchanov et al., CVPR 2019)
IMPORTANCES.add("bn", tp.importance.BNScaleImportance)  # |gamma| (network slimming, Liu et al., 2017)

FORMAT = "domgen-pruned-v1"


def _dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace in eval mode: a train-mode forward would move the BatchNorm running statistics."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # torch-pruning traces through autograd
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input.to(_device(model)), verbose=False
            )
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def apply_selection(model: nn.Module, kept: Mapping[str, Sequence[int]], example_input: torch.Tensor) -> nn.Module:
    """Physically remove every channel of each named producer conv that is not in ``kept[name]``
    (its BatchNorm and the consumer conv's input shrink with it); the surviving weights, e.g. DCP's
    re-fitted consumer weights, are kept as they are. Returns the same (now smaller) model."""
    _remove(_dependency_graph(model, example_input), model, kept)
    return model


def _remove(graph: tp.DependencyGraph, model: nn.Module, kept: Mapping[str, Sequence[int]]) -> None:
    modules = dict(model.named_modules())
    for name, idxs in kept.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise KeyError(f"{name!r} is not a conv of this model (units: {[u.name for u in prunable_units(model)]})")
        keep = {int(i) for i in idxs}
        if not keep or min(keep) < 0 or max(keep) >= conv.out_channels:
            raise ValueError(f"{name}: kept channels must be a non-empty subset of 0..{conv.out_channels - 1}")
        removed = [i for i in range(conv.out_channels) if i not in keep]
        if not removed:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=removed)
        if not graph.check_pruning_group(group):
            raise ValueError(f"{name}: torch-pruning refuses to remove {len(removed)} channels")
        group.prune()


def prune_by_importance(
    model: nn.Module,
    method: str,
    ratio: float,
    example_input: torch.Tensor,
    batches: Iterable[Sequence[torch.Tensor]] | None = None,
) -> dict[str, int]:
    """Baseline: in every unit keep the ``int(n * (1 - ratio))`` producer channels (at least one) that
    torch-pruning's importance ``method`` (magnitude | taylor | bn) scores highest over the unit's whole
    dependency group, as MetaPruner's local pruning does, and remove the rest. ``taylor`` needs
    ``batches`` of (x, y, ...) for its gradients. Returns unit -> channels kept."""
    importance = IMPORTANCES.get(method)()
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if method == "taylor":
        if batches is None:
            raise ValueError("taylor importance needs batches of (x, y) for its gradients")
        _accumulate_gradients(model, batches)
    graph = _dependency_graph(model, example_input)
    kept = {}
    for unit in prunable_units(model):
        n = unit.producer.out_channels
        group = graph.get_pruning_group(unit.producer, tp.prune_conv_out_channels, idxs=list(range(n)))
        scores = importance(group)  # [n], one score per producer channel
        k = max(1, int(n * (1 - ratio)))  # torch-pruning's rounding: n_pruned = n - int(n * (1 - ratio))
        kept[unit.name] = sorted(torch.topk(scores, k).indices.tolist())
    model.zero_grad(set_to_none=True)
    _remove(graph, model, kept)
    return {name: len(idx) for name, idx in kept.items()}


def _accumulate_gradients(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> None:
    """Sum of cross-entropy gradients over the batches, in eval mode (BatchNorm statistics unchanged)."""
    device, was_training = _device(model), model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for batch in batches:
                F.cross_entropy(model(batch[0].to(device)), batch[1].to(device)).backward()
    finally:
        model.train(was_training)


def prune_model(
    model: nn.Module,
    cfg: PruneConfig,
    batches: Iterable[Sequence[torch.Tensor]],
    example_input: torch.Tensor,
    progress: Progress | None = None,
    heads: HeadFit | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """``cfg.method`` = "dcp": DCP selection (threshold, disc_weight, disc_head; ``heads`` and ``seed``
    as in ``select_channels_dcp``) then physical removal; any importance name: ``prune_by_importance``
    with ``cfg.ratio``. Uses the first ``cfg.batches`` batches. Returns unit -> channels kept; the
    model is pruned in place."""
    if cfg.method == "dcp":
        kept = select_channels_dcp(model, batches, cfg, progress, heads=heads, seed=seed)
        apply_selection(model, kept, example_input)
        return {name: len(idx) for name, idx in kept.items()}
    return prune_by_importance(
        model, cfg.method, cfg.ratio, example_input, batches=itertools.islice(iter(batches), cfg.batches)
    )


def count_params_macs(model: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """(parameters, multiply-accumulates for one image) by torch-pruning's op counter; ``input_size``
    is (C, H, W) or (1, C, H, W). ResNet-18 with a 7-class head: 11,180,103 params, 1.82 G MACs at 224."""
    size = tuple(input_size)
    size = (1, *size) if len(size) == 3 else size
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.randn(size, device=_device(model)))
    return int(params), int(macs)


def save_pruned(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """Write the pruned model atomically (temp file + os.replace) via ``tp.state_dict``, filtered as the
    module docstring explains; ``meta`` (plain Python values) is stored alongside."""
    state = tp.state_dict(model)
    payload = {
        "format": FORMAT,
        "full_state_dict": {
            name: {key: d[key] for key in ("_parameters", "_buffers")} for name, d in state["full_state_dict"].items()
        },
        "attributions": state["attributions"],
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_pruned(arch: str, path: str | Path) -> nn.Module:
    """A fresh unpruned ``arch`` (random init, on CPU) turned into the saved pruned model by
    ``tp.load_state_dict``; the file is read with ``torch.load(weights_only=True)``."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a domgen pruned model (format {payload.get('format')!r})")
    model = build_model(arch, "none")
    names = {name for name, _ in model.named_modules()}
    saved = set(payload["full_state_dict"])
    if names != saved:
        diff = sorted(names ^ saved)[:5]
        raise ValueError(f"{path} was not saved from a {arch} model (modules differ: {diff})")
    state = {"full_state_dict": payload["full_state_dict"], "attributions": payload["attributions"]}
    return tp.load_state_dict(model, state_dict=state)
