"""DCP's auxiliary classifiers: where the discrimination-aware loss L_S^p of a layer comes from.

Zhuang et al., "Discrimination-aware Channel Pruning", NeurIPS 2018, Sec. 3.1 and Algorithm 1: the
network is cut into P stages; after stage p an auxiliary classifier F^(p) (BN - ReLU - average pool -
FC, Fig. 1 and the authors' ``AuxClassifier``) gives the loss L_S^p = cross-entropy of F^(p)'s logits
(Eq. 4, with the softmax of Eq. 4 written as ``F.cross_entropy``), and every layer of stage p is
pruned with Eq. 5, L = L_M + lambda * L_S^p. The last stage has no auxiliary head: its loss is the
network's own final loss L_f (in the authors' code the last segment's "aux" is the model's own
avgpool + fc). A ResNet stage here is a torchvision ``layerN``: the module holding a run of residual
blocks.

Fitting (Algorithm 1, step 2: "learn the parameters of the additional losses"). The authors fine-tune
the heads *and* the network with sum_p L_S^p + L_f. Here the network is the trained model whose
outputs DCP then reconstructs, so it stays frozen and only the heads are fitted: each head's
BatchNorm takes the calibration data's statistics (one cumulative pass, ``momentum=None``), then its
affine parameters and FC are fitted by Adam for ``aux_steps`` steps, one calibration batch per step, in
eval mode (BatchNorm uses those statistics, so the head is a fixed function once fitted). The heads'
initialisation is seeded, so a selection is reproducible.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

DISC_HEADS = ("aux", "final")


class AuxHead(nn.Module):
    """BN - ReLU - global average pool - FC: [B, C, H, W] -> [B, K] (DCP's auxiliary classifier)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, momentum=None)  # momentum None: cumulative average of batches
        self.fc = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.fc.bias)  # as the authors' AuxClassifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(x)).mean((2, 3)))


@dataclass
class HeadFit:
    """Fitted heads by stage name (every stage but the last) and their mean calibration cross-entropy
    before and after fitting."""

    heads: dict[str, AuxHead]
    loss_before: dict[str, float] = field(default_factory=dict)
    loss_after: dict[str, float] = field(default_factory=dict)


def stage_names(model: nn.Module) -> list[str]:
    """Modules that directly hold residual blocks (``g.layer1`` .. ``g.layer4``), in forward order."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            parent = name.rsplit(".", 1)[0]
            if parent not in names:
                names.append(parent)
    return names


def stage_of(unit_name: str, stages: Sequence[str]) -> str:
    owners = [s for s in stages if unit_name.startswith(s + ".")]
    if not owners:
        raise KeyError(f"{unit_name} is in none of the stages {list(stages)}")
    return max(owners, key=len)


class _Stop(Exception):
    pass


def stage_outputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named modules for input x, running the model only as far as the last of them.
    Gradients flow if they are enabled by the caller."""
    got: dict[str, torch.Tensor] = {}
    last = names[-1]

    def hook(name):
        def keep(_, inputs, output):
            got[name] = output
            if name == last:
                raise _Stop

        return keep

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return got


def disc_logits(model: nn.Module, x: torch.Tensor, stage: str | None, head: nn.Module | None) -> torch.Tensor:
    """Logits whose cross-entropy is a unit's L_S: its stage's head, or the model's own (head None)."""
    if head is None:
        return model(x)
    return head(stage_outputs(model, [stage], x)[stage])


def fit_aux_heads(model: nn.Module, data: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
                  seed: int = 0) -> HeadFit:
    """A head after every stage but the last, fitted on ``data`` [(x, y)] with the model frozen (module
    docstring). The model is run in eval mode and left as it was."""
    stages = stage_names(model)[:-1]
    if not stages:
        return HeadFit({})
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    try:
        with torch.no_grad():
            feats0 = stage_outputs(model, stages, data[0][0])
            num_classes = model(data[0][0][:1]).shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = {s: AuxHead(feats0[s].shape[1], num_classes).to(device) for s in stages}
        _bn_statistics(model, heads, data)
        before = _mean_losses(model, heads, data)
        params = [p for h in heads.values() for p in h.parameters()]
        opt = torch.optim.Adam(params, lr=lr)
        for x, y in itertools.islice(itertools.cycle(data), steps):
            with torch.no_grad():
                feats = stage_outputs(model, stages, x)
            loss = sum(F.cross_entropy(heads[s](feats[s]), y) for s in stages)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for h in heads.values():
            h.requires_grad_(False)
        return HeadFit(heads, before, _mean_losses(model, heads, data))
    finally:
        model.train(was_training)


def _bn_statistics(model: nn.Module, heads: dict[str, AuxHead], data) -> None:
    """Each head's BatchNorm running mean/var = the average over the calibration batches."""
    stages = list(heads)
    for h in heads.values():
        h.train()
    with torch.no_grad():
        for x, _ in data:
            feats = stage_outputs(model, stages, x)
            for s in stages:
                heads[s].bn(feats[s])
    for h in heads.values():
        h.eval()


def _mean_losses(model: nn.Module, heads: dict[str, AuxHead], data) -> dict[str, float]:
    stages, total = list(heads), dict.fromkeys(heads, 0.0)
    with torch.no_grad():
        for x, y in data:
            feats = stage_outputs(model, stages, x)
            for s in stages:
                total[s] += float(F.cross_entropy(heads[s](feats[s]), y))
    return {s: v / len(data) for s, v in total.items()}
