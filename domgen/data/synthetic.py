"""The synthetic seven-domain dermoscopy benchmark: domgen's default dataset when no data root is set.

Seven sources written in their *native* layouts through ``writers.write_source``, so the same adapters
read them as read the real releases. Class proportions follow Yoon, Hamarneh & Garbi, MICCAI 2019,
Table 1 (every source's row as printed, MSK and UDA included; see datasets/synthetic.md), scaled to about
2,700 images at ``scale=1.0`` with a floor per present class. The class decides the lesion and the
domain decides the acquisition (``synthetic_draw``), so class signal and domain shift are both real
and independent. Every image is a pure function of ``(seed, domain, case, view)``.

What each source contributes (its Table 1 row, native vocabulary, dropped diagnoses, acquisition, id
scheme and metadata) is declared in its own module as a ``SyntheticSpec`` (``domgen.data.sources``);
this module only plans and draws. A source registered without a spec is simply not generated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domgen.data.sources import SOURCES
from domgen.data.sources.spec import pick
from domgen.data.synthetic_draw import render
from domgen.data.writers import Item, write_source

GENERATOR_VERSION = 2  # bump when the images or the plan change, so cached benchmarks are regenerated
DEFAULT_SIZE = 128  # long side in pixels
RATE = 0.1  # synthetic images per real image at scale 1.0
MIN_IMAGES = 6  # per present class, at any scale: >= 3 groups, so it can reach train, val and test
MANIFEST = "synthetic.json"

def synthetic_sources() -> dict:
    """Source name -> its ``SyntheticSpec``, for every registered source that declares one, in stream
    order (the generator's order since version 2: HAM10000, Dermofit, Derm7pt, PH2, MSK, UDA, SONIC)."""
    specs = {name: SOURCES.get(name).synthetic for name in SOURCES if SOURCES.get(name).synthetic is not None}
    return dict(sorted(specs.items(), key=lambda kv: kv[1].stream))


def _spec(source: str):
    return synthetic_sources()[source]


# Views of the specs that the sources declare (each source's module holds its own part, with reasons):
# images per source and class, Table 1 of Yoon et al. as printed (see datasets/synthetic.md) ...
TABLE1: dict[str, dict[str, int]] = {s: spec.counts for s, spec in synthetic_sources().items()}
SOURCE_NAMES: tuple[str, ...] = tuple(TABLE1)
# ... out-of-map diagnoses (images in the real release) -> (count, class they look like), which the loaders
# drop and count, so the synthetic data exercises that accounting too ...
DROPPED_TABLE: dict[str, dict[str, tuple[int, str]]] = {s: sp.dropped for s, sp in synthetic_sources().items() if sp.dropped}
# ... and class -> native diagnosis -> weight: the inverse of each source's label map, weighted like the release.
NATIVE: dict[str, dict[str, dict[str, int]]] = {s: spec.native for s, spec in synthetic_sources().items()}
# Streams 0..6 are the seven sources above; a source added later with a spec changes what is generated,
# so its name joins the cache key (the seven alone keep the key, and every split, of version 2).
FIRST_EXTRA_STREAM = 7


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _per_case(source: str) -> int:
    return _spec(source).per_case  # Derm7pt: a clinical and a dermoscopic image per case


def _scaled(source: str, images: float, min_cases: int) -> int:
    """Images after scaling, rounded to whole cases and raised to ``min_cases`` cases."""
    per = _per_case(source)
    return per * max(min_cases, _round(images / per))


def planned_counts(scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Images per source and class at ``scale``: Table 1 x RATE x scale, at least MIN_IMAGES (3 cases
    for Derm7pt) for a class the source has; a class absent from Table 1 stays absent."""
    return {s: {c: _scaled(s, n * RATE * scale, MIN_IMAGES // _per_case(s)) for c, n in spec.counts.items()}
            for s, spec in synthetic_sources().items()}


def planned_dropped(scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Images per out-of-map diagnosis that the loaders will drop (at least one case each)."""
    return {s: {d: _scaled(s, n * RATE * scale, 1) for d, (n, _) in spec.dropped.items()}
            for s, spec in synthetic_sources().items()}


SYNTHETIC_COUNTS = planned_counts(1.0)


@dataclass
class Case:
    """One lesion / case / patient: its drawn class, native diagnosis, group and images."""

    look: str  # class whose lesion is drawn (for a dropped diagnosis, the class it resembles)
    diagnosis: str  # in the source's own vocabulary
    group: str
    image_ids: list[str]
    meta: dict = field(default_factory=dict)


def group_sizes(n: int, extra: float) -> list[int]:
    """Split ``n`` images into groups (lesions / patients) of 1-3 images, ``extra`` of the images being
    second or third views; at least min(n, 3) groups."""
    groups = max(min(n, 3), n - _round(n * extra))
    more = n - groups
    threes = min(more // 2, _round(more * 0.25))
    twos = more - 2 * threes
    return [3] * threes + [2] * twos + [1] * (groups - twos - threes)


def apportion(weights: dict[str, int], n: int) -> list[str]:
    """``n`` labels in proportion to ``weights`` by largest remainder (exact and deterministic)."""
    names, w = list(weights), np.array(list(weights.values()), float)
    quota = n * w / w.sum()
    count = np.floor(quota).astype(int)
    count[np.argsort(-(quota - count), kind="stable")[: n - count.sum()]] += 1
    return [name for name, k in zip(names, count) for _ in range(k)]


# ---------------------------------------------------------------- per-case metadata (plausible, native)


def case_meta(source: str, look: str, diagnosis: str, rng: np.random.Generator) -> dict:
    """The extra metadata columns a release carries for one case (consumed by ``write_source``). Every
    source draws a sex first (whether it keeps it or not), so each source's stream stays as it was."""
    sex = pick(rng, {"male": 54, "female": 46})
    rule = _spec(source).meta
    return rule(look, diagnosis, rng, sex) if rule is not None else {}


# ---------------------------------------------------------------- plan


def plan_source(source: str, scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The cases of one source: ``planned_counts`` images per class and ``planned_dropped`` images per
    out-of-map diagnosis, grouped into lesions / cases / patients, native labels, shuffled order."""
    spec = _spec(source)
    rng = np.random.default_rng([seed, spec.stream, 0])
    per = spec.per_case
    units = []  # (look, diagnosis, images)
    for cls, n in planned_counts(scale)[source].items():
        sizes = [per] * (n // per) if per > 1 else group_sizes(n, spec.extra_views)
        natives = apportion(spec.native[cls], len(sizes))
        units += [(cls, natives[k], size) for k, size in zip(rng.permutation(len(natives)), sizes)]
    for diagnosis, n in planned_dropped(scale)[source].items():
        units += [(spec.dropped[diagnosis][1], diagnosis, per)] * (n // per)
    cases, first_image = [], 0
    for i, j in enumerate(rng.permutation(len(units))):
        look, diagnosis, n = units[j]
        group, image_ids, id_meta = spec.ids(i, first_image, n)
        cases.append(Case(look, diagnosis, group, image_ids, {**case_meta(source, look, diagnosis, rng), **id_meta}))
        first_image += n
    return cases


# ---------------------------------------------------------------- generate


def draw_case(source: str, index: int, case: Case, seed: int = 0, size: int = DEFAULT_SIZE) -> list[Item]:
    """The images of one case. The lesion depends on (seed, source, case) and each view's acquisition on
    (seed, source, case, view) only, so the result does not depend on order or parallelism."""
    spec = _spec(source)
    d = spec.stream
    modalities = list(spec.views) or [None] * len(case.image_ids)
    items = []
    for view, (image_id, modality) in enumerate(zip(case.image_ids, modalities)):
        acq = spec.modalities.get(modality, spec.acquisition)
        image = render(case.look, [seed, d, 2, index], acq, np.random.default_rng([seed, d, 1, index, view]), size)
        meta = {**case.meta, "modality": modality} if modality else dict(case.meta)
        items.append(Item(image, case.diagnosis, case.group, image_id, meta))
    return items


def _ticker(progress, total: int):
    """progress: None, a callable(n_done, n_total) or a tqdm-like object with ``update``."""
    if progress is None:
        return lambda: None
    if hasattr(progress, "update"):
        if not getattr(progress, "total", None):
            progress.total = total
        return lambda: progress.update(1)
    done = [0]

    def tick():
        done[0] += 1
        progress(done[0], total)

    return tick


def generate(folder: Path, scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE, progress=None) -> Path:
    """Write all seven sources into ``folder/<source>`` in their native layouts, plus ``synthetic.json``
    (what was generated, so any result built on it can say it is synthetic). Returns ``folder``."""
    if seed < 0 or scale <= 0 or size < 16:
        raise ValueError(f"synthetic: need seed >= 0, scale > 0, size >= 16 (got {seed}, {scale}, {size})")
    folder = Path(folder)
    plans = {source: plan_source(source, scale, seed) for source in synthetic_sources()}
    tick = _ticker(progress, sum(len(c.image_ids) for cases in plans.values() for c in cases))
    for source, cases in plans.items():
        items = []
        for i, case in enumerate(cases):
            items += draw_case(source, i, case, seed, size)
            for _ in case.image_ids:
                tick()
        write_source(source, folder / source, items)
    manifest = {"synthetic": True, "generator_version": GENERATOR_VERSION, "scale": scale, "seed": seed,
                "size": size, "counts": planned_counts(scale), "dropped": planned_dropped(scale)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder


def cache_key(scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE) -> str:
    """Folder name of a generated benchmark: a hash of (generator version, scale, seed, size)."""
    extra = [s for s, spec in synthetic_sources().items() if spec.stream >= FIRST_EXTRA_STREAM]
    key = json.dumps([GENERATOR_VERSION, float(scale), int(seed), int(size)] + ([extra] if extra else []))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def ensure_synthetic(cache_dir: Path, scale: float = 1.0, seed: int = 0, size: int = DEFAULT_SIZE,
                     progress=None) -> Path:
    """``<cache_dir>/synthetic/<cache_key>/``, generated on first use. Generation goes to a temporary
    sibling that is renamed into place, so a killed or concurrent run never leaves a half folder; when
    another process wins the race its folder is kept and ours discarded."""
    final = Path(cache_dir) / "synthetic" / cache_key(scale, seed, size)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make a shared cache unreadable to others
    try:
        generate(tmp, scale, seed, size, progress)
        try:
            os.rename(tmp, final)  # atomic; fails if `final` appeared meanwhile (non-empty directory)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return final


def read_manifest(root: Path) -> dict | None:
    """The generator's manifest if ``root`` is a synthetic benchmark, else None."""
    path = Path(root) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
