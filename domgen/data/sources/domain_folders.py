"""A generic source in DomainBed's folder layout (Gulrajani & Lopez-Paz, ICLR 2021): ``DOMAIN/CLASS/*.jpg``
under the data root, as PACS, VLCS, OfficeHome, TerraIncognita and DomainNet ship.

The domain is the first folder, the label the second; every image is its own group (these datasets
give no lesion or patient ids). Files that are not images (by extension) and hidden entries are
ignored; an unreadable image fails, or is dropped and counted with ``--skip-missing``, as in every
adapter. Chosen with ``--set data.layout=domain_folders``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from domgen.data.sources import _io
from domgen.data.sources.base import DataLayoutError, LoadResult, make_records
from domgen.data.sources.metadata_csv import check_domain_names

NAME = "domain_folders"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LAYOUT = f"DOMAIN/CLASS/<image> under the data root (DomainBed's layout; images {', '.join(EXTENSIONS)})"


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in EXTENSIONS)


def list_images(root: Path) -> pd.DataFrame:
    """One row per image file: path, label, domain, group, image_id. Fails naming the folder that
    breaks the layout: no domain folders, a domain without class folders, or no images at all."""
    domains = _folders(root)
    if not domains:
        raise DataLayoutError(f"{NAME}: {root} holds no domain folders. Expected layout: {LAYOUT}")
    check_domain_names([d.name for d in domains], NAME, str(root))
    rows = []
    for domain in domains:
        classes = _folders(domain)
        if not classes:
            raise DataLayoutError(f"{NAME}: domain folder {domain} holds no class folders. Expected layout: {LAYOUT}")
        for cls in classes:
            rows += [{"path": p.resolve(), "label": cls.name, "domain": domain.name, "group": p.relative_to(root).as_posix(),
                      "image_id": p.stem} for p in _images(cls)]
    if not rows:
        raise DataLayoutError(f"{NAME}: no images under {root} (looked for {', '.join(EXTENSIONS)} two folders down). "
                              f"Expected layout: {LAYOUT}")
    return pd.DataFrame(rows)


class DomainFolders:
    name = NAME
    layout = LAYOUT

    def load_root(self, root: Path, skip_missing: bool = False) -> dict[str, LoadResult]:
        """Domain -> its records, in sorted domain order."""
        root = Path(root)
        rows = list_images(root)
        ok = _io.check_images([Path(p) for p in rows["path"]], NAME, root, skip_missing)
        kept, missing = rows.loc[ok], rows.loc[[not g for g in ok]]
        return {d: LoadResult(f"{NAME}:{d}", d, root / d, make_records(kept[kept["domain"] == d].drop(columns="domain"), d),
                              missing=[str(p) for p in missing.loc[missing["domain"] == d, "path"]])
                for d in sorted(set(rows["domain"]))}
