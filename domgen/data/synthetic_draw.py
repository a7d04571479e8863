"""Procedural drawing for the synthetic benchmark: the class draws the lesion, the domain takes the photo.

Two independent halves, so that the only link between a domain and a class is the class mix the
planner gives each domain (which is what the paper studies: data bias and domain class imbalance,
Yoon et al., MICCAI 2019, Table 1):

* ``LESIONS[cls](rng, u, v)`` draws one lesion of class ``cls`` in lesion coordinates ``u, v`` and
  returns its colour and opacity. The same rules hold in every domain: shape and eccentricity, border
  irregularity (radial harmonics), colour variegation and the class's dermoscopic structures.
* ``Acquisition`` (one per domain, declared in each source's ``SyntheticSpec``) decides skin tone, hair, lesion framing, colour
  cast, illumination gradient, vignette and field-of-view circle, resolution, blur and noise, the same
  way for every class.

Everything is vectorised numpy over the pixel grid (arrays are ``(h, w)`` or ``(h, w, 3)`` float32 in
[0, 1]); randomness comes only from the ``numpy.random.Generator`` passed in, so an image depends on
its seed alone. Lengths are in units of half the image's short side (the short side spans [-1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from domgen.data.sources.spec import Acquisition  # noqa: F401  (declared with each source's spec)

F32 = np.float32


LIGHT_SKIN = np.array([0.93, 0.78, 0.70], F32)
DARK_SKIN = np.array([0.52, 0.36, 0.26], F32)


# ---------------------------------------------------------------- primitives


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``x, y`` (each (h, w)); the short side spans [-1, 1]."""
    half = min(h, w) / 2
    x = (np.arange(w, dtype=F32) + 0.5 - w / 2) / half
    y = (np.arange(h, dtype=F32) + 0.5 - h / 2) / half
    return np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w))


def smooth_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: tuple[float, float],
                 k: int = 6) -> np.ndarray:
    """A smooth random field of about unit variance: the sum of ``k`` plane waves of random direction,
    frequency (cycles per unit) and phase. Defined on coordinates, so it does not depend on resolution."""
    f = rng.uniform(*freq, k).astype(F32) * F32(2 * np.pi)
    ang = rng.uniform(0, 2 * np.pi, k)
    phase = rng.uniform(0, 2 * np.pi, k).astype(F32)
    c, s = (f * np.cos(ang)).astype(F32), (f * np.sin(ang)).astype(F32)
    waves = np.cos(c[:, None, None] * x + s[:, None, None] * y + phase[:, None, None])  # (k, h, w)
    return waves.sum(0) * F32(np.sqrt(2 / k))


def segment_lines(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Soft lines along segments ``a[i] -> b[i]`` ((S, 2) each) of half-widths ``width`` (S,):
    exp(-distance^2 / width^2), the max over segments, (h, w)."""
    if len(a) == 0:
        return np.zeros(x.shape, F32)
    a, d = a.astype(F32), (b - a).astype(F32)
    px, py = x[None] - a[:, 0, None, None], y[None] - a[:, 1, None, None]  # (S, h, w)
    t = (px * d[:, 0, None, None] + py * d[:, 1, None, None]) / ((d**2).sum(1)[:, None, None] + F32(1e-9))
    t = np.clip(t, 0, 1)
    dist2 = (px - t * d[:, 0, None, None]) ** 2 + (py - t * d[:, 1, None, None]) ** 2
    return np.exp(-(dist2 / width.astype(F32)[:, None, None] ** 2).min(0))  # one exp per pixel, not per segment


def blobs(x: np.ndarray, y: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Gaussian blobs, one per centre: (N, h, w) with exp(-d^2 / r^2)."""
    d2 = (x[None] - F32(1) * centres[:, 0, None, None]) ** 2 + (y[None] - centres[:, 1, None, None]) ** 2
    return np.exp(-d2 / radii.astype(F32)[:, None, None] ** 2).astype(F32)


def polyline(rng: np.random.Generator, start: np.ndarray, n: int, step: tuple[float, float], turn: float,
             angle: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random walk of ``n`` segments from ``start``: (a, b) segment end points, (n, 2) each."""
    angle = rng.uniform(0, 2 * np.pi) if angle is None else angle
    angles = angle + np.cumsum(rng.normal(0, turn, n))
    steps = rng.uniform(*step, n)[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    points = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
    return points[:-1], points[1:]


def mix(base: np.ndarray, colour, weight: np.ndarray) -> np.ndarray:
    """Blend ``colour`` (3,) into ``base`` (h, w, 3) with per-pixel ``weight`` (h, w) in [0, 1]."""
    w = np.clip(weight, 0, 1)[..., None]
    return base * (1 - w) + np.asarray(colour, F32) * w


# ---------------------------------------------------------------- acquisition


def skin(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Skin of the domain's tone range with low-frequency mottling and faint redness, (h, w, 3)."""
    tone = rng.uniform(*acq.skin_tone)
    base = LIGHT_SKIN * (1 - tone) + DARK_SKIN * tone
    img = np.broadcast_to(base, x.shape + (3,)) * (1 + F32(0.025) * smooth_noise(rng, x, y, (0.3, 2))[..., None])
    red = np.clip(smooth_noise(rng, x, y, (0.3, 1.2)), 0, None) * F32(0.025)
    img = img + np.stack([red, -red, -red], -1) + F32(0.008) * smooth_noise(rng, x, y, (6, 14), k=10)[..., None]
    return img.astype(F32)


def hairs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, img: np.ndarray, mean: float) -> np.ndarray:
    """Dark curved hairs (random walks crossing the frame), a Poisson number with the domain's mean."""
    n = min(rng.poisson(mean), 12)
    if n == 0:
        return img
    a, b = zip(*(polyline(rng, rng.uniform(-1.4, 1.4, 2), 5, (0.15, 0.4), 0.25) for _ in range(n)))
    width = np.repeat(rng.uniform(0.012, 0.03, n), 5)
    colour = np.array([0.16, 0.11, 0.08], F32) * F32(rng.uniform(0.5, 1.5))
    return mix(img, colour, 0.9 * segment_lines(x, y, np.concatenate(a), np.concatenate(b), width))


def extras(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, img: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Specular highlights (clinical, non-contact photos) and marker stickers (SONIC)."""
    n = rng.poisson(acq.glare)
    if n:
        spots = blobs(x, y, rng.uniform(-1, 1, (n, 2)), rng.uniform(0.02, 0.06, n)).max(0)
        img = mix(img, (1.0, 1.0, 1.0), 0.8 * spots)
    if rng.random() < acq.sticker:
        corner = rng.choice([-1, 1], 2) * np.array([0.7 * x.max(), 0.7])
        colour = [(0.2, 0.7, 0.3), (0.2, 0.4, 0.85), (0.95, 0.85, 0.2)][rng.integers(3)]
        disc = blobs(x, y, corner[None], rng.uniform(0.10, 0.16, 1))[0]
        img = mix(img, colour, np.clip((disc - 0.5) * 6, 0, 1))
    return img


def photograph(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, img: np.ndarray, acq: Acquisition,
               out_hw: tuple[int, int]) -> np.ndarray:
    """Lighting, white balance, vignette, field of view, blur, resolution and noise -> uint8 (H, W, 3)."""
    ang = rng.uniform(0, 2 * np.pi)
    ramp = 1 + F32(rng.uniform(0, acq.gradient)) * (np.cos(ang) * x + np.sin(ang) * y) / F32(2)
    gains = np.asarray(acq.cast, F32) * (1 + rng.normal(0, acq.cast_jitter, 3)).astype(F32)
    r = np.sqrt(x**2 + y**2)
    light = ramp * (1 - F32(acq.vignette) * (r / r.max()) ** 2)
    if acq.fov is not None:
        light = light * (F32(0.03) + F32(0.97) / (1 + np.exp((r - F32(acq.fov)) / F32(0.04))))
    img = img * light[..., None] * gains
    sigma = acq.blur * rng.uniform(0.7, 1.3) * min(x.shape) / 96
    if sigma > 0.2:
        img = gaussian_filter(img, (sigma, sigma, 0), mode="nearest")
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    if out.size != (out_hw[1], out_hw[0]):
        out = out.resize((out_hw[1], out_hw[0]), Image.BILINEAR)
    noisy = np.asarray(out, F32) + rng.normal(0, acq.noise * 255, out_hw + (3,)).astype(F32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def render(cls: str, lesion_seed: list[int], acq: Acquisition, rng: np.random.Generator, size: int) -> np.ndarray:
    """One image: lesion of class ``cls`` (drawn from ``lesion_seed`` alone, so two views of one case
    show the same lesion) on the domain's skin, photographed the domain's way. ``size`` is the long side."""
    out_hw = (round(size / acq.aspect), size) if acq.aspect >= 1 else (size, round(size * acq.aspect))
    hw = tuple(max(8, round(s * acq.resolution)) for s in out_hw)
    x, y = grid(*hw)
    img = skin(rng, x, y, acq)
    lesion_rng = np.random.default_rng(lesion_seed)
    # Placement: the lesion's own, jittered per view (a second photo of a lesion is never framed alike).
    centre = np.clip(lesion_rng.normal(0, 0.12, 2) + rng.normal(0, 0.05, 2), -0.3, 0.3)
    ang = lesion_rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.3)
    zoom = F32(acq.zoom * rng.uniform(0.9, 1.1))
    dx, dy = (x - F32(centre[0] * acq.zoom)) / zoom, (y - F32(centre[1] * acq.zoom)) / zoom
    u, v = F32(np.cos(ang)) * dx + F32(np.sin(ang)) * dy, F32(-np.sin(ang)) * dx + F32(np.cos(ang)) * dy
    colour, alpha = LESIONS[cls](lesion_rng, u, v)
    img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
    img = hairs(rng, x, y, img, acq.hairs)
    img = extras(rng, x, y, img, acq)
    return photograph(rng, x, y, img, acq, out_hw)


# ---------------------------------------------------------------- lesions (the class half)


@dataclass
class Shape:
    alpha: np.ndarray  # (h, w) opacity of the lesion, soft at the border
    t: np.ndarray  # (h, w) radial position: 0 at the centre, 1 on the (irregular) border
    radius: float
    ratio: float  # minor / major axis


def shape(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: tuple[float, float],
          ratio: tuple[float, float], irregular: tuple[float, float], edge: tuple[float, float]) -> Shape:
    """An ellipse whose border radius is modulated by harmonics 2..8 (amplitude ~ ``irregular``, decaying
    as k^-0.7), with a logistic edge of relative width ``edge``: the ABCD rule's A, B in one function."""
    R, q = rng.uniform(*radius), rng.uniform(*ratio)
    amp, edge_width = rng.uniform(*irregular), F32(rng.uniform(*edge))
    k = np.arange(2, 9, dtype=F32)[:, None, None]
    coef = (amp * rng.normal(0, 1, 7)).astype(F32)[:, None, None] / k**0.7
    phase = rng.uniform(0, 2 * np.pi, 7).astype(F32)[:, None, None]
    vq = v / F32(q)
    rho, theta = np.sqrt(u**2 + vq**2), np.arctan2(vq, u)
    border = F32(R) * np.maximum(1 + (coef * np.cos(k * theta + phase)).sum(0), F32(0.3))
    t = rho / border
    alpha = 1 / (1 + np.exp(np.clip((t - 1) / edge_width, -30, 30)))
    return Shape(alpha.astype(F32), t.astype(F32), R, q)


def points_inside(rng: np.random.Generator, s: Shape, n: int, t: tuple[float, float]) -> np.ndarray:
    """``n`` points (n, 2) between radial positions ``t`` of the lesion's base ellipse."""
    r = s.radius * np.sqrt(rng.uniform(t[0] ** 2, t[1] ** 2, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(ang), r * np.sin(ang) * s.ratio], 1)


def jitter(rng: np.random.Generator, colour, sd: float = 0.04) -> np.ndarray:
    return np.clip(np.asarray(colour, F32) + rng.normal(0, sd, 3).astype(F32), 0, 1)


def network(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: tuple[float, float],
            warp: float) -> np.ndarray:
    """Pigment network: the lines of a hexagonal lattice, warped by smooth noise (``warp`` in periods;
    a regular network for naevi, a distorted one for melanoma), (h, w) in [0, 1]."""
    p, ang = rng.uniform(*period), rng.uniform(0, np.pi)
    a = np.cos(ang) * u + np.sin(ang) * v + F32(warp * p) * smooth_noise(rng, u, v, (1, 3))
    b = -np.sin(ang) * u + np.cos(ang) * v
    w = F32(2 * np.pi / p)
    s = (np.cos(w * a) + np.cos(w * (-a / 2 + 0.866 * b)) + np.cos(w * (-a / 2 - 0.866 * b))) / 3
    return np.clip((F32(0.1) - s) * 2.5, 0, 1)


def nevus(rng, u, v):
    """nv: round, regular, uniform brown; a regular network; a darker or lighter centre. 15% are
    atypical (less regular, two browns), so that nv and mel overlap."""
    atypical = rng.random() < 0.15
    s = shape(rng, u, v, (0.55, 0.9), (0.72, 1.0), (0.01, 0.09 if atypical else 0.05), (0.06, 0.12))
    base = jitter(rng, (0.56, 0.38, 0.25)) * F32(rng.uniform(0.75, 1.15))
    centre = F32(rng.uniform(-0.3, 0.15)) * (1 - np.clip(s.t, 0, 1)) ** 2
    col = base * (1 + centre + F32(0.05) * smooth_noise(rng, u, v, (1, 3)))[..., None]
    if atypical:
        col = mix(col, jitter(rng, (0.30, 0.19, 0.12)), (smooth_noise(rng, u, v, (1, 3)) > 0.6).astype(F32))
    col = col * (1 - F32(0.25) * network(rng, u, v, (0.07, 0.11), 0.1))[..., None]
    return col, s.alpha * F32(0.95)


# black, light brown, red-brown (a 'subtle' melanoma uses only these), blue-grey, regression white
MEL_EXTRA = np.array([(0.10, 0.07, 0.07), (0.66, 0.46, 0.32), (0.58, 0.30, 0.24), (0.46, 0.48, 0.55),
                      (0.80, 0.76, 0.74)], F32)


def melanoma(rng, u, v):
    """mel: larger, asymmetric, irregular border; 3-5 colours incl. black and blue-grey in irregular
    regions, a darker side, a distorted network and dark dots at the periphery. A quarter are
    'subtle' (browns and black only, less irregular), so that mel and nv overlap."""
    subtle = rng.random() < 0.25
    s = shape(rng, u, v, (0.6, 1.0), (0.55, 0.9), (0.04, 0.1) if subtle else (0.06, 0.18), (0.03, 0.12))
    k = rng.integers(1, 3) if subtle else rng.integers(2, 5)
    extra = MEL_EXTRA[rng.choice(3 if subtle else len(MEL_EXTRA), k, replace=False)]
    palette = [jitter(rng, (0.32, 0.18, 0.11))] + [jitter(rng, c, 0.03) for c in extra]
    side = rng.uniform(0, 2 * np.pi)
    field = smooth_noise(rng, u, v, (1.0, 3.5)) + F32(rng.uniform(0.5, 1.5)) * (
        np.cos(side) * u + np.sin(side) * v) / F32(s.radius)
    col = np.broadcast_to(palette[0], u.shape + (3,))
    for level, colour in zip(np.linspace(-1.0, 1.2, len(palette) - 1), palette[1:]):
        col = mix(col, colour, 1 / (1 + np.exp(-(field - F32(level)) / F32(0.25))))
    net = network(rng, u, v, (0.07, 0.13), 0.5) * (smooth_noise(rng, u, v, (1, 2)) > 0)
    col = col * (1 - F32(0.35) * net)[..., None]
    n = rng.integers(3, 14)
    dots = blobs(u, v, points_inside(rng, s, n, (0.65, 1.05)), rng.uniform(0.02, 0.05, n)).max(0)
    return mix(col, (0.12, 0.08, 0.07), dots), s.alpha * F32(0.97)


def basal_cell(rng, u, v):
    """bcc: translucent pink, blue-grey ovoid nests, arborizing red vessels (trunks that branch).
    A third are pigmented (more and larger grey-brown nests, fewer vessels)."""
    pigmented = rng.random() < 0.3
    s = shape(rng, u, v, (0.5, 0.9), (0.6, 0.95), (0.04, 0.1), (0.08, 0.16))
    col = np.broadcast_to(jitter(rng, (0.86, 0.60, 0.60)), u.shape + (3,))
    n = rng.integers(3, 8) if pigmented else rng.integers(0, 4)
    if n:
        nests = blobs(u, v, points_inside(rng, s, n, (0, 0.8)), rng.uniform(0.05, 0.15 if pigmented else 0.1, n))
        nest_colour = (0.36, 0.33, 0.36) if pigmented else (0.42, 0.46, 0.55)
        col = mix(col, jitter(rng, nest_colour), 0.8 * nests.max(0))
    starts = points_inside(rng, s, rng.integers(2, 4) if pigmented else rng.integers(3, 6), (0, 0.7))
    trunks = [polyline(rng, p, 3, (0.1, 0.25), 0.5) for p in starts]
    branches = [polyline(rng, a[rng.integers(1, 3)], 2, (0.05, 0.15), 0.6) for a, _ in trunks for _ in range(2)]
    a = np.concatenate([seg[0] for seg in trunks + branches])
    b = np.concatenate([seg[1] for seg in trunks + branches])
    width = np.concatenate([np.full(3 * len(trunks), 0.028), np.full(2 * len(branches), 0.018)])
    vessels = segment_lines(u, v, a, b, width) * (s.t < 1.1)
    col = mix(col, jitter(rng, (0.75, 0.10, 0.15), 0.03), vessels)
    col = mix(col, (0.95, 0.92, 0.92), 0.4 * (smooth_noise(rng, u, v, (2, 4)) > 1.3))
    return col, np.maximum(s.alpha * F32(0.8), vessels * s.alpha)


def dermatofibroma(rng, u, v):
    """df: small, firm, light brown with a delicate peripheral network and a white scar-like centre."""
    s = shape(rng, u, v, (0.33, 0.55), (0.7, 1.0), (0.02, 0.05), (0.10, 0.20))
    col = np.broadcast_to(jitter(rng, (0.60, 0.42, 0.30)), u.shape + (3,))
    col = col * (1 - F32(0.15) * network(rng, u, v, (0.06, 0.09), 0.2) * (s.t > 0.4))[..., None]
    white = np.exp(-((s.t / F32(rng.uniform(0.35, 0.55))) ** 2))
    return mix(col, jitter(rng, (0.92, 0.86, 0.82), 0.02), 0.85 * white), s.alpha * F32(0.9)


def keratosis(rng, u, v):
    """bkl: waxy tan to brown, sharp 'stuck-on' border, cerebriform fissures, comedo-like openings
    (dark dots) and milia-like cysts (white-yellow dots). A quarter are dark (pigmented keratoses)."""
    s = shape(rng, u, v, (0.6, 1.0), (0.6, 0.95), (0.03, 0.08), (0.02, 0.05))
    dark = rng.random() < 0.25
    base = jitter(rng, (0.68, 0.50, 0.34)) * F32(rng.uniform(0.45, 0.65) if dark else rng.uniform(0.7, 1.1))
    col = base * (1 - F32(0.22) * (np.abs(smooth_noise(rng, u, v, (4, 8))) < 0.3))[..., None]
    for colour, n, r in (((0.30, 0.20, 0.12), rng.integers(6, 18), (0.02, 0.04)),
                         ((0.95, 0.92, 0.75), rng.integers(2, 7), (0.015, 0.035))):
        dots = blobs(u, v, points_inside(rng, s, n, (0, 0.9)), rng.uniform(*r, n)).max(0)
        col = mix(col, colour, dots)
    return col, s.alpha * F32(0.95)


VASC_COLOURS = np.array([(0.78, 0.12, 0.16), (0.45, 0.15, 0.38), (0.42, 0.05, 0.10)], F32)


def vascular(rng, u, v):
    """vasc: red, purple and dark-red lacunae (round blobs) separated by whitish-pink septa."""
    s = shape(rng, u, v, (0.4, 0.7), (0.7, 1.0), (0.02, 0.06), (0.04, 0.08))
    col = np.broadcast_to(jitter(rng, (0.82, 0.62, 0.64)), u.shape + (3,))
    n = rng.integers(6, 15)
    lac = blobs(u, v, points_inside(rng, s, n, (0, 0.85)), rng.uniform(0.2, 0.35, n) * s.radius)  # (n, h, w)
    which = VASC_COLOURS[rng.integers(0, 3, n)][lac.argmax(0)]  # (h, w, 3): colour of the nearest lacuna
    return mix(col, which, (lac.max(0) - 0.3) * 3), s.alpha * F32(0.95)


def actinic(rng, u, v):
    """akiec: red-pink patch with a diffuse border, a strawberry pattern (white follicular openings on
    red) and white scale."""
    s = shape(rng, u, v, (0.6, 1.0), (0.6, 0.95), (0.05, 0.15), (0.15, 0.3))
    col = np.broadcast_to(jitter(rng, (0.86, 0.50, 0.48)), u.shape + (3,))
    p = rng.uniform(0.08, 0.12)
    follicles = (np.cos(F32(2 * np.pi / p) * u) * np.cos(F32(2 * np.pi / p) * v)) > 0.75
    col = mix(col, (0.93, 0.85, 0.82), 0.35 * follicles)
    scale = np.clip(smooth_noise(rng, u, v, (6, 14)) - F32(0.8), 0, 1) * (s.t < 0.9)
    return mix(col, (0.96, 0.94, 0.90), 2 * scale), s.alpha * F32(0.85)


# Class -> drawing function (rng, u, v) -> (colour (h, w, 3), alpha (h, w)).
LESIONS = {"nv": nevus, "mel": melanoma, "bcc": basal_cell, "df": dermatofibroma, "bkl": keratosis,
           "vasc": vascular, "akiec": actinic}
