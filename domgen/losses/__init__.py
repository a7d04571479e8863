"""Losses by name: ``LOSSES.get("ccsa")(margin=50.0)``, ``LOSSES.get("ce")()``.

A new loss (focal, class-balanced, ...) is one module that registers itself here and is imported below.
"""

from __future__ import annotations

from domgen.registry import Registry

LOSSES: Registry = Registry("loss")

# Imported after LOSSES exists: each module registers its losses on import.
from domgen.losses import ccsa  # noqa: E402,F401
from domgen.losses.ccsa import CCSALoss, CrossEntropy  # noqa: E402

__all__ = ["LOSSES", "CCSALoss", "CrossEntropy"]
