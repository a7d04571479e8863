"""Data sources: one module per dataset, each registering its adapter in ``SOURCES`` under its folder
name on import. ``SOURCES.get("PH2").load(folder)`` -> ``LoadResult``.

Every module of this package is imported here (those starting with ``_`` are helpers), so adding a
dataset is dropping its adapter file in this folder: nothing else lists it. The generic layouts
(``metadata_csv``, ``domain_folders``) live here too but read a whole root and register nothing.
"""

import importlib
import pkgutil

from domgen.data.sources.base import RECORD_COLUMNS, SOURCES, DataLayoutError, LoadResult, Source

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["RECORD_COLUMNS", "SOURCES", "DataLayoutError", "LoadResult", "Source"]
