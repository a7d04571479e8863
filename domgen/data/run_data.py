"""From a DataConfig to what a run trains and evaluates on: the manifest, the training pool, the domains,
the classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from domgen.config import DataConfig, cache_dir
from domgen.config_check import normalise_data
from domgen.data.catalog import Catalog, load_catalog
from domgen.data.splits import group_fraction, load_or_build_manifest, parse_nsec, training_pool
from domgen.errors import ConfigError


@dataclass
class RunData:
    catalog: Catalog
    manifest: pd.DataFrame  # every image of every source, index 0..N-1, with its split
    labels: np.ndarray  # [N] class index into ``classes``
    pool: np.ndarray  # manifest positions of the training pool (primary train + nsec subsets)
    train_domains: list[str]  # domains in the pool: model selection averages over their validation
    classes: tuple[str, ...] = ()  # the label space, in logit order
    primary: str | None = "HAM"  # None: no primary domain (every domain's training split is pooled)

    @property
    def identity(self) -> str:
        return self.catalog.identity

    def positions(self, split: str, domains: list[str] | None = None) -> np.ndarray:
        m = self.manifest
        mask = m["split"].eq(split)
        if domains is not None:
            mask &= m["domain"].isin(domains)
        return np.flatnonzero(mask.to_numpy())


def prepare_data(cfg: DataConfig, bar=None, catalog: Catalog | None = None, log=None) -> RunData:
    """``catalog``: the sources already loaded for this data section (a warm-started run hands its own
    to its parent, whose config differs only in ``nsec``/``holdout``), so images are not re-validated.
    ``log`` gets the ``data:`` line when the sources are loaded here (a run's first line).

    ``cfg`` is resolved (``config_check.normalise``): holdout and primary are domain codes, primary "none"
    for DomainBed's pool (every non-held-out domain's training split)."""
    cfg = normalise_data(cfg)
    if catalog is None:
        catalog = load_catalog(cfg, bar=bar)
        if log is not None:
            log(f"data: {catalog.describe()}")
    manifest = load_or_build_manifest(catalog.records(), cache_dir(cfg), seed=cfg.split_seed, folds=cfg.folds,
                                      fold=cfg.fold).reset_index(drop=True)
    primary = None if cfg.primary == "none" else cfg.primary
    present = set(manifest["domain"])
    check_protocol(cfg, primary, catalog.domains)
    # A registered source absent from this root is simply not there to hold out (loo over a partial root).
    exclude = [d for d in cfg.holdout if d in present]
    pool_rows = training_pool(manifest, parse_nsec(cfg.nsec), seed=cfg.split_seed, primary=primary, exclude=exclude)
    if cfg.train_fraction < 1:  # the low-data arm: whole lesion groups of the primary's training split
        pool_rows = pool_rows[group_fraction(pool_rows, cfg.train_fraction, cfg.split_seed, None if primary is None else [primary])]
    pool = pool_rows.index.to_numpy()
    index = {c: i for i, c in enumerate(catalog.classes)}
    labels = manifest["label"].map(index).to_numpy(dtype=np.int64)
    train_domains = [d for d in catalog.domains if d in set(pool_rows["domain"])]
    return RunData(catalog, manifest, labels, pool, train_domains, catalog.classes, primary)


def check_protocol(cfg: DataConfig, primary: str | None, domains: list[str]) -> None:
    """The primary domain exists and trains; a held-out domain is a domain of this data or a registered
    source (so a typo fails instead of silently holding out nothing)."""
    from domgen.data.labels import DOMAINS

    if primary is not None and primary not in domains:
        raise ConfigError(f"data.primary={primary} is not a domain of this data ({', '.join(domains)}): set "
                          "--set data.primary=DOMAIN, or data.primary=none to pool every domain's training split")
    if primary is not None and primary in cfg.holdout:
        raise ConfigError(f"{primary} is the primary training domain and cannot be held out")
    unknown = [d for d in cfg.holdout if d not in domains and d not in DOMAINS]
    if unknown:
        raise ConfigError(f"data.holdout names {', '.join(unknown)}, not a domain of this data ({', '.join(domains)})")
