"""Training algorithms by name: ``ALGORITHMS.get("ccsa")``, one module per method.

Adding a method is one module here that defines its hyperparameters and an :class:`Algorithm` subclass,
registers it with ``@ALGORITHMS.register(name)`` and is imported below (or by the user before the run);
``--set algorithm.name=<name>`` then trains it through the same engine (see ``domgen.algorithms.base``).
"""

from __future__ import annotations

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam, images_per_sample, make_algorithm, random_hparams

# Imported after ALGORITHMS exists: each module registers its algorithms on import, in the order
# `list algorithms` shows them (the baseline and the paper's method first, then DomainBed's families).
from domgen.algorithms import erm, ccsa, erm_pairs  # noqa: E402,F401,I001
from domgen.algorithms import matching, adversarial  # noqa: E402,F401  (coral, mmd; dann, cdann)
from domgen.algorithms import robust, invariance  # noqa: E402,F401  (groupdro, vrex; irm, fishr)
from domgen.algorithms import mixing, regularisers, selfreg  # noqa: E402,F401  (mixup, mixstyle; sd, rsc; selfreg)
from domgen.algorithms.adversarial import CDANN, DANN  # noqa: E402
from domgen.algorithms.ccsa import CCSA, CCSAHparams  # noqa: E402
from domgen.algorithms.erm import ERM  # noqa: E402
from domgen.algorithms.matching import CORAL, MMD  # noqa: E402


def describe_algorithms() -> str:
    """One line per registered algorithm: name, default sampler, the first line of its docstring, its paper."""
    lines = []
    for name in ALGORITHMS.names():
        cls = ALGORITHMS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines.append(f"{name:<11} sampler={cls.Hparams().sampler:<15} {summary}")
        if cls.reference:
            lines.append(f"{'':<11} {cls.reference}")
    return "\n".join(lines)


__all__ = ["ALGORITHMS", "Algorithm", "Batch", "CCSA", "CCSAHparams", "CDANN", "CORAL", "DANN", "ERM", "MMD", "Step",
           "describe_algorithms", "hparam", "images_per_sample", "make_algorithm", "random_hparams"]
