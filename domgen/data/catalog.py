"""Every domain under one data root, loaded through its layout's adapters: records, what was dropped,
what is absent, and the label space the run uses.

With no root configured (no ``data.root`` and no ``$DOMGEN_DATA``) the synthetic seven-domain benchmark
is generated once into the cache and used, and every output says so.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from domgen.config import DataConfig, cache_dir
from domgen.data.label_space import DERMOSCOPY7, LABEL_SPACES, LabelSpace, from_labels
from domgen.data.labels import native_sources
from domgen.data.layouts import load_layout
from domgen.data.splits import class_availability
from domgen.data.sources.base import LoadResult
from domgen.errors import ConfigError
from domgen.progress import lazy_bar

SYNTHETIC = "synthetic"
# Appended to a real root's identity when the patient-first grouping of issue #13 moved any image's group.
REGROUPED = "#groups=patient"


@dataclass
class Catalog:
    root: Path
    synthetic: bool
    results: dict[str, LoadResult] = field(default_factory=dict)  # domain code -> result
    absent: dict[str, str] = field(default_factory=dict)  # source folder -> why it was skipped
    space: LabelSpace = DERMOSCOPY7  # the classes, in the order of logits and tables
    layout: str = "native"
    domain_by: str = ""  # the metadata column the domains were re-drawn by, if any
    loaded: dict[str, LoadResult] = field(default_factory=dict)  # per source, before domain_by (else = results)
    lacking: Counter = field(default_factory=Counter)  # source domain -> images without a domain_by value

    def __post_init__(self):
        if not self.loaded:
            self.loaded = self.results

    @property
    def identity(self) -> str:
        """What the data is, for run hashes and result files: "synthetic" or the resolved root. A real root
        where grouping by patient (issue #13) moved any image's group gets a suffix: its splits changed,
        so its runs get new folders rather than reusing ones split by lesion. Nothing else changes."""
        if self.synthetic:
            return f"{SYNTHETIC}:{self.root.name}"
        regrouped = any(r.regrouped for r in self.loaded.values())
        return str(self.root.resolve()) + (REGROUPED if regrouped else "")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.space.classes

    def describe(self) -> str:
        """The ``data:`` line that opens every run: the identity, and what was skipped or dropped."""
        if self.synthetic and self.layout == "native" and not self.domain_by:
            return f"{self.identity} (the synthetic benchmark: no --data-root or $DOMGEN_DATA given)"
        if self.layout == "native":
            notes = [f"{len(self.sources)} of {len(native_sources())} sources loaded"]
        else:
            notes = [f"{self.layout}: {len(self.sources)} domains"]
        if self.domain_by:
            notes.append(f"domains by {self.domain_by}: {len(self.results)}")
        if self.space is not DERMOSCOPY7:
            notes.append(f"{len(self.classes)} classes ({self.space.name})")
        if self.absent:
            notes.append("skipped " + ", ".join(self.absent))
        dropped = {d: len(r.missing) for d, r in self.loaded.items() if r.missing}
        if dropped:
            notes.append("images dropped " + ", ".join(f"{d} {n}" for d, n in dropped.items()))
        return f"{self.identity} ({'; '.join(notes)})"

    @property
    def sources(self) -> list[str]:
        """The domains as loaded (before any ``domain_by``), in ``domains`` order."""
        return _ordered(self.loaded)

    @property
    def domains(self) -> list[str]:
        """Registered sources in Table 1 order, then any other domain by name."""
        return _ordered(self.results)

    def records(self) -> pd.DataFrame:
        frames = [self.results[d].records for d in self.domains]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def counts(self) -> pd.DataFrame:
        """Domain x class image counts in the label space's order (Table 1 of the paper); a loaded source
        whose images were all dropped keeps its row of zeros."""
        table = class_availability(self.records(), self.classes).reindex(self.domains, fill_value=0)
        return table.rename_axis(index=None, columns=None)


def _ordered(domains) -> list[str]:
    order = {s.domain: i for i, s in enumerate(native_sources())}
    return sorted(domains, key=lambda d: (order.get(d, len(order)), d))


def resolve_root(cfg: DataConfig, bar=None) -> tuple[Path, bool]:
    """(root, is_synthetic). ``data.root`` wins, then ``$DOMGEN_DATA``, then the synthetic benchmark."""
    root = cfg.root or os.environ.get("DOMGEN_DATA", "")
    if root and root != SYNTHETIC:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data root {path} does not exist (from --data-root or DOMGEN_DATA)")
        return path, False
    if cfg.layout == "medmnist":  # its synthetic stand-in: a small ultrasound-like set in the npz format
        from domgen.data.synthetic_ultrasound import ensure_synthetic_medmnist

        return ensure_synthetic_medmnist(cache_dir(cfg), scale=cfg.synthetic_scale, seed=cfg.synthetic_seed), True
    if cfg.layout != "native":
        raise ConfigError(f"data.layout={cfg.layout} reads a data root: give one with --data-root or $DOMGEN_DATA "
                          "(the synthetic benchmark is in the native layout)")
    from domgen.data.synthetic import ensure_synthetic

    progress = lazy_bar(bar, desc="generating synthetic benchmark", unit="img")
    return ensure_synthetic(cache_dir(cfg), scale=cfg.synthetic_scale, seed=cfg.synthetic_seed, progress=progress), True


def load_catalog(cfg: DataConfig, bar=None, verify: bool = False) -> Catalog:
    """``bar``: an optional progress-bar factory (tqdm), used only if data must be generated or checked.
    ``verify`` (implied by ``skip_missing``): decode every image fully (:mod:`domgen.data.verify`).
    Then, in this order: ``data.label_space`` picks the classes (images outside it dropped and counted per
    source), and ``data.domain_by`` re-draws the domains."""
    root, synthetic = resolve_root(cfg, bar)
    results, absent = load_layout(cfg.layout, root, cfg.skip_missing, cache_dir(cfg))
    catalog = Catalog(root=root, synthetic=synthetic, results=results, absent=absent, layout=cfg.layout)
    if verify or cfg.skip_missing:
        drop_undecodable(catalog, cfg, bar)
    catalog.space = choose_space(cfg, catalog)
    restrict_to_space(catalog)
    if cfg.domain_by:
        from domgen.data.repartition import repartition

        catalog.results, catalog.lacking = repartition(catalog.loaded, cfg.domain_by)
        catalog.domain_by = cfg.domain_by
    return catalog


def choose_space(cfg: DataConfig, catalog: Catalog) -> LabelSpace:
    """The named ``data.label_space``, else the native sources' own, else the labels found (sorted)."""
    if cfg.label_space:
        return LABEL_SPACES.get(cfg.label_space)
    if cfg.layout == "native":
        loaded = set(catalog.loaded)
        names = sorted({s.label_space for s in native_sources() if s.domain in loaded})
        if len(names) > 1:
            raise ConfigError(f"the loaded sources map onto different label spaces ({', '.join(names)}): "
                              "choose one with --set data.label_space=NAME")
        return LABEL_SPACES.get(names[0]) if names else DERMOSCOPY7
    return from_labels(catalog.records()["label"])


def restrict_to_space(catalog: Catalog) -> None:
    """Drop and count, per domain, the images whose label is not a class of the catalog's space."""
    allowed = set(catalog.classes)
    for res in catalog.results.values():
        outside = ~res.records["label"].isin(allowed)
        if outside.any():
            res.dropped_labels.update(Counter(res.records.loc[outside, "label"].astype(str)))
            res.records = res.records.loc[~outside].reset_index(drop=True)


def drop_undecodable(catalog: Catalog, cfg: DataConfig, bar=None) -> None:
    """Decode every kept image; with ``skip_missing`` drop the broken ones and count them as missing,
    else raise naming them."""
    from domgen.data.verify import find_undecodable, undecodable_error

    paths = catalog.records()["path"].tolist()
    progress = lazy_bar(bar, total=len(paths), desc="decoding every image", unit="img")
    failures = find_undecodable(paths, cache_dir(cfg), workers=cfg.workers, progress=progress)
    if progress is not None:
        progress.close()
    if failures and not cfg.skip_missing:
        raise undecodable_error(failures)
    for res in catalog.results.values():
        bad = res.records["path"].isin(list(failures))
        if bad.any():
            res.missing.extend(res.records.loc[bad, "path"].tolist())
            res.records = res.records.loc[~bad].reset_index(drop=True)


def summary_table(catalog: Catalog) -> pd.DataFrame:
    """Table 1 layout: per domain, count and percent per class, total, and what was dropped."""
    counts = catalog.counts()
    out = pd.DataFrame(index=counts.index)
    totals = counts.sum(axis=1)
    for c in catalog.classes:
        out[c] = counts[c]
        out[f"{c}_%"] = (100 * counts[c] / totals.where(totals > 0, 1)).round(1)
    out["total"] = totals
    out["dropped"] = [catalog.results[d].n_dropped for d in counts.index]
    out.loc["all"] = out.sum(numeric_only=True)
    for c in catalog.classes:
        out.loc["all", f"{c}_%"] = round(100 * out.loc["all", c] / max(out.loc["all", "total"], 1), 1)
    return out


def dropped_report(catalog: Catalog) -> list[str]:
    """One line per source that lost images, saying which diagnoses or files and why."""
    lines = []
    for d in catalog.sources:
        res = catalog.loaded[d]
        if res.dropped_labels:
            what = ", ".join(f"{k} {v}" for k, v in sorted(res.dropped_labels.items(), key=lambda kv: -kv[1]))
            lines.append(f"{d}: dropped {sum(res.dropped_labels.values())} outside the {len(catalog.classes)} classes ({what})")
        if res.missing:
            lines.append(f"{d}: dropped {len(res.missing)} listed but missing/unreadable images (--skip-missing)")
    lines += [f"{d}: dropped {n} without a {catalog.domain_by} value (data.domain_by)" for d, n in sorted(catalog.lacking.items())]
    lines += [f"{folder}: skipped ({why})" for folder, why in catalog.absent.items()]
    return lines
