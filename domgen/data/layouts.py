"""How a data root is laid out (``data.layout``), each a loader from the root to per-domain records.

* ``native``: one sub-folder per registered source, named as the source (``HAM10000/``, ``PH2/``...),
  each in its release's own layout (``domgen.data.sources``); absent sources are skipped and reported.
* ``metadata_csv``: one ``metadata.csv`` listing path, label and domain (``sources.metadata_csv``).
* ``domain_folders``: DomainBed's ``DOMAIN/CLASS/*.jpg`` (``sources.domain_folders``).
* ``medmnist``: MedMNIST npz files, one domain each, official splits kept (``sources.medmnist``).

A root that does not look like its layout fails with a message that says which layout it resembles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from domgen.config import LAYOUTS
from domgen.data.labels import native_sources
from domgen.data.sources.base import DataLayoutError, LoadResult
from domgen.data.sources.domain_folders import EXTENSIONS, DomainFolders
from domgen.data.sources.medmnist import MedMnist
from domgen.data.sources.metadata_csv import METADATA, MetadataCsv

# layout -> (root, skip_missing, cache folder) -> (domain -> records, source folder -> why it was skipped)
Loader = Callable[[Path, bool, "Path | None"], "tuple[dict[str, LoadResult], dict[str, str]]"]


def load_native(root: Path, skip_missing: bool, cache: Path | None = None) -> tuple[dict[str, LoadResult], dict[str, str]]:
    results, absent = {}, {}
    sources = native_sources()
    for source in sources:
        path = root / source.name
        if not path.is_dir():
            absent[source.name] = f"no folder {path}"
            continue
        results[source.domain] = source.load(path, skip_missing=skip_missing)
    if not results:
        raise FileNotFoundError(f"no source found under {root}: expected one or more of "
                                f"{', '.join(s.name for s in sources)} as sub-folders{_hint(root)}")
    return results, absent


def _generic(reader) -> Loader:
    return lambda root, skip_missing, cache=None: (reader.load_root(root, skip_missing), {})


def load_medmnist(root: Path, skip_missing: bool, cache: Path | None = None) -> tuple[dict[str, LoadResult], dict[str, str]]:
    return MedMnist().load_root(root, skip_missing, cache), {}


LOADERS: dict[str, Loader] = {
    "native": load_native,
    "metadata_csv": _generic(MetadataCsv()),
    "domain_folders": _generic(DomainFolders()),
    "medmnist": load_medmnist,
}
assert tuple(LOADERS) == LAYOUTS, "config.LAYOUTS names the loaders of this module"


def _hint(root: Path) -> str:
    """What the root looks like instead, said as the --set that reads it."""
    if root.is_dir() and any(root.glob("*.npz")):
        return f"; {root} holds .npz files: to read them as MedMNIST sets, pass --set data.layout=medmnist"
    if (root / METADATA).is_file():
        return f"; {root} holds a {METADATA}: to read it, pass --set data.layout=metadata_csv"
    if root.is_dir() and any(p.suffix.lower() in EXTENSIONS for d in root.iterdir() if d.is_dir()
                             for c in d.iterdir() if c.is_dir() for p in c.iterdir()):
        return f"; {root} looks like DOMAIN/CLASS/<image> folders: to read it, pass --set data.layout=domain_folders"
    return ""


def load_layout(layout: str, root: Path, skip_missing: bool, cache: Path | None = None) -> tuple[dict[str, LoadResult], dict[str, str]]:
    """``cache``: where a layout that must convert its files first (medmnist: npz -> PNG) writes them."""
    if layout not in LOADERS:
        raise DataLayoutError(f"data.layout={layout!r} is not a layout; known: {', '.join(LOADERS)}")
    return LOADERS[layout](Path(root), skip_missing, cache)
