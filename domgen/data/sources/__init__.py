"""Data sources: one module per dataset, each registering its adapter in ``SOURCES`` under its folder
name on import. ``SOURCES.get("PH2").load(folder)`` -> ``LoadResult``."""

from domgen.data.sources import derm7pt, dermofit, ham10000, isic, ph2  # noqa: F401  (register)
from domgen.data.sources.base import RECORD_COLUMNS, SOURCES, DataLayoutError, LoadResult, Source

__all__ = ["RECORD_COLUMNS", "SOURCES", "DataLayoutError", "LoadResult", "Source"]
