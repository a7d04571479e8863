"""Initialisations of Raghu et al., "Transfusion" (NeurIPS 2019), as values of ``model.weights``.

``model.weights`` already names where a backbone's weights come from (``none``: PyTorch's default random
init, ``imagenet``, or a local ``PATH``); this module adds, with no new config field (so no run's hash
changes):

- ``meanvar`` / ``meanvar:PATH``: Mean-Var init (paper Sec. 5.1): every parameter tensor of ``g`` (conv and
  linear weights, biases, BN's affine weight and bias) is drawn i.i.d. from N(m, s^2), where m and s^2 are
  the mean and (population) variance of the same tensor in the pretrained source (ImageNet's weights, or
  the file PATH). This keeps each layer's scale but destroys its features. BN running statistics keep
  their fresh values (0 and 1): they describe the source's features on the source's data, which the draw
  destroys, and training mode re-estimates them. The head ``h`` is random, as for ``imagenet``.
- ``transfer:K`` / ``transfer:K:PATH``: partial transfer, "weight transfusion" (paper Sec. 5.2): the lowest
  K blocks of ``g`` (parameters and BN buffers) from the source, the rest PyTorch's random init.
  Blocks, bottom-up: for ResNets ``stem`` (conv1, bn1), ``layer1`` .. ``layer4`` (K = 0..5; K = 5 is all of
  ``g``, i.e. the same as ``imagenet``); for the CBR models their conv-BN-ReLU blocks ``layer1`` ..
  ``layerN``. The paper's ResNet-50 transfusions (conv1, block1, block2, ...) are K = 1, 2, 3, ...

Seeding: the random parts use torch's global RNG unless a ``generator`` is passed; the trainer seeds it
with the run's seed (``seed_everything``) before building the model, so a run's Mean-Var draw is fixed by
its seed, as its random init is. Building the source does not consume that RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from domgen.errors import ConfigError
from domgen.models.backbones import Classifier, build_plain


@dataclass(frozen=True)
class InitSpec:
    kind: str  # "meanvar" | "transfer"
    source: str  # "imagenet" or a local file path
    blocks: int = 0  # transfer: how many blocks, bottom-up


def is_init_spec(weights: str) -> bool:
    return weights == "meanvar" or weights.startswith(("meanvar:", "transfer:"))


def parse_init(weights: str) -> InitSpec:
    """``meanvar``, ``meanvar:PATH``, ``transfer:K``, ``transfer:K:PATH`` -> :class:`InitSpec`."""
    if weights == "meanvar":
        return InitSpec("meanvar", "imagenet")
    if weights.startswith("meanvar:"):
        return InitSpec("meanvar", weights.split(":", 1)[1] or "imagenet")
    if weights.startswith("transfer:"):
        k, _, path = weights.split(":", 1)[1].partition(":")
        if not k.isdigit():
            raise ConfigError(f"model.weights={weights!r}: expected transfer:K or transfer:K:PATH with K a "
                              "whole number of blocks (ResNets: 0..5 = stem, layer1..layer4)")
        return InitSpec("transfer", path or "imagenet", int(k))
    raise ConfigError(f"model.weights={weights!r} is not meanvar[:PATH] or transfer:K[:PATH]")


def initialise(arch: str, weights: str, num_classes: int = 7, generator: torch.Generator | None = None) -> Classifier:
    """A model with random init, then Mean-Var or partial transfer from the source named in ``weights``."""
    spec = parse_init(weights)
    model = build_plain(arch, "none", num_classes)  # PyTorch's random init, from the (seeded) global RNG
    if spec.kind == "transfer":
        transferred_prefixes(model.g, spec.blocks)  # a bad K fails here, before any download
    with torch.random.fork_rng(devices=[]):  # building the source must not shift the draws below
        source = build_plain(arch, spec.source, num_classes).g.state_dict()
    if spec.kind == "meanvar":
        meanvar_(model.g, source, generator)
    else:
        transfer_(model.g, source, spec.blocks)
    return model


def build_model(arch: str, weights: str = "none", num_classes: int = 7, head_dropout: float = 0.0) -> Classifier:
    """``arch``: a registered name (torchvision ResNet, CBR) or ``timm:<name>``; ``weights``: imagenet | none |
    PATH (:func:`domgen.models.backbones.build_plain`) | meanvar[:PATH] | transfer:K[:PATH] (this module);
    ``head_dropout``: see :class:`domgen.models.backbones.Classifier`."""
    if not is_init_spec(weights):
        return build_plain(arch, weights, num_classes, head_dropout)
    model = initialise(arch, weights, num_classes)
    model.set_head_dropout(head_dropout)
    return model


@torch.no_grad()
def meanvar_(g: nn.Module, source: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> None:
    """Redraw every parameter of ``g`` i.i.d. from N(mean, var) of the same-named ``source`` tensor."""
    for name, p in g.named_parameters():
        var, mean = torch.var_mean(source[name].detach().to("cpu", torch.float64), correction=0)  # population
        p.normal_(mean.item(), var.clamp(min=0).sqrt().item(), generator=generator)  # the draw in p's dtype


def model_blocks(g: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The blocks of ``g`` bottom-up, each as (name, state-dict key prefixes)."""
    if hasattr(g, "block_names"):  # the CBR models
        return [(name, (name + ".",)) for name in g.block_names]
    if all(hasattr(g, f"layer{i}") for i in range(1, 5)) and hasattr(g, "conv1"):  # torchvision/timm ResNets
        return [("stem", ("conv1.", "bn1."))] + [(f"layer{i}", (f"layer{i}.",)) for i in range(1, 5)]
    raise ConfigError(f"transfer:K defines blocks for ResNets and CBR models, not {type(g).__name__}")


def transferred_prefixes(g: nn.Module, k: int) -> tuple[str, ...]:
    """The state-dict key prefixes of the lowest ``k`` blocks of ``g``; checks K and that the blocks cover ``g``."""
    blocks = model_blocks(g)
    if not 0 <= k <= len(blocks):
        raise ConfigError(f"transfer:{k}: this backbone has {len(blocks)} blocks ({', '.join(n for n, _ in blocks)})")
    every = tuple(p for _, prefixes in blocks for p in prefixes)
    stray = [key for key in g.state_dict() if not key.startswith(every)]
    if stray:  # a tensor in no block would silently stay random whatever K is
        raise ConfigError(f"transfer:K: tensors outside every block: {stray[:5]}")
    return tuple(p for _, prefixes in blocks[:k] for p in prefixes)


@torch.no_grad()
def transfer_(g: nn.Module, source: dict[str, torch.Tensor], k: int) -> None:
    """Copy the lowest ``k`` blocks of ``source`` (parameters and buffers) into ``g``; keep the rest."""
    chosen = transferred_prefixes(g, k)
    if chosen:
        state = {key: source[key] for key in g.state_dict() if key.startswith(chosen)}
        g.load_state_dict(state, strict=False)
