"""The paper's training augmentation, applied to a whole uint8 batch on its own device.

Input is the channels-last uint8 batch gathered from :class:`domgen.data.cache.CachedImages`
(``[B, H, W, 3]``, the resized + centre-cropped images). Per sample it draws the same random choices as
:func:`domgen.data.transforms.reference_train_transform` (Yoon et al., MICCAI 2019, Sec. 3):

- a random resized crop with torchvision's ``RandomResizedCrop.get_params`` distribution
  (area ~ U(scale) * H * W, log-aspect ~ U(log ratio), 10 attempts, then the centre-crop fallback);
- horizontal and vertical flips (p=0.5 each) and a rotation by k*90 degrees, k uniform in {0..3};
- Cutout (DeVries & Taylor 2017): one ``cutout x cutout`` hole, centre uniform, clipped, set to 0 after
  normalization (the mean colour), as in :class:`domgen.data.transforms.Cutout`.

All pixel work is batched, with no loop over samples: the crop box, flips, rotation and Cutout hole
become one sampling grid per sample (``[B, out, out, 2]``) and a single ``F.grid_sample`` does the
bilinear resample (hole pixels read an extra row of mean colour, so they normalize to exactly 0). For a given box the
result equals ``torchvision...resized_crop(img, box, antialias=False)`` (same source coordinates, clamped
to the box); unlike the PIL reference it does not antialias when the box is larger than ``out`` (at the
paper's sizes at most 300 -> 224, a 1.34x downscale, so the difference is slight).
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


def _axis_coords(start: torch.Tensor, length: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """Source coordinates ``[B, out]`` of a bilinear resize of ``[start, start+length)`` to ``out`` pixels.

    Same as ``F.interpolate(..., align_corners=False)`` on the cropped box: ``(i + 0.5) * length / out - 0.5``,
    clamped to the box; returned normalized for ``grid_sample(align_corners=True)`` over ``size`` pixels.
    """
    i = torch.arange(out, dtype=torch.float32, device=start.device)
    ln = length.to(torch.float32)[:, None]
    src = ((i + 0.5) * ln / out - 0.5).clamp(min=0.0)
    src = torch.minimum(src, ln - 1) + start.to(torch.float32)[:, None]
    return src * (2.0 / (size - 1)) - 1.0


def _sampling_grid(xs: torch.Tensor, ys: torch.Tensor, p: AugmentParams, hole: torch.Tensor,
                   grid: torch.Tensor) -> torch.Tensor:
    """Grid ``[B, out, out, 2]`` for ``rot90(vflip(hflip(resized_crop)), k)`` from 1-D coordinates ``[B, out]``.

    With ``out[i, j] = U[r, c]``, ``torch.rot90(U, k, (-2, -1))`` reads ``(r, c) = (i, j)``, ``(j, n-1-i)``,
    ``(n-1-i, n-1-j)``, ``(n-1-j, i)`` for k = 0..3: a transpose when k is odd plus reversals. So each
    sample needs only reversed 1-D coordinate vectors and, for odd k, x varying along rows.
    Cutout pixels (``hole``, ``[B, out, out]``) get y = 1, the extra mean-colour row (see ``augment``).
    Writes into and returns ``grid``.
    """
    k = p.k
    flip_x = p.hflip ^ ((k == 1) | (k == 2))  # hflip reverses columns; k=1, 2 reverse them again
    flip_y = p.vflip ^ ((k == 2) | (k == 3))
    xs = torch.where(flip_x[:, None], xs.flip(1), xs)
    ys = torch.where(flip_y[:, None], ys.flip(1), ys)
    odd = (k % 2 == 1)[:, None, None]
    # where(..., out=) writes the strided halves directly: ~10x cheaper than where + stack on CPU.
    torch.where(odd, xs[:, :, None], xs[:, None, :], out=grid[..., 0])  # along j, or along i if odd
    torch.where(odd, ys[:, None, :], ys[:, :, None], out=grid[..., 1])
    grid[..., 1].masked_fill_(hole, 1.0)
    return grid


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

    def _buffer(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A float32 scratch tensor kept between calls: on CPU, fresh 30 MB allocations cost more in page
        faults than the arithmetic itself. So a module must not be called from two threads at once."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.device != device:
            buf = self._scratch[name] = torch.empty(shape, device=device)
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
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        dev, out, (b, h, w) = x.device, self.out, x.shape[:3]
        p = AugmentParams(**{f: getattr(p, f).to(dev) for f in AugmentParams.__dataclass_fields__})
        # Float copy with one extra row of mean colour (255 * mean): Cutout pixels sample it, so they
        # become exactly 0 after normalization without another pass over the output.
        # NCHW: grid_sample's CPU kernel is ~20% faster on it than on channels-last, worth the transpose.
        img = self._buffer("image", (b, 3, h + 1, w), dev)
        img[:, :, :h].copy_(x.permute(0, 3, 1, 2))
        img[:, :, h] = self.mean.to(dev).view(1, 3, 1) * 255.0
        xs = _axis_coords(p.left, p.width, out, w)  # [B, out] normalized column coordinates
        ys = _axis_coords(p.top, p.height, out, h + 1)
        hole = _cutout_mask(p.cy, p.cx, self.cutout, out)  # [B, out, out]
        grid = _sampling_grid(xs, ys, p, hole, self._buffer("grid", (b, out, out, 2), dev))
        y = F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                          align_corners=True)  # [B, 3, out, out]
        return _normalize_(y, self.mean, self.std)

    def eval_batch(self, x: torch.Tensor, out: int | None = None, resize: int | None = None) -> torch.Tensor:
        """Centre crop + normalize with this module's mean/std (see :func:`eval_batch`)."""
        return eval_batch(x, out or self.out, self.mean.flatten().tolist(), self.std.flatten().tolist(), resize)
