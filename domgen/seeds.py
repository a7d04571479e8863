"""One rule for stable seeds: the parts of a purpose (seed, epoch, "augment"; or seed, domain, class)
joined and hashed with SHA-256, so a seed is the same on every machine, process and Python version
(unlike ``hash``), and each purpose draws from its own stream.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object, sep: str = "/", bits: int = 63) -> int:
    """The first 8 bytes of ``sha256(sep.join(map(str, parts)))`` as a little-endian integer, keeping its
    top ``bits`` bits.

    The defaults are the training seeds' (``derive_seed(seed, epoch, "augment")``: 63 bits, which fit a
    signed int64 for ``torch.manual_seed``); the split manifest's seeds use ``sep="|", bits=64``. Changing
    either changes every seed drawn with it, so callers keep theirs."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    digest = hashlib.sha256(sep.join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - bits)
