"""What a run evaluates, on which images, and how (the trainer's evaluation, apart from its loop).

After each epoch the trainer validates on :meth:`Evaluator.epoch_splits` (plus a fixed sample of training
images, :meth:`Evaluator.train_subsample`, for the overfitting gap); at the end, every domain's validation
and test split with the selected weights. Every row is scored by :func:`~domgen.engine.metrics.evaluate_domains`
with the study's operating point (Yoon et al. 2019, Sec. 3: macro recall per domain; the melanoma
threshold chosen on validation).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from domgen.config import RunConfig
from domgen.data.run_data import RunData
from domgen.engine.averaging import domain_mean_cross_entropy
from domgen.engine.features import FeatureView, PrecomputedFeatures
from domgen.engine.inputs import Inputs
from domgen.engine.loop import predict
from domgen.engine.metrics import evaluate_domains
from domgen.engine.predictions import stratified_subsample
from domgen.seeds import derive_seed


class Evaluator:
    """Predictions and scored rows of any model of a run (the trained one, an average, the best epoch's)."""

    def __init__(self, cfg: RunConfig, data: RunData, inputs: Inputs, features: PrecomputedFeatures | None,
                 trained: nn.Module, device, operating=None):
        """``features``: precomputed g(x) (``regime.precompute``), computed from ``trained``'s frozen g;
        ``operating``: the study's error profile (its positive set's operating point in every row), or None."""
        self.cfg, self.data, self.inputs, self.features, self.trained = cfg, data, inputs, features, trained
        self.device, self.operating = device, operating

    def evaluate(self, model: nn.Module, splits: tuple[str, ...], features: bool = False,
                 domains: list[str] | None = None, extra: np.ndarray | None = None):
        """``model`` on every domain of ``splits``, or only ``domains``, then on the manifest positions
        ``extra`` (in a pass of their own, so the other rows' batches, and so their numbers, are the same with
        or without them). Returns rows, confusion matrices, (features, labels, domains, splits) and
        (positions, probabilities)."""
        m = self.data.manifest
        mask = m["split"].isin(splits)
        if domains is not None:
            mask &= m["domain"].isin(domains)
        pos = np.flatnonzero(mask.to_numpy())
        probs, y, feats = self.predict(model, pos, features)
        if extra is not None and len(extra):
            p2, y2, _ = self.predict(model, extra)
            pos, probs, y = np.concatenate([pos, extra]), np.concatenate([probs, p2]), np.concatenate([y, y2])
        doms, spl = m["domain"].to_numpy()[pos], m["split"].to_numpy()[pos]
        rows, cms = evaluate_domains(y, probs, doms, spl, classes=self.data.classes, operating=self.operating)
        return rows, cms, (feats, y, doms, spl), (pos, probs)

    def predict(self, model: nn.Module, pos: np.ndarray, features: bool = False):
        """``predict`` of ``model`` on the manifest positions ``pos``: from the images, or with precomputed
        features (regime.precompute) from those of the trained model's frozen g, through ``model``'s head."""
        bs = 2 * self.cfg.optim.batch_size
        if self.features is None:
            return predict(model, self.inputs.eval_batches(pos, bs), self.device, features, self.cfg.precision)
        batches = self.features.ready(self.trained).eval_batches(pos, bs)
        return predict(FeatureView(model), batches, self.device, features, self.cfg.precision)

    def train_subsample(self) -> np.ndarray:
        """Manifest positions of the training images evaluated after each epoch (``train_eval`` of them,
        stratified by domain, the same every epoch and after a resume); empty when ``train_eval`` is 0. Their
        rows (split ``train``, stage ``val``) against the validation rows give the overfitting gap."""
        n = self.cfg.train_eval
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        pool = self.data.pool
        domains = self.data.manifest["domain"].to_numpy()[pool]
        return pool[stratified_subsample(domains, n, derive_seed(self.cfg.seed, "train_eval"))]

    def epoch_splits(self) -> tuple[tuple[str, ...], list[str] | None]:
        """What is evaluated after each epoch: with ``epoch_eval=all`` the validation and test splits of
        every domain, held-out ones included, so that every selection method (training-domain,
        leave-one-domain-out, oracle: ``domgen.results.selection``) can be applied afterwards without
        retraining, as DomainBed records every environment at every checkpoint; with ``selection`` only
        the validation splits the training-domain selection averages over (cheaper); ``auto`` (default)
        is ``all`` for a run that holds a domain out and ``selection`` otherwise. Every domain's
        validation and test run at the end with the selected weights (``final``)."""
        mode = self.cfg.epoch_eval
        if mode == "selection" or (mode == "auto" and not self.cfg.data.holdout):
            return ("val",), list(self.data.train_domains)
        return ("val", "test"), None

    def val_loss(self, model: nn.Module) -> float:
        """``model``'s validation loss on the training domains: the mean over those domains of the mean
        (unweighted) cross-entropy on each one's validation split (SWAD's ``tr_outloss``)."""
        m = self.data.manifest
        pos = np.flatnonzero((m["split"].eq("val") & m["domain"].isin(self.data.train_domains)).to_numpy())
        probs, y, _ = self.predict(model, pos)
        return domain_mean_cross_entropy(probs, y, m["domain"].to_numpy()[pos])

