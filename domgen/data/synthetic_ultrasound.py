"""A small synthetic stand-in for BreastMNIST (Al-Dhabyani et al. 2020 via MedMNIST v2): grayscale
ultrasound-like images of a breast lesion, binary (0 malignant, 1 normal/benign), written in MedMNIST's
npz format (:mod:`domgen.data.sources.medmnist`), so the BreastMNIST study runs on a fresh clone.

Each image is speckle (Rayleigh-distributed, as envelope-detected ultrasound) over depth-dependent
brightness, with a dark (hypoechoic) lesion. The class decides the lesion's look, following the BI-RADS
descriptors radiologists use: malignant lesions are irregular (a wavy, spiculated margin), often
taller-than-wide, with posterior acoustic shadowing (a dark band below); benign ones are smooth, oval
and wider-than-tall, sometimes with posterior enhancement (a bright band below). The classes overlap on
purpose (random shapes, noise), so a model learns something without reaching 100%.

Sizes follow BreastMNIST's splits (546 / 78 / 156, 27% malignant) times ``scale``, at least 8 images per
class and split. Every image is a pure function of (seed, split, index); the file is written once into
``<cache>/synthetic-medmnist-v1-s<seed>-x<scale>/synthetic_breastmnist.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domgen.atomic import atomic_path
from domgen.seeds import derive_seed

VERSION = 1  # bump when the images change, so cached files are regenerated
SIZES = {"train": 546, "val": 78, "test": 156}  # BreastMNIST's official splits
MALIGNANT = 0.27  # share of class 0 in BreastMNIST
SIDE = 28  # MedMNIST's default resolution
FILE = "synthetic_breastmnist.npz"


def draw_image(rng: np.random.Generator, malignant: bool, side: int = SIDE) -> np.ndarray:
    """One uint8 [side, side] image."""
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)  # [side, side] in 0..1; y is depth
    cy, cx = rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7)
    r = rng.uniform(0.12, 0.22)
    # taller-than-wide (malignant) vs wider-than-tall (benign), with some overlap
    aspect = rng.uniform(0.85, 1.4) if malignant else rng.uniform(0.55, 1.05)  # height / width
    dy, dx = (yy - cy) / (r * aspect), (xx - cx) / r
    angle, dist = np.arctan2(dy, dx), np.hypot(dy, dx)
    # margin: a few smooth lobes for benign, many sharp ones (spiculation) for malignant
    k = rng.integers(7, 12) if malignant else rng.integers(2, 4)
    wobble = (rng.uniform(0.15, 0.3) if malignant else rng.uniform(0.0, 0.08)) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    inside = dist < 1 + wobble
    tissue = 0.55 - 0.25 * yy + 0.08 * np.sin(2 * np.pi * (yy * rng.uniform(2, 4) + rng.uniform(0, 1)))  # layers
    mean = np.where(inside, rng.uniform(0.08, 0.2), tissue)
    below = (yy > cy + r * aspect) & (np.abs(xx - cx) < r)  # the band behind the lesion
    mean = np.where(below, mean * (rng.uniform(0.4, 0.7) if malignant else rng.uniform(1.0, 1.3)), mean)
    speckle = rng.rayleigh(scale=1 / np.sqrt(np.pi / 2), size=(side, side))  # mean 1
    return np.clip(255 * mean * speckle, 0, 255).astype(np.uint8)


def draw_split(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, SIDE, SIDE] and labels [n, 1] (MedMNIST's shapes) of one split."""
    n_mal = max(8, int(round(MALIGNANT * n)))
    labels = np.array([0] * n_mal + [1] * max(8, n - n_mal), dtype=np.uint8)
    order = np.random.default_rng(derive_seed(seed, split, "order")).permutation(len(labels))
    labels = labels[order]
    images = np.stack([draw_image(np.random.default_rng(derive_seed(seed, split, i, "ultrasound")), y == 0)
                       for i, y in enumerate(labels)])
    return images, labels[:, None]


def write_npz(path: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """The synthetic set at ``path`` (atomically)."""
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = draw_split(seed, split, max(1, int(round(n * scale))))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(path)


def ensure_synthetic_medmnist(cache: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """The folder holding the synthetic npz, generated on first use."""
    folder = Path(cache) / f"synthetic-medmnist-v{VERSION}-s{seed}-x{scale:g}"
    if not (folder / FILE).is_file():
        write_npz(folder / FILE, seed, scale)
    return folder
