"""Named training augmentation policies (``augment.policy``), batched on the device and as a PIL reference.

Each policy is a list of operations with their parameters (:class:`Policy`), applied in this order by both
paths, the cached batch path (:class:`PolicyAugment`, on a uint8 batch of cached ``crop x crop`` images) and
the per-image PIL reference (:func:`policy_train_transform`, ``data.cached=false``); the two agree in
distribution (tests/test_policies.py compares per-op statistics over many draws; in the reference, the
steps after the crop, flips and RandAugment run on the float tensor, through the torchvision kernels the
batched path reproduces, as the paper reference's rot90 does):

1. crop to ``transform.size``: ``centre`` (none), ``random`` (a uniform ``size x size`` window, no rescaling:
   basic) or ``resized`` (``RandomResizedCrop``, scale (0.08, 1), ratio (3/4, 4/3): paper, dermoscopy, heavy);
2. horizontal and vertical flips, each with p = 0.5 (dermoscopy has no canonical orientation);
3. RandAugment (Cubuk et al., CVPR-W 2020; torchvision's ``RandAugment``, N ops of magnitude M, per image)
   on the uint8 image (heavy: N = 2, M = 9, the paper's ImageNet ResNet-50 setting);
4. rotation: ``rot90`` (k x 90 degrees, paper) or ``free``: an angle uniform over the full circle [0, 360),
   counter-clockwise, bilinear, corners filled with black (dermoscopy, heavy);
5. colour jitter, in this fixed order: brightness, contrast, saturation (factors uniform in
   [max(0, 1 - s), 1 + s]) and hue (shift uniform in [-h, h]), torchvision's ``ColorJitter`` formulas; each
   image its own factors. dermoscopy: s = ``augment.jitter`` (default 0.1, mild), h = s / 2; heavy: s = 0.4,
   h = 0.1 (SimCLR's strong jitter strengths, Chen et al. 2020);
6. Gaussian blur with probability p, sigma uniform in [0.1, 2] and a kernel of about a tenth of the image
   (odd, >= 3), reflect padding, torchvision's ``GaussianBlur`` (heavy: p = 0.5; dermoscopy: none);
7. normalisation by the backbone's mean and std, then Cutout (paper only).

``paper`` is Yoon et al.'s recipe and is NOT run through this module: :class:`domgen.data.batch_augment.
BatchAugment` and :func:`domgen.data.transforms.reference_train_transform` stay its code, byte for byte.
``none`` trains on the evaluation crop (resize, centre crop ``size``). All random choices of the batched path
are drawn on the CPU from the epoch's generator (RandAugment's, which uses torch's global RNG, inside a
forked RNG seeded from it), so a batch depends on (seed, epoch) only, as the paper recipe's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from domgen.config import AugmentConfig
from domgen.data.batch_augment import AugmentParams, BatchAugment, eval_batch
from domgen.data.transforms import (IMAGENET, INTERPOLATION, Cutout, Normalization, RandomRot90, reference_eval_transform,
                                    reference_train_transform)

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
BLUR_SIGMA = (0.1, 2.0)  # torchvision GaussianBlur's default sigma range (SimCLR's)


@dataclass(frozen=True)
class Policy:
    """The operations of one policy, in the order of the module docstring."""

    crop: str = "centre"  # centre | random | resized
    flips: bool = False
    randaugment: int = 0  # RandAugment ops per image (0: none)
    magnitude: int = 9  # RandAugment magnitude M (of 31 bins)
    rotation: str = "none"  # none | rot90 | free
    jitter: float = 0.0  # brightness, contrast and saturation strength s
    hue: float = 0.0  # hue shift bound h (of a full turn, <= 0.5)
    blur: float = 0.0  # probability of the Gaussian blur
    cutout: bool = False


def make_policy(cfg: AugmentConfig) -> Policy:
    """The :class:`Policy` ``augment.policy`` names (``augment.jitter``: dermoscopy's strength)."""
    policies = {
        "none": Policy(),
        "basic": Policy(crop="random", flips=True),
        "paper": Policy(crop="resized", flips=True, rotation="rot90", cutout=True),
        "dermoscopy": Policy(crop="resized", flips=True, rotation="free", jitter=cfg.jitter, hue=cfg.jitter / 2),
        "heavy": Policy(crop="resized", flips=True, randaugment=2, magnitude=9, rotation="free", jitter=0.4, hue=0.1, blur=0.5),
    }
    if cfg.policy not in policies:
        raise ValueError(f"augment.policy must be one of {', '.join(policies)}, got {cfg.policy!r}")
    return policies[cfg.policy]


def blur_kernel_size(out: int) -> int:
    """About a tenth of the image, odd, at least 3 (23 for 224; SimCLR's 10%)."""
    return max(3, int(0.1 * out) // 2 * 2 + 1)


@dataclass
class PolicyParams:
    """Per-sample random choices of a policy (CPU tensors of length B) beside the geometric ones."""

    geometry: AugmentParams  # crop box, flips, rot90 k, Cutout centre
    angle: torch.Tensor  # free rotation, degrees counter-clockwise in [0, 360) (0 when off)
    brightness: torch.Tensor  # jitter factors (1 when off)
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # shift in [-h, h]
    blur: torch.Tensor  # bool
    sigma: torch.Tensor
    seeds: torch.Tensor  # int64 seed of each image's RandAugment draws


def _uniform(n: int, lo: float, hi: float, g) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


class PolicyAugment(torch.nn.Module):
    """A :class:`Policy` on a uint8 ``[B, H, W, 3]`` batch -> normalised float ``[B, 3, out, out]`` on its device.

    ``resize``: the size the cache was resized to (for ``none``, whose centre crop then equals the PIL
    reference's exactly, as :func:`eval_batch`'s)."""

    def __init__(self, policy: Policy, out: int, cutout: int = 0, norm: Normalization = IMAGENET, resize: int | None = None):
        super().__init__()
        self.policy, self.out, self.resize, self.norm = policy, int(out), resize, norm
        # the paper path's pixel kernels (antialiased resized crops, the dihedral gather, Cutout), reused
        self.base = BatchAugment(out, cutout if policy.cutout else 0, norm.mean, norm.std, hflip=policy.flips,
                                 vflip=policy.flips, rot90=policy.rotation == "rot90")
        self.randaugment = v2.RandAugment(num_ops=policy.randaugment, magnitude=policy.magnitude) if policy.randaugment else None

    def sample(self, n: int, height: int, width: int, generator=None) -> PolicyParams:
        g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
        p, out = self.policy, self.out
        geo = self.base.sample(n, height, width, g)  # the paper's draws: RandomResizedCrop box, flips, k, Cutout
        if p.crop == "random":  # a uniform out x out window, as v2.RandomCrop
            geo.top = torch.randint(0, height - out + 1, (n,), generator=g)
            geo.left = torch.randint(0, width - out + 1, (n,), generator=g)
            geo.height = geo.width = torch.full((n,), out, dtype=torch.long)
        one = torch.ones(n, dtype=torch.float64)
        s, h = p.jitter, p.hue
        jitter = [_uniform(n, max(0.0, 1 - s), 1 + s, g) if s else one for _ in range(3)]
        return PolicyParams(
            geometry=geo,
            angle=_uniform(n, 0.0, 360.0, g) if p.rotation == "free" else torch.zeros(n, dtype=torch.float64),
            brightness=jitter[0], contrast=jitter[1], saturation=jitter[2],
            hue=_uniform(n, -h, h, g) if h else torch.zeros(n, dtype=torch.float64),
            blur=torch.rand(n, generator=g) < p.blur, sigma=_uniform(n, *BLUR_SIGMA, g),
            seeds=torch.randint(0, 2**62, (n,), generator=g))

    def forward(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        if self.policy.crop == "centre":  # none: the evaluation crop, nothing random
            return eval_batch(x, self.out, self.norm.mean, self.norm.std, resize=self.resize)
        return self.augment(x, self.sample(x.shape[0], x.shape[1], x.shape[2], generator))

    def augment(self, x: torch.Tensor, p: PolicyParams) -> torch.Tensor:
        """Apply given choices to uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, out, out]``."""
        y = self.base.geometry(x, p.geometry)  # [B, 3, out, out], 0..255 (float, or uint8 on the CPU)
        if self.randaugment is not None:
            y = self._randaugment(y, p.seeds)
        y = y.float().div_(255.0)  # 0..1 from here on, as torchvision's float kernels expect
        if self.policy.rotation == "free":
            y = rotate(y, p.angle.to(y.device))
        if self.policy.jitter or self.policy.hue:
            y = colour_jitter(y, p.brightness, p.contrast, p.saturation, p.hue)
        if self.policy.blur:
            y = torch.where(p.blur.to(y.device)[:, None, None, None], gaussian_blur(y, p.sigma, blur_kernel_size(self.out)), y)
        y = y.mul_(255.0)  # the paper path's normalisation (and Cutout) take 0..255
        return self.base.finish(y, p.geometry)

    def _randaugment(self, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Each image through RandAugment with its own seed (torch's global RNG, forked: left as it was)."""
        y = y if y.dtype == torch.uint8 else y.round().clamp_(0, 255).to(torch.uint8)  # CUDA crops are float
        with torch.random.fork_rng(devices=[]):
            for i, seed in enumerate(seeds.tolist()):
                torch.manual_seed(seed)
                y[i] = self.randaugment(y[i])
        return y


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``x`` [B, C, H, W] by its angle (degrees, counter-clockwise, about the centre;
    bilinear, black outside), as ``torchvision...rotate`` does one image."""
    th = degrees.to(torch.float64) * (math.pi / 180.0)
    c, s = torch.cos(th), torch.sin(th)
    zero = torch.zeros_like(c)
    # output -> input sampling grid in normalised coordinates (y down): a square image is isotropic
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1).to(x.dtype)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)  # [B, 1, H, W]


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``clamp(f x + (1 - f) other, 0, 1)`` with one factor per image."""
    f = factor.to(x.device, x.dtype).view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def colour_jitter(x: torch.Tensor, brightness, contrast, saturation, hue) -> torch.Tensor:
    """Brightness, contrast, saturation, then hue, each image its own factor: torchvision's
    ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue`` on float [B, 3, H, W]
    in 0..1, batched (hue, a conversion through HSV, image by image where the shift is not 0)."""
    x = _blend(x, torch.zeros_like(x[:, :1]), brightness)
    x = _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), contrast)
    x = _blend(x, _gray(x), saturation)
    for i, h in enumerate(hue.tolist()):
        if h:
            x[i] = TF.adjust_hue(x[i], h)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Each image blurred with its own sigma: torchvision's separable ``k``-tap kernel, reflect padding."""
    b, c = x.shape[:2]
    half = (k - 1) * 0.5
    t = torch.linspace(-half, half, k, device=x.device, dtype=x.dtype)
    kern = torch.exp(-0.5 * (t[None] / sigma.to(x.device, x.dtype)[:, None]) ** 2)  # [B, k]
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, k], one per channel
    y = F.pad(x.reshape(1, b * c, *x.shape[2:]), [k // 2] * 4, mode="reflect")
    y = F.conv2d(y, kern[:, None, None, :], groups=b * c)  # along the width
    y = F.conv2d(y, kern[:, None, :, None], groups=b * c)  # along the height
    return y.view_as(x)


def policy_train_transform(cfg: AugmentConfig, resize: int, crop: int, out: int, cutout: int,
                           norm: Normalization = IMAGENET) -> v2.Compose:
    """The per-image PIL reference of ``augment.policy`` (``data.cached=false``): the paper's recipe is
    :func:`reference_train_transform` itself, ``none`` the evaluation transform."""
    if cfg.policy == "paper":
        return reference_train_transform(resize, crop, out, cutout, norm)
    if cfg.policy == "none":
        return reference_eval_transform(resize, out, norm)
    p = make_policy(cfg)
    ops: list = [v2.Resize((resize, resize), interpolation=INTERPOLATION), v2.CenterCrop(crop)]
    ops.append(v2.RandomCrop(out) if p.crop == "random" else v2.RandomResizedCrop(out, interpolation=INTERPOLATION))
    ops += [v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)] if p.flips else []
    ops += [v2.RandAugment(num_ops=p.randaugment, magnitude=p.magnitude)] if p.randaugment else []
    # From here on the float tensor in 0..1 (as the paper recipe's rot90): the rotation, jitter and blur run
    # through torchvision's tensor kernels, the ones the batched path reproduces.
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    # fill None: zero padding as grid_sample does (a fill of 0 would darken the border pixels a second time)
    ops += [v2.RandomRotation((0.0, 360.0), interpolation=INTERPOLATION, fill=None)] if p.rotation == "free" else []
    if p.jitter:  # one ColorJitter per property, in the batched path's fixed order
        ops += [v2.ColorJitter(brightness=p.jitter), v2.ColorJitter(contrast=p.jitter), v2.ColorJitter(saturation=p.jitter)]
    ops += [v2.ColorJitter(hue=p.hue)] if p.hue else []
    ops += [v2.RandomApply([v2.GaussianBlur(blur_kernel_size(out), sigma=BLUR_SIGMA)], p=p.blur)] if p.blur else []
    ops += [v2.Normalize(norm.mean, norm.std)]
    ops += [RandomRot90()] if p.rotation == "rot90" else []
    ops += [Cutout(cutout)] if p.cutout else []
    return v2.Compose(ops)
