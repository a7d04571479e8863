"""The paper's training augmentation, applied to a whole uint8 batch on its own device.

Input is a channels-last uint8 batch read from the image cache (:mod:`domgen.data.cache`;
``[B, H, W, 3]``, the resized + centre-cropped images). Per sample it draws the same random choices as
:func:`domgen.data.transforms.reference_train_transform` (Yoon et al., MICCAI 2019, Sec. 3):

- a random resized crop with torchvision's ``RandomResizedCrop.get_params`` distribution
  (area ~ U(scale) * H * W, log-aspect ~ U(log ratio), 10 attempts, then the centre-crop fallback);
- horizontal and vertical flips (p=0.5 each) and a rotation by k*90 degrees, k uniform in {0..3};
- Cutout (DeVries & Taylor 2017): one ``cutout x cutout`` hole, centre uniform, clipped, set to 0 after
  normalization (the mean colour), as in :class:`domgen.data.transforms.Cutout`.

Pixel work: each crop box is resized to ``out x out`` by ``F.interpolate`` (bilinear, antialiased, as
PIL's resize in the reference; on CPU torch's uint8 channels-last kernel, ~4x faster than one batched
float ``grid_sample``), one call per sample on a view of the batch; for a given box the result equals
``torchvision...resized_crop(img, box, antialias=True)``. Flips and the rotation are then one batched
gather through a precomputed table of the 8 pixel permutations of the square, and normalization and
Cutout are batched too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from domgen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, centre_offset

ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries 10 boxes before falling back


@dataclass
class AugmentParams:
    """Per-sample random choices (CPU tensors of length B): crop box, flips, rotation, Cutout centre."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    k: torch.Tensor  # rotations by 90 degrees counter-clockwise, in {0, 1, 2, 3}
    cy: torch.Tensor  # Cutout centre in output pixels
    cx: torch.Tensor


def sample_crop_boxes(
    n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` boxes ``(top, left, h, w)`` distributed as ``RandomResizedCrop.get_params`` on an HxW image.

    Vectorized: all 10 attempts are drawn for every sample and the first valid one is kept, which is
    the same distribution as torchvision's loop that stops at the first valid attempt.
    """
    area = height * width
    u = torch.rand(n, ATTEMPTS, 2, generator=generator, dtype=torch.float64)
    target_area = area * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r[0] + u[..., 1] * (log_r[1] - log_r[0]))
    w = torch.round(torch.sqrt(target_area * aspect)).long()  # round half to even, like Python's round
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [n, ATTEMPTS]
    first = valid.long().argmax(dim=1)  # index of the first valid attempt (0 if none)
    ok = valid.any(dim=1)
    h = h.gather(1, first[:, None])[:, 0]
    w = w.gather(1, first[:, None])[:, 0]
    fh, fw = _fallback_box(height, width, ratio)
    h = torch.where(ok, h, torch.full_like(h, fh))
    w = torch.where(ok, w, torch.full_like(w, fw))
    # Position uniform over the valid offsets, like torch.randint(0, H - h + 1).
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(ok, (pos[:, 0] * (height - h + 1)).floor().long(), (height - h) // 2)
    left = torch.where(ok, (pos[:, 1] * (width - w + 1)).floor().long(), (width - w) // 2)
    return top, left, h, w


def _fallback_box(height: int, width: int, ratio) -> tuple[int, int]:
    """torchvision's fallback: the largest centred box whose aspect ratio is within ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _dihedral_index(out: int, device) -> torch.Tensor:
    """``[16, out*out]``: row ``8h + 4v + k`` lists, for each output pixel, the input pixel that
    ``rot90(vflip?(hflip?(img)), k)`` reads. Flips and rotations only permute pixels, so applying them to an
    index image gives the gather that applies them to every image at once."""
    idx = torch.arange(out * out, device=device).view(out, out)
    rows = []
    for h in (0, 1):
        for v in (0, 1):
            for k in range(4):
                t = idx.flip(-1) if h else idx
                t = t.flip(-2) if v else t
                rows.append(torch.rot90(t, k, (-2, -1)).reshape(-1))
    return torch.stack(rows)


def _cutout_mask(cy: torch.Tensor, cx: torch.Tensor, length: int, out: int) -> torch.Tensor:
    """Bool ``[B, out, out]``, True inside each sample's clipped hole ``[c - L//2, c - L//2 + L)``."""
    ar = torch.arange(out, device=cy.device)
    y1, x1 = (cy - length // 2)[:, None], (cx - length // 2)[:, None]
    rows = (ar >= y1) & (ar < y1 + length)  # [B, out]; clipping is implicit in the arange range
    cols = (ar >= x1) & (ar < x1 + length)
    return rows[:, :, None] & cols[:, None, :]


def _normalize_(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """In place: 0..255 floats ``[B, 3, h, w]`` -> ``(x / 255 - mean) / std``."""
    return x.sub_(mean.to(x.device) * 255.0).div_(std.to(x.device) * 255.0)


def eval_batch(
    x: torch.Tensor, out: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int | None = None
) -> torch.Tensor:
    """Centre ``out x out`` crop of uint8 ``[B, H, W, 3]`` + normalize -> float ``[B, 3, out, out]``.

    With ``resize`` (the size the cache was resized to), the offset reproduces the reference exactly:
    ``centre_crop(resize(img), out)`` starts at ``round((resize-out)/2)`` in the resized image, which is
    ``round((resize-out)/2) - round((resize-H)/2)`` in the cached centre crop. Without it, the centre of
    ``x`` is used; the two agree whenever ``resize - H`` and ``H - out`` are even (e.g. 650/300/224).
    """
    h, w = x.shape[1:3]
    top = centre_offset(h, out) if resize is None else centre_offset(resize, out) - centre_offset(resize, h)
    left = centre_offset(w, out) if resize is None else centre_offset(resize, out) - centre_offset(resize, w)
    crop = x[:, top : top + out, left : left + out].permute(0, 3, 1, 2).float()
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return _normalize_(crop.contiguous(), m, s)


class BatchAugment(torch.nn.Module):
    """Random resized crop, flips, rot90, normalization and Cutout on a uint8 ``[B, H, W, 3]`` batch.

    ``forward(x, generator=None) -> float [B, 3, out, out]`` on ``x.device``. Random choices are drawn on
    the CPU from ``generator`` (a ``torch.Generator`` or an int seed; global RNG if None), so results
    depend on the seed only, not on the device.
    """

    def __init__(self, out: int, cutout: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, hflip: bool = True,
                 vflip: bool = True, rot90: bool = True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__()
        self.out, self.cutout = int(out), int(cutout)
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._scratch: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], device: torch.device, dtype=torch.float32) -> torch.Tensor:
        """A scratch tensor kept between calls: on CPU, fresh large allocations cost more in page faults
        than the arithmetic itself. So a module must not be called from two threads at once."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.device != device or buf.dtype != dtype:
            buf = self._scratch[name] = torch.empty(shape, device=device, dtype=dtype)
        return buf

    def sample(self, n: int, height: int, width: int, generator=None) -> AugmentParams:
        """Draw the per-sample random choices for a batch of ``n`` images of size ``height x width``."""
        g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        top, left, h, w = sample_crop_boxes(n, height, width, self.scale, self.ratio, g)
        coins = torch.rand(n, 2, generator=g)
        no = torch.zeros(n, dtype=torch.bool)
        k = torch.randint(0, 4, (n,), generator=g) if self.rot90 else torch.zeros(n, dtype=torch.long)
        centre = torch.randint(0, self.out, (n, 2), generator=g)
        return AugmentParams(top, left, h, w, coins[:, 0] < 0.5 if self.hflip else no,
                             coins[:, 1] < 0.5 if self.vflip else no, k, centre[:, 0], centre[:, 1])

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return self.augment(x, self.sample(x.shape[0], x.shape[1], x.shape[2], generator))

    def augment(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Apply given choices to uint8 ``[B, H, W, 3]`` -> normalized float ``[B, 3, out, out]``."""
        return self.finish(self.geometry(x, p).float(), p)

    def geometry(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """The crop, flips and rotation of uint8 ``[B, H, W, 3]`` -> ``[B, 3, out, out]`` on 0..255 (uint8 on
        the CPU, float elsewhere; see :meth:`_resized_crops`)."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        dev, out, b = x.device, self.out, x.shape[0]
        crops = self._resized_crops(x.permute(0, 3, 1, 2), p)  # [B, 3, out, out], channels-last view in
        combo = (8 * p.hflip.long() + 4 * p.vflip.long() + p.k).to(dev)  # [B] row of the dihedral table
        index = self._index(out, dev)[combo]  # [B, out*out]
        return crops.view(b, 3, -1).gather(2, index[:, None, :].expand(b, 3, -1)).view(b, 3, out, out)

    def finish(self, y: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Normalize float ``y`` [B, 3, out, out] on 0..255 in place, then Cutout (the hole set to 0)."""
        y = _normalize_(y, self.mean, self.std)
        return y.masked_fill_(_cutout_mask(p.cy.to(y.device), p.cx.to(y.device), self.cutout, self.out)[:, None], 0.0)

    def _resized_crops(self, src: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        """Each sample's box resized to out x out: uint8 on CPU (torch's fast antialiased kernel), float
        elsewhere (antialiased bilinear is defined for float on CUDA)."""
        cpu = src.device.type == "cpu"
        crops = self._buffer("crops", (src.shape[0], 3, self.out, self.out), src.device, torch.uint8 if cpu else torch.float32)
        boxes = zip(p.top.tolist(), p.left.tolist(), p.height.tolist(), p.width.tolist())
        for i, (t, l, h, w) in enumerate(boxes):
            box = src[i : i + 1, :, t : t + h, l : l + w]
            box = box if cpu else box.float()
            crops[i] = F.interpolate(box, size=(self.out, self.out), mode="bilinear", antialias=True, align_corners=False)[0]
        return crops

    def _index(self, out: int, device: torch.device) -> torch.Tensor:
        key = f"dihedral{out}"
        if key not in self._scratch or self._scratch[key].device != device:
            self._scratch[key] = _dihedral_index(out, device)
        return self._scratch[key]
