"""Backbones from torchvision (ResNet-18/50/152) and timm (any model by name), split as f = h o g.

``g`` maps an image batch [B, 3, H, W] to penultimate features [B, D] (D = 512 for ResNet-18) and
``h`` is one linear layer to the logits [B, K]. CCSA (Yoon et al., eq. 3-4) aligns ``g``'s output.

Each backbone says what input it expects (:func:`input_normalization`): ImageNet's mean and std for the
torchvision ResNets, and for a timm model its own pretrained config (``timm.data.resolve_data_config``;
e.g. mean = std = 0.5 for the ViTs), as timm's own training and inference scripts do.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from domgen.data.transforms import IMAGENET, Normalization
from domgen.errors import DomgenError
from domgen.registry import Registry

BACKBONES: Registry[Callable[[str], tuple[nn.Module, int]]] = Registry("backbone")


class WeightsUnavailable(DomgenError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says which file and how to
    pass a local path instead."""


class Classifier(nn.Module):
    """``h(drop(g(x)))``. ``head_dropout`` > 0 adds ``drop``, a Dropout on the features [B, D] before the head
    (the BreastMNIST ablation's head dropout; a regulariser of the head only); at 0 there is no such module,
    so the model, its state-dict keys and its outputs are exactly those of the plain ``h(g(x))``. The
    features ``forward_both`` returns are ``g``'s, before the dropout (what CCSA and the other methods align).
    A method that applies ``h`` to features itself (RSC's muted features) bypasses the dropout."""

    def __init__(self, g: nn.Module, feat_dim: int, num_classes: int, head_dropout: float = 0.0):
        super().__init__()
        self.g = g
        self.h = nn.Linear(feat_dim, num_classes)
        self.feat_dim = feat_dim
        self.drop: nn.Module | None = None
        self.set_head_dropout(head_dropout)

    def set_head_dropout(self, p: float) -> None:
        """Dropout with probability ``p`` before the head (parameter-free: the state dict is unchanged); 0 removes it."""
        if p > 0:
            self.drop = nn.Dropout(p)
        elif self.drop is not None:
            del self.drop
            self.drop = None

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Features [B, D] -> logits [B, K], through the dropout when there is one."""
        return self.h(z if self.drop is None else self.drop(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.g(x))  # [B, K]

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.g(x)
        return self.head(z), z


def _torchvision_resnet(name: str) -> Callable[[str], tuple[nn.Module, int]]:
    def build(weights: str) -> tuple[nn.Module, int]:
        net = getattr(torchvision.models, name)(weights=None)
        if weights == "imagenet":
            enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
            net.load_state_dict(_download_state_dict(enum.url, name))
        feat_dim = net.fc.in_features
        net.fc = nn.Identity()  # g ends at the global average pool: [B, feat_dim]
        return net, feat_dim

    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    BACKBONES.add(_name, _torchvision_resnet(_name))


def _download_state_dict(url: str, name: str) -> dict:
    """torchvision's own download-and-cache; offline with no cached file -> a clear error."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise WeightsUnavailable(
            f"ImageNet weights for {name} are not cached at {cached} and could not be downloaded ({err}). "
            f"Fetch {url} on a connected machine and either place it at {cached} or pass "
            "--weights PATH (or --weights none to start from random init)."
        ) from err


def _timm_backbone(model_name: str, weights: str) -> tuple[nn.Module, int]:
    import timm  # imported here: only timm models need it

    try:
        net = timm.create_model(model_name, pretrained=weights == "imagenet", num_classes=0)
    except (OSError, RuntimeError) as err:
        raise WeightsUnavailable(
            f"ImageNet weights for timm model {model_name!r} are not in the Hugging Face cache and could not "
            f"be downloaded ({err}). Pass --weights PATH with a local state dict, or --weights none."
        ) from err
    return net, net.num_features


@functools.lru_cache(maxsize=None)
def input_normalization(arch: str) -> Normalization:
    """The mean and std (0..1 scale) that ``arch``'s weights were trained with; the same whether the
    run starts from them, from a local file or from random init, so one arch always sees one input."""
    if not arch.startswith("timm:"):
        BACKBONES.get(arch)  # an unknown name fails here, with suggestions
        return IMAGENET
    import timm.data  # imported here: only timm models need it (seconds to import)
    from timm.models import get_pretrained_cfg

    name = arch.split(":", 1)[1]
    pretrained = get_pretrained_cfg(name)  # read from timm's registry; no model is built, nothing downloaded
    if pretrained is None:
        raise KeyError(f"unknown timm model {name!r} (timm.list_models() lists the known ones)")
    resolved = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
    return Normalization(tuple(resolved["mean"]), tuple(resolved["std"]))


def build_plain(arch: str, weights: str = "none", num_classes: int = 7, head_dropout: float = 0.0) -> Classifier:
    """``arch``: a registered name (torchvision ResNet, CBR) or ``timm:<name>``; ``weights``: imagenet | none |
    PATH; ``head_dropout``: see :class:`Classifier`. ``domgen.models.build_model`` adds meanvar[:PATH] and
    transfer:K[:PATH] (:mod:`domgen.models.init`), which builds on this function, so this module never imports
    that one (no import circle)."""
    init = "imagenet" if weights == "imagenet" else "none"
    if arch.startswith("timm:"):
        g, dim = _timm_backbone(arch.split(":", 1)[1], init)
    else:
        g, dim = BACKBONES.get(arch)(init)
    model = Classifier(g, dim, num_classes, head_dropout)
    if weights not in ("imagenet", "none"):
        load_backbone_file(model, Path(weights))
    return model


def load_backbone_file(model: Classifier, path: Path) -> None:
    """Load a local file: a backbone state dict (e.g. torchvision's .pth, its ``fc`` ignored), a
    Classifier state dict, or a domgen checkpoint (its ``model`` entry). Every backbone key must load."""
    if not path.is_file():
        raise WeightsUnavailable(f"--weights {path}: no such file (use imagenet, none, or a path to a .pth)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    if any(k.startswith("g.") for k in state):
        state = {k[2:]: v for k, v in state.items() if k.startswith("g.")}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.fc.", "classifier."))}
    missing, unexpected = model.g.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsUnavailable(
            f"--weights {path} does not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
