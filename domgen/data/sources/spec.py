"""What a source declares about itself beside its reader: the synthetic benchmark's recipe for it.

Kept free of the drawing code (numpy only), so the source modules, and ``domgen.data.labels`` that
derives the global lists from them, import quickly. ``domgen.data.synthetic`` reads these specs; the
drawing itself is ``domgen.data.synthetic_draw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Acquisition:
    """How one domain photographs a lesion (see the table in datasets/synthetic.md)."""

    aspect: float  # width / height
    skin_tone: tuple[float, float]  # range of 0 (very light) .. 1 (dark)
    cast: tuple[float, float, float]  # mean RGB gains (white balance)
    cast_jitter: float  # per-image sd of the gains (several devices -> larger)
    gradient: float  # max illumination ramp across the image
    vignette: float  # radial darkening at the corners
    fov: float | None  # radius of the dermoscope's circular field of view (black outside); None: none
    blur: float  # gaussian sigma in pixels at 96 px short side
    resolution: float  # render at this fraction of the output size, then upsample
    noise: float  # sd of sensor noise
    hairs: float  # mean number of hairs
    zoom: float  # lesion scale (a clinical photo frames the lesion smaller)
    glare: float = 0.0  # mean number of specular highlights (non-contact photography)
    sticker: float = 0.0  # probability of a coloured marker sticker next to the lesion


# (case index, first image number, images in the case) -> (group, image ids, id metadata columns)
IdRule = Callable[[int, int, int], "tuple[str, list[str], dict]"]
# (class drawn, native diagnosis, rng, sex already drawn) -> the release's extra metadata columns
MetaRule = Callable[[str, str, np.random.Generator, str], dict]


@dataclass(frozen=True)
class SyntheticSpec:
    """One source's part of the synthetic benchmark (Yoon et al., MICCAI 2019, Table 1 proportions).

    ``stream`` seeds the source's random streams: it is the source's position in the generator since
    version 2 and must never change, or every cached benchmark and every split built on it changes."""

    stream: int
    counts: dict[str, int]  # images per class in the real release (Table 1), scaled by the generator
    native: dict[str, dict[str, int]]  # class -> native diagnosis -> weight (the inverse of the label map)
    acquisition: Acquisition
    ids: IdRule
    dropped: dict[str, tuple[int, str]] = field(default_factory=dict)  # out-of-map diagnosis -> (images, look)
    extra_views: float = 0.0  # share of images that are second or third views of a lesion / patient
    views: tuple[str, ...] = ()  # meta["modality"] of each image of a case (Derm7pt: clinic, derm); () = one image
    modalities: dict[str, Acquisition] = field(default_factory=dict)  # a view photographed its own way
    meta: MetaRule | None = None

    @property
    def per_case(self) -> int:
        return len(self.views) or 1


def pick(rng: np.random.Generator, weights: dict[str, int]) -> str:
    """One key of ``weights`` drawn in proportion to its weight."""
    w = np.array(list(weights.values()), float)
    return list(weights)[rng.choice(len(w), p=w / w.sum())]


def age(rng: np.random.Generator, mean: float, sd: float, lo: int, hi: int) -> float:
    """An age in steps of 5, as the releases give them."""
    return float(np.clip(np.floor(rng.normal(mean, sd) / 5 + 0.5) * 5, lo, hi))
