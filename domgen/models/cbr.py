"""The CBR family of Raghu, Zhang, Kleinberg & Bengio, "Transfusion: Understanding Transfer Learning for
Medical Imaging" (NeurIPS 2019), registered as backbones ``cbr_large_t``, ``cbr_large_w``, ``cbr_small``,
``cbr_tiny``.

Layer lists, as the paper's appendix states them (quoted in public reading notes of the paper and in a
CBR-Tiny implementation's header; the paper PDF itself was not in the searchable corpora). Two further
public reimplementations, written independently of those notes, use the same four lists (kernel 7 with
32..512 / 64..512 / 32..256 channels for LargeT / LargeW / Small, kernel 5 with 64..512 for Tiny, every
max pool 3x3 with stride 2), so CBR-Tiny's 64..512 is the appendix's, even though the Table 1 count we
recall for it (1,076,480) fits 32..256 channels instead (tests/test_cbr_init.py):

- CBR-LargeT(all), 7x7 filters: (conv32-bn-relu) maxpool (conv64-bn-relu) maxpool (conv128-bn-relu) maxpool
  (conv256-bn-relu) maxpool (conv512-bn-relu), global avgpool, classification  [no maxpool after the last]
- CBR-LargeW(ide), 7x7: (conv64-bn-relu) maxpool (conv128) maxpool (conv256) maxpool (conv512) maxpool, avgpool
- CBR-Small, 7x7: (conv32-bn-relu) maxpool (conv64) maxpool (conv128) maxpool (conv256) maxpool, avgpool
- CBR-Tiny, 5x5: (conv64-bn-relu) maxpool (conv128) maxpool (conv256) maxpool (conv512) maxpool, avgpool
- every maxpool has a 3x3 window and stride 2; every convolution has stride 1.

Choices the appendix leaves open (none changes a parameter count): convolutions are padded to keep the
size ("SAME", TF-Slim's default; the paper used TensorFlow) and carry no bias (the BN that follows makes one
redundant); max pools are padded by 1, so each halves the size rounding up (TF's "SAME" sizes) and small
inputs (the smoke presets' 28 px) never shrink to nothing, where unpadded pools would stop at 2x2 after
three. ``g`` ends at the global average pool, so ``h`` (domgen's linear head) is the paper's
"classification" layer.

No ImageNet weights exist for these models (the paper trained its own): ``--weights imagenet`` fails with
a clear message; a local file (``PATH``, ``meanvar:PATH``, ``transfer:K:PATH``) works as for every
backbone. Input normalisation: ImageNet's mean and std (:func:`domgen.models.input_normalization`), so a
CBR model sees the same inputs as the torchvision ResNets it is compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from domgen.models.backbones import BACKBONES, WeightsUnavailable

# name -> (kernel size, output channels per conv, whether the last conv is followed by a max pool)
CBR_SPECS: dict[str, tuple[int, tuple[int, ...], bool]] = {
    "cbr_large_t": (7, (32, 64, 128, 256, 512), False),
    "cbr_large_w": (7, (64, 128, 256, 512), True),
    "cbr_small": (7, (32, 64, 128, 256), True),
    "cbr_tiny": (5, (64, 128, 256, 512), True),
}


def _cbr_block(c_in: int, c_out: int, k: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride=1, padding=k // 2, bias=False),
                               nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))  # [h, w] -> [ceil(h/2), ceil(w/2)]
    return nn.Sequential(*layers)


class CBR(nn.Module):
    """conv-BN-ReLU blocks ``layer1`` .. ``layerN`` (each with its max pool), then the global average pool:
    [B, 3, H, W] -> [B, channels[-1]]. ``block_names`` lists the blocks bottom-up (for ``transfer:K`` and
    the per-layer similarity analysis)."""

    def __init__(self, kernel: int, channels: tuple[int, ...], pool_last: bool, in_channels: int = 3):
        super().__init__()
        self.block_names = tuple(f"layer{i + 1}" for i in range(len(channels)))
        c_in = in_channels
        for i, (name, c_out) in enumerate(zip(self.block_names, channels)):
            self.add_module(name, _cbr_block(c_in, c_out, kernel, pool=pool_last or i < len(channels) - 1))
            c_in = c_out
        self.num_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))  # global average pool: [B, C, h, w] -> [B, C]


def _builder(name: str):
    kernel, channels, pool_last = CBR_SPECS[name]

    def build(weights: str) -> tuple[nn.Module, int]:
        if weights == "imagenet":
            raise WeightsUnavailable(
                f"no ImageNet weights are published for {name} (Raghu et al. trained their own); use --weights "
                "none, a local PATH, meanvar:PATH or transfer:K:PATH")
        net = CBR(kernel, channels, pool_last)
        return net, net.num_features

    return build


for _name in CBR_SPECS:
    BACKBONES.add(_name, _builder(_name))
