"""From a DataConfig to what a run trains and evaluates on: the manifest, the training pool, the domains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from domgen.config import DataConfig, cache_dir
from domgen.data.catalog import Catalog, load_catalog
from domgen.data.labels import CLASS_INDEX, PRIMARY_DOMAIN, domain_code
from domgen.data.splits import load_or_build_manifest, parse_nsec, training_pool


@dataclass
class RunData:
    catalog: Catalog
    manifest: pd.DataFrame  # every image of every source, index 0..N-1, with its split
    labels: np.ndarray  # [N] class index
    pool: np.ndarray  # manifest positions of the training pool (primary train + nsec subsets)
    train_domains: list[str]  # domains in the pool: model selection averages over their validation

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
    ``log`` gets the ``data:`` line when the sources are loaded here (a run's first line)."""
    if catalog is None:
        catalog = load_catalog(cfg, bar=bar)
        if log is not None:
            log(f"data: {catalog.describe()}")
    manifest = load_or_build_manifest(catalog.records(), cache_dir(cfg), seed=cfg.split_seed).reset_index(drop=True)
    holdout = [domain_code(d) for d in cfg.holdout]
    if PRIMARY_DOMAIN in holdout:
        raise ValueError(f"{PRIMARY_DOMAIN} is the primary training domain and cannot be held out")
    exclude = [d for d in holdout if d in set(manifest["domain"])]
    pool_rows = training_pool(manifest, parse_nsec(cfg.nsec), seed=cfg.split_seed, exclude=exclude)
    pool = pool_rows.index.to_numpy()
    labels = manifest["label"].map(CLASS_INDEX).to_numpy(dtype=np.int64)
    train_domains = [d for d in catalog.domains if d in set(pool_rows["domain"])]
    return RunData(catalog, manifest, labels, pool, train_domains)
