"""Empirical risk minimisation: the classification loss on the aggregated training pool.

Yoon, Hamarneh & Garbi (MICCAI 2019), Table 2 rows A-E: cross-entropy on HAM10000 alone (nsec = 0) or
with nsec images per class from every other source, weighted by the inverse class frequencies of the pool
("w" in the Cl column; ``loss.weighted=false`` for plain cross-entropy). With another sampler
(``algorithm.sampler=domain_balanced`` or ``class_balanced``) the weights invert what that sampler draws.
"""

from __future__ import annotations

from domgen.algorithms.base import ALGORITHMS, Algorithm
from domgen.config import AlgorithmConfig


@ALGORITHMS.register("erm")
class ERM(Algorithm):
    """Empirical risk minimisation: the classification loss on each batch as the sampler draws it."""

    Hparams = AlgorithmConfig
    reference = "Vapnik 1998; Yoon et al., MICCAI 2019, Table 2 rows A-E (weighted cross-entropy); DomainBed ERM"
