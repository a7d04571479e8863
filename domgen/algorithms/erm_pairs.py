"""ERM on CCSA's pairs: the pair sampler without the alignment loss (an ablation of weighted CCSA).

Weighted CCSA (Yoon, Hamarneh & Garbi, MICCAI 2019, eqs. 1-8) changes two things against ERM: what a
batch holds (the pair sampler: every pool image once as x1, a partner x2 from a secondary domain, so the
secondary domains are over-sampled) and the loss (the alignment terms L_SA + L_S). ``erm_pairs`` keeps the
first and drops the second: the loss is CCSA's at alpha = 0, ``L_C1 + L_C2``, each stream's
classification weighted by the inverse of its exact class probabilities under the sampler, computed by
CCSA's own code (this class is :class:`~domgen.algorithms.ccsa.CCSA` with alpha fixed at 0), so a gap
between ``erm_pairs`` and ``ccsa`` is the alignment's and a gap between ``erm`` and ``erm_pairs`` the
sampler's. The alignment and separation distances are still logged (``train_align``, ``train_sep``,
unweighted, with zero weight in the loss): how far the features are from aligned when nothing aligns them.

Its hyperparameters are the pair sampler's only (p_same, pairs, exclude_own_domain, with CCSA's defaults
and search); margin, alpha and weighted_align are fixed class attributes, not config fields, so they
neither appear in the record nor can be set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from domgen.algorithms.base import ALGORITHMS, hparam
from domgen.algorithms.ccsa import CCSA, CCSAHparams
from domgen.config import AlgorithmConfig

_CCSA_FIELDS = {f.name: f for f in dataclasses.fields(CCSAHparams)}


def _ccsa_hparam(name: str):
    """CCSA's field ``name`` with its default and search, so the two never disagree."""
    f = _CCSA_FIELDS[name]
    return hparam(f.default, f.metadata["search"])


@dataclass(frozen=True)
class ERMPairsHparams(AlgorithmConfig):
    name: str = "erm_pairs"
    sampler: str = "pairs"
    p_same: float = _ccsa_hparam("p_same")  # share of positive pairs
    pairs: str = _ccsa_hparam("pairs")  # negatives' labelling: exclusive | branch | uniform
    exclude_own_domain: bool = _ccsa_hparam("exclude_own_domain")  # x2's secondary other than x1's domain
    # What CCSA's code reads and the ablation fixes (class attributes, not fields: not in the config or hash).
    alpha: ClassVar[float] = 0.0  # no alignment or separation in the loss
    margin: ClassVar[float] = CCSAHparams.margin  # only the logged separation distance uses it
    weighted_align: ClassVar[bool] = False  # the alignment terms carry no weight in the loss anyway
    margin_dim: ClassVar[int] = 0  # the logged separation distance uses the margin as given


@ALGORITHMS.register("erm_pairs")
class ERMPairs(CCSA):
    """ERM on CCSA's pairs: CCSA at alpha = 0, L_C1 + L_C2 with each stream's class weights."""

    Hparams = ERMPairsHparams
    reference = "Yoon et al., MICCAI 2019 (eq. 1-8 at alpha = 0): ERM on CCSA's pair sampler, an ablation"
    shapes_features = True  # compared with CCSA's projector: the features without alignment
