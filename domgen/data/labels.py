"""The default label space and the domain lists, derived from the registered sources.

``CLASSES`` is the ``dermoscopy7`` label space (Yoon et al., MICCAI 2019, Table 1, in its order; see
:mod:`domgen.data.label_space`). Nothing else here is kept by hand: each source module declares its
folder name, domain code, label map, Table 1 row and Table 2 column (``domgen.data.sources``), and
``DOMAIN_CODES``, ``DOMAINS``, ``TABLE2_DOMAINS``, ``PRIMARY_DOMAIN`` and ``LABEL_MAPS`` are read from
the registry when first asked for, so this module stays light for code that needs only the classes.
The reasoning behind each map is in ``datasets/<source>.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from domgen.data.label_space import DERMOSCOPY7

CLASSES: tuple[str, ...] = DERMOSCOPY7.classes
CLASS_INDEX: dict[str, int] = DERMOSCOPY7.index
NUM_CLASSES = len(CLASSES)

_DERIVED = ("DOMAIN_CODES", "DOMAINS", "TABLE2_DOMAINS", "PRIMARY_DOMAIN", "LABEL_MAPS")


def native_sources() -> list:
    """The registered sources in Table 1 order (``order``, then name for sources added later)."""
    from domgen.data.sources import SOURCES

    return sorted((SOURCES.get(n) for n in SOURCES), key=lambda s: (s.order, s.name))


def _derive(name: str) -> Any:
    sources = native_sources()
    if name == "DOMAIN_CODES":  # source folder name under the data root -> short code used in every table
        return {s.name: s.domain for s in sources}
    if name == "DOMAINS":  # order of `summary` (Table 1) and of `--json`
        return tuple(s.domain for s in sources)
    if name == "TABLE2_DOMAINS":  # column order of the paper's Table 2
        return tuple(s.domain for s in sorted((s for s in sources if s.table2 is not None), key=lambda s: s.table2))
    if name == "PRIMARY_DOMAIN":
        return next(s.domain for s in sources if s.primary)
    return {s.name: s.label_map for s in sources}  # LABEL_MAPS


def __getattr__(name: str) -> Any:  # PEP 562: computed from the registry at each access
    if name in _DERIVED:
        return _derive(name)
    if name == "ISIC_MAP":
        from domgen.data.sources.isic import ISIC_MAP

        return ISIC_MAP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def domain_order(domains: Iterable[str]) -> list[str]:
    """``domains`` once each, in Table 2's column order, then any other domain (a metadata.csv source, a
    DomainBed folder, ``domain_by`` values) sorted: the one order of every per-domain listing."""
    table2 = _derive("TABLE2_DOMAINS")
    seen = set(map(str, domains))
    return [d for d in table2 if d in seen] + sorted(seen - set(table2))


def table_columns(domains: Iterable[str]) -> list[str]:
    """The domain columns of a results table over runs tested on ``domains``: all of Table 2's seven when
    any of them is among ``domains`` (or none is given), so dermoscopy tables keep one layout with "-" for
    a domain a run lacks, then the other domains; a run on other data (PACS's folders) gets its own."""
    seen = set(map(str, domains))
    table2 = _derive("TABLE2_DOMAINS")
    return domain_order(seen | set(table2) if not seen or seen & set(table2) else seen)


def domain_code(name: str) -> str:
    """Accept a folder name ("PH2", "SONIC") or a code ("SON"), any case; return the code."""
    codes = _derive("DOMAIN_CODES")
    if name in codes.values():
        return name
    for folder, code in codes.items():
        if folder.lower() == name.lower() or code.lower() == name.lower():
            return code
    raise KeyError(f"unknown domain {name!r}; known: {', '.join(codes.values())} (or {', '.join(codes)})")


def normalise_domain(name: str) -> str:
    """``domain_code`` for a registered source's folder name or code; any other name unchanged (a domain
    of a metadata.csv or DOMAIN/CLASS root, or of ``data.domain_by``)."""
    try:
        return domain_code(name.strip())
    except KeyError:
        return name.strip()


def map_label(source: str, diagnosis: str) -> str | None:
    """Class of ``diagnosis`` in ``source``'s own vocabulary, or None when it lies outside its map."""
    from domgen.data.sources import SOURCES

    return SOURCES.get(source).map_label(diagnosis)
