"""Macro-F1, one-vs-rest AUC, Brier and ECE: against scikit-learn and against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, f1_score, roc_auc_score

from domgen.data.labels import CLASS_INDEX
from domgen.engine.metrics import (
    ECE_BINS,
    MEL,
    brier_score,
    evaluate_domains,
    evaluate_predictions,
    expected_calibration_error,
    macro_f1,
    ovr_auc,
)

NV, BCC = CLASS_INDEX["nv"], CLASS_INDEX["bcc"]


def _random_case(rng, n: int, present: list[int], k: int = 7):
    """Labels drawn from ``present`` only, probabilities over all k classes (so argmax can name an absent class)."""
    y = rng.choice(present, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5  # informative, not perfect
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC = P(score_pos > score_neg) + 0.5 P(tie): an independent count over all pairs."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_macro_f1_by_hand_on_a_domain_lacking_classes():
    # PH2-like: 10 nv -> 7 nv, 2 bcc (absent from PH2), 1 mel; 4 mel -> 3 mel, 1 nv.
    # nv: TP 7, FN 3, FP 1 -> F1 = 14 / 18; mel: TP 3, FN 1, FP 1 -> F1 = 6 / 8. bcc's F1 (0) is not
    # averaged in: macro = (14/18 + 6/8) / 2 x100 = 76.39 (with bcc it would be 50.93).
    y = np.array([NV] * 10 + [MEL] * 4)
    pred = np.array([NV] * 7 + [BCC] * 2 + [MEL] + [MEL] * 3 + [NV])
    assert macro_f1(y, pred) == pytest.approx((14 / 18 + 6 / 8) / 2 * 100)
    assert math.isnan(macro_f1([], []))


@pytest.mark.parametrize("present", [[0, 1, 2, 3, 4, 5, 6], [NV, MEL, 4]])
def test_metrics_agree_with_sklearn(present):
    y, p = _random_case(np.random.default_rng(len(present)), 300, present)
    pred = p.argmax(axis=1)
    m, _ = evaluate_predictions(y, p)
    assert m["macro_f1"] == pytest.approx(100 * f1_score(y, pred, labels=np.unique(y), average="macro"))
    assert m["balanced_acc"] == pytest.approx(100 * balanced_accuracy_score(y, pred)) == pytest.approx(m["macro_recall"])
    aucs = [_mann_whitney_auc(p[y == c, c], p[y != c, c]) for c in present]
    assert m["ovr_auc"] == pytest.approx(np.mean(aucs))
    # sklearn's multi-class Brier score (not halved for more than two classes)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p, labels=np.arange(7)))
    if len(present) == 7:  # sklearn's own one-vs-rest macro AUC needs every class present
        assert m["ovr_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    else:  # sklearn over all 7 labels: NaN from the absent classes, which ours leaves out instead
        with pytest.warns(UndefinedMetricWarning):
            assert math.isnan(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(7)))


def _hand_case():
    """4 cases, K = 3.
    a: [.9 .05 .05] y0 (conf .9, right)  b: [.9 .05 .05] y1 (conf .9, wrong)
    c: [.7 .2 .1]  y0 (conf .7, right)   d: [.2 .45 .35] y2 (conf .45, wrong)"""
    p = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.2, 0.45, 0.35]])
    return np.array([0, 1, 0, 2]), p


def test_brier_by_hand():
    # a: .1^2 + .05^2 + .05^2 = .015; b: .9^2 + .95^2 + .05^2 = 1.715; c: .3^2 + .2^2 + .1^2 = .14;
    # d: .2^2 + .45^2 + .65^2 = .04 + .2025 + .4225 = .665. Mean = 2.535 / 4 = .63375.
    y, p = _hand_case()
    assert brier_score(y, p) == pytest.approx(0.63375)


def test_ece_by_hand():
    # 15 bins of width 1/15: .9 -> (13/15, 14/15]; .7 -> (10/15, 11/15]; .45 -> (6/15, 7/15].
    # bin of .9: 2 cases, accuracy 1/2, confidence .9 -> 2/4 * .4 = .2; bin of .7: 1/4 * |1 - .7| = .075;
    # bin of .45: 1/4 * |0 - .45| = .1125. ECE = .3875 (per case, not per bin, it would be .4375).
    assert ECE_BINS == 15
    y, p = _hand_case()
    assert expected_calibration_error(y, p) == pytest.approx(0.3875)
    # a confidence on a bin's upper edge belongs to that bin, (lo, hi]: .8 = 12/15 shares (11/15, 12/15] with
    # .77 -> accuracy 1/2, confidence .785 -> ECE .285 (with [lo, hi) they would split: .5 * .2 + .5 * .77 = .485)
    p2 = np.array([[0.8, 0.2], [0.77, 0.23]])
    assert expected_calibration_error([0, 1], p2) == pytest.approx(0.285)
    # confidence 1.0 falls in the last bin, 0.0 (impossible for a top label, but defined) in the first
    assert expected_calibration_error([0], np.array([[1.0, 0.0]])) == pytest.approx(0.0)


def test_undefined_cases_are_nan_not_errors():
    p = np.array([[0.8, 0.2], [0.6, 0.4]])
    assert math.isnan(ovr_auc([0, 0], p))  # one class present: no negatives
    assert math.isnan(brier_score([], np.zeros((0, 2)))) and math.isnan(expected_calibration_error([], np.zeros((0, 2))))


def test_evaluate_domains_rows_carry_the_new_metrics_per_domain():
    rng = np.random.default_rng(3)
    ya, pa = _random_case(rng, 80, [0, 1, 2, 3, 4, 5, 6])
    yb, pb = _random_case(rng, 60, [NV, MEL])  # a domain lacking five classes
    y, p = np.concatenate([ya, yb]), np.concatenate([pa, pb])
    dom = np.array(["A"] * 80 + ["B"] * 60)
    rows, _ = evaluate_domains(y, p, dom, np.array(["test"] * 140))
    b = next(r for r in rows if r["domain"] == "B")
    assert b["ovr_auc"] == pytest.approx(np.mean([roc_auc_score(yb == c, pb[:, c]) for c in (NV, MEL)]))
    assert b["ece"] == pytest.approx(expected_calibration_error(yb, pb))
    assert b["brier"] == pytest.approx(brier_score(yb, pb))
