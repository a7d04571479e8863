"""Backbones from torchvision and timm, split as f = h o g.

``g`` maps an image batch [B, 3, H, W] to penultimate features [B, D] (D = 512 for ResNet-18) and
``h`` is one linear layer to the logits [B, K]. CCSA (Yoon et al., eq. 3-4) aligns ``g``'s output.

The named lineup of the documents (issue #14), torchvision where it has the model, timm otherwise:

===================  ==========================================  =====  ===================
name                 model (``weights=imagenet`` loads)          D      normalisation
===================  ==========================================  =====  ===================
resnet18/50/152      torchvision ResNet (IMAGENET1K_V1)          512/2048/2048  ImageNet
densenet121          torchvision DenseNet-121 (IMAGENET1K_V1)    1024   ImageNet
vgg19_bn             torchvision VGG-19-BN (IMAGENET1K_V1), g    4096   ImageNet
                     ends after the second 4096-d fc layer
efficientnet_b0      torchvision EfficientNet-B0 (IMAGENET1K_V1) 1280   ImageNet
convnext_tiny        torchvision ConvNeXt-T (IMAGENET1K_V1)      768    ImageNet
vit_tiny             timm vit_tiny_patch16_224.augreg_in21k_ft_in1k   192  0.5 / 0.5
vit_small            timm vit_small_patch16_224.augreg_in21k_ft_in1k  384  0.5 / 0.5
vit_small_dinov2     timm vit_small_patch14_dinov2.lvd142m (DINOv2,   384  ImageNet
                     self-supervised on LVD-142M, Oquab et al. 2024)
===================  ==========================================  =====  ===================

The ViT entries accept any input size (timm's ``dynamic_img_size``: the position embedding is
interpolated to the patch grid; ``dynamic_img_pad``: an image not a multiple of the patch is padded), so the smoke preset's 28 px images run; VGG-19's five poolings need
at least 32 px. ``timm:<name>`` still builds any other timm model.

Each backbone says what input it expects (:func:`input_normalization`): ImageNet's mean and std for the
torchvision models, and for a timm model its own pretrained config (``timm.data.resolve_data_config``;
e.g. mean = std = 0.5 for the AugReg ViTs), as timm's own training and inference scripts do.

``weights`` (``model.weights``, ``--weights``): ``imagenet`` (the entry's pretrained weights, for the
DINOv2 entry its LVD-142M ones), ``none``, a local ``PATH``, or ``timm:<model>.<tag>`` (a timm pretrained
tag, e.g. ``timm:vit_small_patch14_dinov2.lvd142m``), whose state dict must fit ``g`` key for key.
Offline with nothing cached, each fails with :class:`WeightsUnavailable` saying how to pass a local file.
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


def _torchvision_classifier(name: str, last: int | None) -> Callable[[str], tuple[nn.Module, int]]:
    """A torchvision model whose ``classifier`` ends in the ImageNet Linear: that Linear (``classifier[last]``,
    or the whole ``classifier`` when ``last`` is None) becomes an Identity, so g gives its input features."""

    def build(weights: str) -> tuple[nn.Module, int]:
        net = getattr(torchvision.models, name)(weights=None)
        if weights == "imagenet":
            enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
            net.load_state_dict(_download_state_dict(enum.url, name))
        if last is None:
            feat_dim, net.classifier = net.classifier.in_features, nn.Identity()
        else:
            feat_dim = net.classifier[last].in_features
            net.classifier[last] = nn.Identity()  # keep the index: the state-dict keys stay torchvision's
        return net, feat_dim

    return build


# densenet121: features -> relu -> pool -> [B, 1024]; vgg19_bn: features -> pool -> fc 4096 -> fc 4096 ->
# [B, 4096] (the ImageNet MLP is kept, as fine-tuning studies of VGG do); efficientnet_b0: [B, 1280] after
# dropout; convnext_tiny: LayerNorm2d -> flatten -> [B, 768].
for _name, _last in (("densenet121", None), ("vgg19_bn", 6), ("efficientnet_b0", 1), ("convnext_tiny", 2)):
    BACKBONES.add(_name, _torchvision_classifier(_name, _last))

# Named timm entries: domgen name -> timm model name with its pretrained tag (the weights ``imagenet`` loads
# and the normalisation comes from).
TIMM_LINEUP = {
    "vit_tiny": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_small_dinov2": "vit_small_patch14_dinov2.lvd142m",
}


def _timm_entry(model_name: str) -> Callable[[str], tuple[nn.Module, int]]:
    return lambda weights: _timm_backbone(model_name, weights, dynamic_img_size=True, dynamic_img_pad=True)


for _name, _model in TIMM_LINEUP.items():
    BACKBONES.add(_name, _timm_entry(_model))


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


def _timm_backbone(model_name: str, weights: str, **kwargs) -> tuple[nn.Module, int]:
    import timm  # imported here: only timm models need it

    try:
        net = timm.create_model(model_name, pretrained=weights == "imagenet", num_classes=0, **kwargs)
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
        if arch not in TIMM_LINEUP:
            return IMAGENET
    import timm.data  # imported here: only timm models need it (seconds to import)
    from timm.models import get_pretrained_cfg

    name = TIMM_LINEUP.get(arch) or arch.split(":", 1)[1]
    pretrained = get_pretrained_cfg(name)  # read from timm's registry; no model is built, nothing downloaded
    if pretrained is None:
        raise KeyError(f"unknown timm model {name!r} (timm.list_models() lists the known ones)")
    resolved = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
    return Normalization(tuple(resolved["mean"]), tuple(resolved["std"]))


def build_plain(arch: str, weights: str = "none", num_classes: int = 7, head_dropout: float = 0.0) -> Classifier:
    """``arch``: a registered name (the lineup above, CBR) or ``timm:<name>``; ``weights``: imagenet | none |
    PATH | timm:<model>.<tag>; ``head_dropout``: see :class:`Classifier`. ``domgen.models.build_model`` adds meanvar[:PATH] and
    transfer:K[:PATH] (:mod:`domgen.models.init`), which builds on this function, so this module never imports
    that one (no import circle)."""
    init = "imagenet" if weights == "imagenet" else "none"
    if arch.startswith("timm:"):
        g, dim = _timm_backbone(arch.split(":", 1)[1], init)
    else:
        g, dim = BACKBONES.get(arch)(init)
    model = Classifier(g, dim, num_classes, head_dropout)
    if weights.startswith("timm:"):
        load_timm_weights(model, weights.split(":", 1)[1])
    elif weights not in ("imagenet", "none"):
        load_backbone_file(model, Path(weights))
    return model


def load_timm_weights(model: Classifier, tag: str) -> None:
    """Load timm's pretrained ``<model>.<tag>`` into ``g`` (Hugging Face cache or download); every key must fit."""
    import timm

    try:
        source = timm.create_model(tag, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as err:  # offline: huggingface_hub's errors are OSErrors
        raise WeightsUnavailable(
            f"--weights timm:{tag}: the pretrained weights are not in the Hugging Face cache and could not be "
            f"downloaded ({type(err).__name__}: {err}). Fetch them on a connected machine (timm.create_model("
            f"{tag!r}, pretrained=True)) and copy the cache, or pass --weights PATH, or --weights none."
        ) from err
    missing, unexpected = model.g.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise WeightsUnavailable(f"--weights timm:{tag} does not fit the backbone: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]} (pick the arch of the same model)")


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
