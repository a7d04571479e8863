"""Linear probing on features computed once (``--set regime.name=lp --set regime.precompute=true``).

A linear probe's backbone g is frozen and in evaluation mode (BatchNorm uses its running statistics), so
with no training augmentation (``augment.policy=none``: the training image is the evaluation crop) g(x) is
a fixed function of each image. It is computed once per image the run uses (the training pool and every
validation and test image) and kept as a tensor ``[N, D]`` on the device, in the dtype g gives; every
epoch trains only the head on batches of those features: the same draws from the same sampler in the same
order, and the algorithm sees :class:`FeatureView`, whose ``forward_both(z) = (head(z), z)``. Evaluation
reads them too, so an epoch costs a pass of the head. The result is the image path's (same batches, same
head, same RNG stream: computing the features draws no random number), up to kernels whose rounding
depends on the batch g ran in (``tests/test_lp_features.py`` compares the two runs epoch by epoch).

The features also go to ``<data cache>/features/<key>.pt`` (written atomically under a lock, read with
``torch.load(weights_only=True)``), so a second seed or another lp run on the same backbone reuses them.
The key hashes what decides g(x): the backbone's weights and buffers (a fingerprint of ``g.state_dict()``),
the images (the image cache's own key: paths, sizes and mtimes, resize and crop), the crop ``size``, the
architecture (its input normalisation), the resolved precision, the memory format and the device type
(kernels round differently on a GPU). What cannot train on fixed features is refused when the config is
validated (:meth:`domgen.regimes.freezing.LinearProbing.run_problems`, ``Algorithm.needs_backbone``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from domgen.algorithms.base import Batch
from domgen.atomic import atomic_path, exclusive, remove_stale_temporaries
from domgen.config import RunConfig, cache_dir
from domgen.data.cache import cache_key
from domgen.data.samplers import Draw, chunks
from domgen.engine.loop import autocast, resolve_channels_last, resolve_precision
from domgen.progress import lazy_bar

FORMAT_VERSION = 1


class FeatureView(nn.Module):
    """``model`` as an algorithm sees it on precomputed features: ``g`` the identity (the features are g's
    output already), ``h`` and the head dropout ``model``'s own modules (shared, so the optimiser built on
    ``model`` trains them), ``forward(z) = head(z)`` and ``forward_both(z) = (head(z), z)``, as
    :class:`domgen.models.backbones.Classifier` on the image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.g = nn.Identity()
        self.h = model.h
        self.drop = getattr(model, "drop", None)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.h(z if self.drop is None else self.drop(z))  # [B, K]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def forward_both(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(z), z


def backbone_fingerprint(g: nn.Module) -> str:
    """sha256 of every tensor of ``g.state_dict()`` (name, dtype, shape and bytes): the weights and the
    BatchNorm statistics g(x) is computed with."""
    digest = hashlib.sha256()
    for name, t in g.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_key(fingerprint: str, data_key: str, size: int, arch: str, precision: str, channels_last: bool,
                device_type: str) -> str:
    """The cache key (32 hex digits) of the inputs that decide the features."""
    inputs = {"version": FORMAT_VERSION, "backbone": fingerprint, "data": data_key, "size": int(size), "arch": arch,
              "precision": precision, "channels_last": bool(channels_last), "device": device_type}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


@torch.no_grad()
def compute_features(g: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                     precision: str, tick: Callable[[int], None] | None = None) -> torch.Tensor:
    """g(x) in evaluation mode over ``batches`` (evaluation crops), ``[N, D]`` on the CPU in the dtype g gives
    (under bf16 autocast a ResNet's bf16), so the head and the algorithm see the tensor the image path
    would hand them, dtype included."""
    was = g.training
    g.eval()  # BatchNorm's running statistics, as the probe's frozen g uses them in training and evaluation
    out = []
    try:
        for x, _ in batches:
            with autocast(device, precision):
                z = g(x)  # [B, D]
            out.append(z.cpu())
            if tick is not None:
                tick(len(z))
    finally:
        g.train(was)
    return torch.cat(out)


def used_positions(manifest, pool: np.ndarray) -> np.ndarray:
    """Sorted manifest positions of every image a run uses: its training pool and every validation and test
    image (the epoch evaluation's, the held-out domains' and the final evaluation's)."""
    evaluated = np.flatnonzero(manifest["split"].isin(("val", "test")).to_numpy())
    return np.union1d(np.asarray(pool, dtype=np.int64), evaluated)


class PrecomputedFeatures:
    """g(x) of the images at ``positions`` (sorted manifest positions), computed at the first :meth:`ready`
    (or read from ``folder``), then batches of them in place of :class:`domgen.engine.inputs.Inputs`' images.

    ``inputs`` gives the evaluation crops and every image's label and domain; ``bar`` (a progress counter with
    ``update(n)``, or None) counts the images while g runs; ``log`` gets one line saying what was done."""

    def __init__(self, inputs, paths: list[str], positions: np.ndarray, folder: Path, *, size: int, resize: int, crop: int,
                 arch: str, precision: str, channels_last: str, batch_size: int, bar=None, log: Callable[[str], None] | None = None):
        self.inputs, self.positions, self.folder = inputs, np.asarray(positions, dtype=np.int64), Path(folder)
        self.device = inputs.device
        self.data_key, _ = cache_key([paths[i] for i in self.positions], resize, crop)
        self.size, self.arch, self.batch_size, self.bar = size, arch, batch_size, bar
        self.log = log or (lambda line: None)  # library code never prints
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.row = np.full(len(paths), -1, dtype=np.int64)  # manifest position -> row of the features
        self.row[self.positions] = np.arange(len(self.positions))
        self.z: torch.Tensor | None = None  # [N, D] on the device, once ready
        self.path: Path | None = None
        self.computed = 0  # images g ran on in this process (0 when the features came from the cache)

    def key(self, g: nn.Module) -> str:
        return feature_key(backbone_fingerprint(g), self.data_key, self.size, self.arch, self.precision,
                           self.channels_last, self.device.type)

    def ready(self, model: nn.Module) -> "PrecomputedFeatures":
        """The features of ``model.g`` (computed once, then kept); returns self."""
        if self.z is None:
            self.path = self.folder / f"{self.key(model.g)}.pt"
            self.z = self._load_or_compute(model.g).to(self.device)
        return self

    def _load_or_compute(self, g: nn.Module) -> torch.Tensor:
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path.with_suffix(".lock")):  # a concurrent run with the same key waits, then reads ours
            z = self._read()
            if z is not None:
                self.log(f"features of {len(z)} images read from {self.path}")
                return z
            bs = 2 * self.batch_size
            z = compute_features(g, self.inputs.eval_batches(self.positions, bs), self.device, self.precision,
                                 None if self.bar is None else self.bar.update)
            if self.bar is not None:
                self.bar.close()
            self.computed = len(z)
            remove_stale_temporaries(self.folder, of=(self.path.name,))  # a killed writer's partial file
            with atomic_path(self.path) as tmp:
                torch.save({"version": FORMAT_VERSION, "features": z}, tmp)
            self.log(f"features of {len(z)} images computed once by the frozen backbone, kept in {self.path}")
            return z

    def _read(self) -> torch.Tensor | None:
        """The cached features when the file is there and whole (one row per position), else None."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable (a disk error, a foreign file): computed again and replaced
            return None
        z = state.get("features") if isinstance(state, dict) else None
        ok = state.get("version") == FORMAT_VERSION and torch.is_tensor(z) and z.dim() == 2 and len(z) == len(self.positions)
        return z if ok else None

    def _rows(self, idx: np.ndarray) -> torch.Tensor:
        rows = self.row[idx]
        if (rows < 0).any():
            raise IndexError(f"no precomputed features for manifest positions {idx[rows < 0][:5].tolist()}")
        return torch.from_numpy(rows).to(self.device)

    def batches(self, draws: Iterable[Draw]) -> Iterator[Batch]:
        """Training batches for ``draws`` (manifest positions in epoch order), as ``Inputs.batches`` gives
        them with ``x`` the features ``[B, D]`` of the batch's images in the same order."""
        inp = self.inputs
        for draw in draws:
            x = self.z[self._rows(draw.idx)]
            y = torch.from_numpy(inp.labels[draw.idx]).to(self.device)
            domain = torch.from_numpy(inp.domains[draw.idx]).to(self.device)
            extras = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in draw.extras.items()}
            yield Batch(x, y, domain, extras)

    def eval_batches(self, positions: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features [B, D], labels [B]) of ``positions`` in ``Inputs.eval_batches``' batches."""
        for idx in chunks(np.asarray(positions, dtype=np.int64), batch_size, drop_single=False):
            yield self.z[self._rows(idx)], torch.from_numpy(self.inputs.labels[idx]).to(self.device)


def run_features(cfg: RunConfig, data, inputs, bar_factory=None, log: Callable[[str], None] | None = None) -> PrecomputedFeatures | None:
    """The run's :class:`PrecomputedFeatures` when its regime asks for them (``regime.precompute``), else None.
    ``bar_factory``: the run's ``Hooks.bar`` (a tqdm-like factory) for the progress while g runs."""
    if not getattr(cfg.regime, "precompute", False):
        return None
    m, t = data.manifest, cfg.transform
    positions = used_positions(m, data.pool)
    bar = lazy_bar(bar_factory, total=len(positions), desc="features (frozen backbone)", unit="img")
    prefix = f"[{cfg.exp} s{cfg.seed}] "
    return PrecomputedFeatures(inputs, m["path"].tolist(), positions, cache_dir(cfg.data) / "features", size=t.size,
                               resize=t.resize, crop=t.crop, arch=cfg.model.arch, precision=cfg.precision,
                               channels_last=cfg.channels_last, batch_size=cfg.optim.batch_size, bar=bar,
                               log=None if log is None else (lambda line: log(prefix + line)))
