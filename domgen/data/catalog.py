"""Every source under one data root, loaded through its adapter: records, what was dropped, what is absent.

With no root configured (no ``data.root`` and no ``$DOMGEN_DATA``) the synthetic seven-domain benchmark
is generated once into the cache and used, and every output says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from domgen.config import DataConfig, cache_dir
from domgen.data.labels import CLASSES, DOMAIN_CODES, DOMAINS
from domgen.data.splits import class_availability
from domgen.data.sources import SOURCES
from domgen.data.sources.base import LoadResult
from domgen.progress import lazy_bar

SYNTHETIC = "synthetic"


@dataclass
class Catalog:
    root: Path
    synthetic: bool
    results: dict[str, LoadResult] = field(default_factory=dict)  # domain code -> result
    absent: dict[str, str] = field(default_factory=dict)  # source folder -> why it was skipped

    @property
    def identity(self) -> str:
        """What the data is, for run hashes and result files: "synthetic" or the resolved root."""
        return f"{SYNTHETIC}:{self.root.name}" if self.synthetic else str(self.root.resolve())

    def describe(self) -> str:
        """The ``data:`` line that opens every run: the identity, and what was skipped or dropped."""
        if self.synthetic:
            return f"{self.identity} (the synthetic benchmark: no --data-root or $DOMGEN_DATA given)"
        notes = [f"{len(self.results)} of {len(DOMAIN_CODES)} sources loaded"]
        if self.absent:
            notes.append("skipped " + ", ".join(self.absent))
        dropped = {d: len(r.missing) for d, r in self.results.items() if r.missing}
        if dropped:
            notes.append("images dropped " + ", ".join(f"{d} {n}" for d, n in dropped.items()))
        return f"{self.identity} ({'; '.join(notes)})"

    @property
    def domains(self) -> list[str]:
        return [d for d in DOMAINS if d in self.results]

    def records(self) -> pd.DataFrame:
        frames = [self.results[d].records for d in self.domains]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def counts(self) -> pd.DataFrame:
        """Domain x class image counts in CLASSES order (Table 1 of the paper); a loaded source whose
        images were all dropped keeps its row of zeros."""
        table = class_availability(self.records()).reindex(self.domains, fill_value=0)
        return table.rename_axis(index=None, columns=None)


def resolve_root(cfg: DataConfig, bar=None) -> tuple[Path, bool]:
    """(root, is_synthetic). ``data.root`` wins, then ``$DOMGEN_DATA``, then the synthetic benchmark."""
    root = cfg.root or os.environ.get("DOMGEN_DATA", "")
    if root and root != SYNTHETIC:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data root {path} does not exist (from --data-root or DOMGEN_DATA)")
        return path, False
    from domgen.data.synthetic import ensure_synthetic

    progress = lazy_bar(bar, desc="generating synthetic benchmark", unit="img")
    return ensure_synthetic(cache_dir(cfg), scale=cfg.synthetic_scale, seed=cfg.synthetic_seed, progress=progress), True


def load_catalog(cfg: DataConfig, bar=None, verify: bool = False) -> Catalog:
    """``bar``: an optional progress-bar factory (tqdm), used only if data must be generated or checked.
    ``verify`` (implied by ``skip_missing``): decode every image fully (:mod:`domgen.data.verify`)."""
    root, synthetic = resolve_root(cfg, bar)
    catalog = Catalog(root=root, synthetic=synthetic)
    for folder, code in DOMAIN_CODES.items():
        path = root / folder
        if not path.is_dir():
            catalog.absent[folder] = f"no folder {path}"
            continue
        catalog.results[code] = SOURCES.get(folder).load(path, skip_missing=cfg.skip_missing)
    if not catalog.results:
        raise FileNotFoundError(
            f"no source found under {root}: expected one or more of {', '.join(DOMAIN_CODES)} as sub-folders"
        )
    if verify or cfg.skip_missing:
        drop_undecodable(catalog, cfg, bar)
    return catalog


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
    for c in CLASSES:
        out[c] = counts[c]
        out[f"{c}_%"] = (100 * counts[c] / totals.where(totals > 0, 1)).round(1)
    out["total"] = totals
    out["dropped"] = [catalog.results[d].n_dropped for d in counts.index]
    out.loc["all"] = out.sum(numeric_only=True)
    for c in CLASSES:
        out.loc["all", f"{c}_%"] = round(100 * out.loc["all", c] / max(out.loc["all", "total"], 1), 1)
    return out


def dropped_report(catalog: Catalog) -> list[str]:
    """One line per source that lost images, saying which diagnoses or files and why."""
    lines = []
    for d in catalog.domains:
        res = catalog.results[d]
        if res.dropped_labels:
            what = ", ".join(f"{k} {v}" for k, v in sorted(res.dropped_labels.items(), key=lambda kv: -kv[1]))
            lines.append(f"{d}: dropped {sum(res.dropped_labels.values())} outside the 7 classes ({what})")
        if res.missing:
            lines.append(f"{d}: dropped {len(res.missing)} listed but missing/unreadable images (--skip-missing)")
    lines += [f"{folder}: skipped ({why})" for folder, why in catalog.absent.items()]
    return lines
