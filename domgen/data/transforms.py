"""Reference per-image transforms (PIL + torchvision), the baseline the batched pipeline must match.

The paper's recipe (Yoon, Hamarneh & Garbi, MICCAI 2019, Sec. 3 "Implementation"): resize every image to
650x650, centre crop 300x300, then for training a random resized crop to 224x224 (torchvision defaults
scale=(0.08, 1), ratio=(3/4, 4/3)), random horizontal and vertical flips, rotation by a random multiple of
90 degrees, Cutout with one 64x64 hole (DeVries & Taylor, arXiv:1708.04552, 2017) and normalization
by the mean and std the backbone expects (ImageNet's for the paper's ResNets; see
:func:`domgen.models.input_normalization`). Evaluation: resize 650x650 and centre crop 224x224.

Smaller presets scale the four sizes together, so every builder takes ``resize, crop, out, cutout``.

Cutout fill: as in DeVries & Taylor's code, the hole is applied to the *normalized* tensor and set to 0,
i.e. the hole shows the normalization's mean colour in pixel space. Its centre is uniform over the image and the
hole is clipped at the borders; it spans ``[c - L//2, c - L//2 + L)`` so it is exactly ``L`` wide when
unclipped (DeVries' ``[c - L//2, c + L//2)`` is one pixel narrower for odd L; identical for even L).

Resampling: ``Resize`` and ``RandomResizedCrop`` on PIL images use PIL's bilinear filter, which
antialiases when downscaling. :mod:`domgen.data.cache` uses the very same calls for the deterministic
part, so cached pixels equal this pipeline's ``resize -> centre crop`` output exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` on the 0..1 scale, as the backbone's pretrained weights expect."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)
# Bilinear (antialiased on PIL), the torchvision default for Resize and RandomResizedCrop.
INTERPOLATION = v2.InterpolationMode.BILINEAR


def load_rgb(path: str) -> Image.Image:
    """Decode one image file as an RGB PIL image (dermoscopy JPEGs; grey or RGBA files are converted)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def resize_centre_crop(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """The deterministic front of both pipelines: squash to ``resize x resize``, then centre ``crop``."""
    img = TF.resize(img, [resize, resize], interpolation=INTERPOLATION)
    return TF.center_crop(img, [crop, crop])


def centre_offset(size: int, out: int) -> int:
    """Top/left offset torchvision's ``center_crop`` uses to take ``out`` from ``size`` (round half to even)."""
    return int(round((size - out) / 2.0))


class RandomRot90(torch.nn.Module):
    """Rotate a ``[..., H, W]`` tensor by ``k * 90`` degrees, k uniform in {0, 1, 2, 3} (counter-clockwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(torch.randint(0, 4, ()).item())
        return torch.rot90(x, k, dims=(-2, -1))


class Cutout(torch.nn.Module):
    """One ``length x length`` hole set to ``fill`` in a ``[C, H, W]`` tensor (DeVries & Taylor 2017).

    The centre ``(cy, cx)`` is uniform over the pixels; the hole covers rows ``[cy - L//2, cy - L//2 + L)``
    clipped to the image (same for columns). Applied after normalization, ``fill=0`` is the mean colour.
    Uses torch's global RNG so ``torch.manual_seed`` and DataLoader worker seeding make it reproducible.
    """

    def __init__(self, length: int, fill: float = 0.0):
        super().__init__()
        self.length, self.fill = int(length), float(fill)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        y1, x1 = max(cy - self.length // 2, 0), max(cx - self.length // 2, 0)
        y2, x2 = min(cy - self.length // 2 + self.length, h), min(cx - self.length // 2 + self.length, w)
        x = x.clone()
        x[..., y1:y2, x1:x2] = self.fill
        return x


def _to_normalized_tensor(norm: Normalization) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(norm.mean, norm.std)]


def reference_train_transform(resize: int, crop: int, out: int, cutout: int, norm: Normalization = IMAGENET) -> v2.Compose:
    """Per-image training transform on a PIL image -> float ``[3, out, out]`` (the paper's recipe).

    ``transforms[:2]`` is the deterministic part (resize, centre crop) that the cache stores.
    Rot90 runs on the tensor (it commutes with per-channel normalization).
    """
    return v2.Compose(
        [
            v2.Resize((resize, resize), interpolation=INTERPOLATION),
            v2.CenterCrop(crop),
            v2.RandomResizedCrop(out, interpolation=INTERPOLATION),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomVerticalFlip(p=0.5),
            *_to_normalized_tensor(norm),
            RandomRot90(),
            Cutout(cutout),
        ]
    )


def reference_eval_transform(resize: int, out: int, norm: Normalization = IMAGENET) -> v2.Compose:
    """Per-image evaluation transform: resize ``resize x resize``, centre crop ``out``, normalize."""
    return v2.Compose(
        [v2.Resize((resize, resize), interpolation=INTERPOLATION), v2.CenterCrop(out), *_to_normalized_tensor(norm)]
    )


class ImageFolderDataset(Dataset):
    """Images read from ``paths`` with PIL (RGB), transformed per item; returns ``(transform(img), label)``."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: Callable | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_rgb(self.paths[i])
        return (self.transform(img) if self.transform is not None else img), self.labels[i]
