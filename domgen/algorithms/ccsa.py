"""Weighted CCSA (Yoon, Hamarneh & Garbi, MICCAI 2019, eqs. 1-8; Motiian et al., ICCV 2017).

Batches are pairs drawn by the pair sampler (``domgen.data.pair_sampler``): every pool image once per epoch
as x1, its partner x2 from a secondary domain, a quarter of them positives. One forward pass sees both
streams (BatchNorm normalises them together); the loss (``domgen.losses.ccsa.CCSALoss``) is
``(1 - alpha)(L_C1 + L_C2) + alpha (L_SA + L_S)``, each stream's classification weighted by the inverse of
its exact class probabilities under the sampler, and the alignment terms by the inverse of the joint
P(y1, y2) (``algorithm.weighted_align``; Table 2 rows L-N switch the weights off). The defaults are the
authors' code (chrisjmyoon/iccsa): margin 50, alpha 0.1, max-normalised weights, exclusive negatives.

The margin and the feature scale (domgen's rule, not the paper's): the margin m = 50 was chosen for
ResNet's 512-d features. The distance between two feature vectors whose coordinates spread alike grows as
sqrt(D), so on a ViT-Tiny's 192-d features m = 50 asks for more separation than on ResNet-18. Setting
``algorithm.margin_dim=D0`` (the dimension the margin was chosen for, e.g. 512) makes the margin used
``margin * sqrt(D / D0)``, with D = ``model.h.in_features``: 30.6 for D = 192, 50 for D = 512, 100 for
D = 2048. At the default 0 the margin is used as given (Yoon et al.'s behaviour, every existing run), and
the key is hashed only when set. It equalises the scale of the distance, not of what the features
learn; per-backbone margins (``--set algorithm.margin=...``) remain the honest alternative to search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from domgen.algorithms.base import ALGORITHMS, Algorithm, Batch, Step, hparam
from domgen.config import AlgorithmConfig
from domgen.data.pair_sampler import PAIR_MODES
from domgen.losses import CCSALoss, inverse_probability_weights


@dataclass(frozen=True)
class CCSAHparams(AlgorithmConfig):
    name: str = "ccsa"
    sampler: str = "pairs"
    margin: float = hparam(50.0, lambda r: float(10 ** r.uniform(1.0, 2.0)))  # separation margin m (512-d features)
    # (1 - alpha) classification + alpha alignment; authors' code 0.1, paper's text "balanced equally" 0.5
    alpha: float = hparam(0.1, lambda r: float(10 ** r.uniform(-2.0, np.log10(0.5))))
    p_same: float = hparam(0.25, lambda r: float(r.uniform(0.1, 0.5)))  # share of positive pairs (Motiian et al.)
    # negatives of another class | "branch": authors' code, labelled by branch | "uniform": domgen 0.1
    pairs: str = hparam("exclusive", lambda r: str(r.choice(PAIR_MODES)))
    exclude_own_domain: bool = hparam(False, lambda r: bool(r.integers(2)))  # x2's secondary other than x1's domain
    weighted_align: bool = True  # inverse joint-probability weights on L_SA and L_S (Table 2's Al column)
    margin_dim: int = 0  # 0: margin as given; D0 > 0: margin * sqrt(D / D0) for D-d features (module docstring)


def scaled_margin(margin: float, margin_dim: int, dim: int) -> float:
    """The margin used on ``dim``-d features: ``margin`` when ``margin_dim`` is 0, else ``margin * sqrt(dim / margin_dim)``."""
    return float(margin) if margin_dim == 0 else float(margin) * float(np.sqrt(dim / margin_dim))


@ALGORITHMS.register("ccsa")
class CCSA(Algorithm):
    """Weighted CCSA: pairs from the dynamic sampler, classification + contrastive alignment/separation."""

    Hparams = CCSAHparams
    reference = "Yoon, Hamarneh & Garbi, MICCAI 2019, eqs. 1-8; Motiian et al., ICCV 2017 (CCSA)"
    images_per_sample = 2
    shapes_features = True  # it aligns the features: the projector shows them by domain and class

    def __init__(self, hparams: CCSAHparams, *args, **kwargs):
        super().__init__(hparams, *args, **kwargs)
        self.pair_loss = CCSALoss(margin=hparams.margin, alpha=hparams.alpha, cls_loss=self.criterion)

    @classmethod
    def problems(cls, hp: CCSAHparams):
        yield from super().problems(hp)
        if not hp.margin > 0:
            yield "margin", hp.margin, "must be > 0"
        for key in ("alpha", "p_same"):
            if not 0 <= getattr(hp, key) <= 1:
                yield key, getattr(hp, key), "a probability: must be in [0, 1]"
        if hp.margin_dim < 0:
            yield "margin_dim", hp.margin_dim, "a feature dimension (0 = margin as given): must be >= 0"
        if hp.pairs not in PAIR_MODES:
            yield "pairs", hp.pairs, " | ".join(PAIR_MODES)

    def attach(self, model) -> None:
        """The margin for this backbone's feature dimension (``margin_dim``; unchanged at its default 0)."""
        super().attach(model)
        self.pair_loss.margin = scaled_margin(self.hparams.margin, self.hparams.margin_dim, model.h.in_features)

    def sampler_options(self) -> dict[str, Any]:
        hp = self.hparams
        return {"p_same": hp.p_same, "mode": hp.pairs, "exclude_own_domain": hp.exclude_own_domain}

    def fit_weights(self) -> None:
        """Each stream's class weights and the pair weights, from the sampler's exact probabilities."""
        probs = self.sampler.exact_probabilities()
        self.class_w1 = self.class_weights_for(probs.p1)
        self.class_w2 = self.class_weights_for(probs.p2)
        pair_w = inverse_probability_weights(probs.joint, self.loss_cfg.weight_norm)
        self.pair_w = torch.as_tensor(pair_w, dtype=torch.float32, device=self.device) if self.hparams.weighted_align else None

    def loss(self, model, batch: Batch) -> Step:
        logits, z = model.forward_both(batch.x)  # [2B, K], [2B, D]: x1s then their partners
        b = batch.x.shape[0] // 2
        zf, y = z.float(), batch.y
        out = self.pair_loss(logits[:b], logits[b:], zf[:b], zf[b:], y[:b], y[b:], class_w1=self.class_w1,
                             class_w2=self.class_w2, pair_w=self.pair_w, positive=batch.extras["positive"])
        a = self.pair_loss.alpha
        terms = {"cls": (1 - a) * out["cls"], "align": a * out["align"], "sep": a * out["sep"]}
        logs = {k: out[k] for k in ("cls", "align", "sep", "pos_frac")}
        return Step(out["loss"], logs, terms, z)
