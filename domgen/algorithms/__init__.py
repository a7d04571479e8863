"""Training algorithms by name: ``ALGORITHMS.get("ccsa")``, one module per method.

Adding a method is one module here that defines its hyperparameters and an :class:`Algorithm` subclass,
registers it with ``@ALGORITHMS.register(name)`` and is imported below (or by the user before the run);
``--set algorithm.name=<name>`` then trains it through the same engine (see ``domgen.algorithms.base``).
"""

from __future__ import annotations

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam, images_per_sample, make_algorithm, random_hparams

# Imported after ALGORITHMS exists: each module registers its algorithm on import.
from domgen.algorithms import ccsa, erm  # noqa: E402,F401
from domgen.algorithms.ccsa import CCSA, CCSAHparams  # noqa: E402
from domgen.algorithms.erm import ERM  # noqa: E402
from domgen.algorithms import erm_pairs, mixing, regularisers, selfreg  # noqa: E402,F401  (data-level methods, #12)

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "CCSA", "CCSAHparams", "ERM", "Step", "hparam", "images_per_sample",
           "make_algorithm", "random_hparams"]
