"""Evaluation metrics for one (split, domain): macro recall, balanced accuracy, melanoma operating point.

The paper's primary metric is the macro-average recall per domain, x100 (Yoon, Hamarneh & Garbi,
MICCAI 2019, Sec. 3 and Table 2): the mean over classes of TP_c / (TP_c + FN_c). Domains miss
classes (PH2 holds only nv and mel), so the mean runs over the classes *present in that domain's
ground truth*; a prediction of a class the domain lacks is still an error against the true class.
This is sklearn's ``balanced_accuracy_score``, which the tests assert.

Melanoma is also reported as a binary screen (mel vs. rest, score = P(mel)): AUC, and sensitivity /
specificity at a clinical operating point chosen on *validation* scores (the highest threshold that
still catches >= 95 % of melanomas, since a missed melanoma costs far more than a biopsy) and then
applied unchanged to the test split. :func:`evaluate_domains` does that choice and application.

The study's error profile (:mod:`domgen.protocol`) generalises that screen: the positive set (one class
or several, e.g. mel + bcc + akiec, scored by the sum of their probabilities), its target sensitivity and
the costs of a false negative and a false positive. With ``operating=`` the protocol, every row also holds
``pos_auc``, ``pos_threshold`` (chosen on the domain's validation like the melanoma one, at the protocol's
target), and at that threshold ``pos_sens``, ``pos_spec``, ``pos_ppv`` = TP / (TP + FP), ``pos_npv`` =
TN / (TN + FN) and ``pos_cost`` = (c_FN x FN + c_FP x FP) / N, the expected cost per case (fractions, and
cost units per case). ``positive: [mel]`` at 0.95 gives the melanoma columns' threshold and sensitivity;
the ``mel_*`` columns stay as they were.

Beside the paper's metric every row carries (issue #13): ``macro_f1`` (sklearn's F1, macro over the
classes present in the ground truth, the same convention as macro recall), ``ovr_auc`` (one-vs-rest ROC
AUC of each present class's probability, averaged over the present classes; needs two of them),
``brier`` (the multi-class Brier score, Brier 1950: mean over cases of sum_k (p_k - 1[y = k])^2, in
[0, 2]) and ``ece`` (expected calibration error of the top-label confidence, Guo et al., ICML 2017,
Eq. 3, over :data:`ECE_BINS` = 15 equal-width bins (lo, hi]).

Scales, fixed so tables need no guessing: ``macro_recall``, ``balanced_acc``, ``macro_f1``, ``accuracy``
and ``recall_<cls>`` are percentages; ``ovr_auc``, ``brier``, ``ece``, ``mel_auc``, ``mel_sens``,
``mel_spec`` and ``mel_threshold`` are fractions (like the sensitivity target). Anything undefined (a class absent from the ground
truth, AUC with one class, no threshold) is NaN, never an exception; ``engine.logging.jsonable`` turns NaN
into ``None`` for the JSON-lines logs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from domgen.data.labels import CLASS_INDEX, CLASSES, NUM_CLASSES

if TYPE_CHECKING:
    from domgen.protocol import Protocol

MEL = CLASS_INDEX["mel"]
# Relative slack on ">= target": 19/20 and 0.95 are the same double, but a ratio such as 0.1 * 3 is not.
_EPS = 1e-12
ECE_BINS = 15  # Guo et al. 2017's bin count; equal-width bins of the top-label confidence

__all__ = [
    "MEL",
    "confusion",
    "per_class_recall",
    "recall_by_class",
    "macro_recall",
    "balanced_accuracy",
    "macro_f1",
    "ovr_auc",
    "brier_score",
    "expected_calibration_error",
    "ECE_BINS",
    "threshold_at_sensitivity",
    "sens_spec",
    "binary_auc",
    "operating_point",
    "positive_scores",
    "evaluate_predictions",
    "evaluate_domains",
]


def _labels(y: Any, num_classes: int, name: str) -> np.ndarray:
    """1-D int array; labels outside [0, K) raise, because sklearn would silently drop them."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} holds labels outside [0, {num_classes}): {np.unique(y).tolist()}")
    return y


def confusion(y_true: Any, y_pred: Any, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """K x K counts, rows = truth, columns = prediction, over all K classes (absent rows are zero)."""
    t = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if t.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return confusion_matrix(t, p, labels=np.arange(num_classes))


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall TP_c / (row sum of c) per class, as fractions; NaN for classes absent from the truth.

    Off-diagonal counts in a row, including predictions of classes the domain lacks, lower that
    row's recall: they are errors, not ignored.
    """
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)  # (K,) number of true samples per class
    out = np.full(cm.shape[0], np.nan)
    present = support > 0
    out[present] = np.diag(cm)[present] / support[present]
    return out


def recall_by_class(cm: np.ndarray, classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """Per-class recall x100 keyed by class name (NaN for absent classes)."""
    return {c: float(r) * 100.0 for c, r in zip(classes, per_class_recall(cm), strict=True)}


def macro_recall(cm: np.ndarray) -> float:
    """Macro-average recall x100 over the classes present in the ground truth (paper's metric).

    NaN when the confusion matrix is empty.
    """
    r = per_class_recall(cm)
    r = r[~np.isnan(r)]
    return float(r.mean() * 100.0) if r.size else math.nan


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """sklearn's balanced accuracy x100; equals :func:`macro_recall` of the same confusion matrix.

    sklearn warns when y_pred holds a class absent from y_true (its recall is undefined and left out,
    the very convention of the paper), so that warning is silenced here.
    """
    t = np.asarray(y_true).reshape(-1)
    if t.size == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # A one-class domain (SONIC is all nv) is legitimate; sklearn's shape warning does not apply.
        warnings.filterwarnings("ignore", message="A single label was found")
        return float(balanced_accuracy_score(t, np.asarray(y_pred).reshape(-1)) * 100.0)


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """sklearn's macro F1 x100 over the classes present in ``y_true`` (as :func:`macro_recall`): a
    prediction of an absent class is still a false negative of the true class, but the absent class's own
    F1 (0 by sklearn's convention) is not averaged in. NaN when ``y_true`` is empty."""
    t = np.asarray(y_true).reshape(-1)
    if t.size == 0:
        return math.nan
    present = np.unique(t)
    return float(f1_score(t, np.asarray(y_pred).reshape(-1), labels=present, average="macro", zero_division=0) * 100.0)


def ovr_auc(y_true: Any, probs: Any) -> float:
    """One-vs-rest ROC AUC, macro over the classes present in ``y_true``: for each present class c, the AUC
    of ``probs[:, c]`` separating c from the rest; then their mean. With every class present this is
    sklearn's ``roc_auc_score(multi_class="ovr", average="macro")``; sklearn refuses a domain lacking a
    class, which here simply leaves that class out. NaN with fewer than two classes present."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    present = np.unique(t)
    if present.size < 2:
        return math.nan
    return float(np.mean([roc_auc_score(t == c, p[:, c]) for c in present]))


def brier_score(y_true: Any, probs: Any) -> float:
    """Multi-class Brier score (Brier 1950): mean over cases of sum_k (p_k - 1[y = k])^2, in [0, 2] (not
    halved, not one-vs-rest); NaN when empty."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if t.size == 0:
        return math.nan
    onehot = np.eye(p.shape[1])[t]  # (N, K)
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def expected_calibration_error(y_true: Any, probs: Any, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al., ICML 2017, Eq. 3): sum over equal-width bins B of the top-label confidence of
    |B| / n * |accuracy(B) - mean confidence(B)|. Bin b holds confidences in (b / bins, (b + 1) / bins], the
    first bin also 0 (Guo et al.'s code). A fraction in [0, 1]; NaN when empty."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if t.size == 0:
        return math.nan
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == t).astype(np.float64)
    # ceil(conf * bins) - 1 puts conf exactly on an upper edge into the lower bin, as (lo, hi] asks
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(idx):
        m = idx == b
        total += m.sum() / t.size * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def threshold_at_sensitivity(y_true_bin: Any, score: Any, target: float = 0.95) -> float:
    """Highest threshold t with sensitivity P(score >= t | positive) >= target on these scores.

    Meant for validation scores; the caller applies t to the test split with :func:`sens_spec`.
    Uses ``roc_curve`` with ``drop_intermediate=False``: the default drops collinear ROC points,
    and the first threshold to reach the target can be one of them (several positives in a row).
    NaN when there are no positives. A target <= 0 gives +inf (predict nothing).
    """
    y = np.asarray(y_true_bin).reshape(-1).astype(bool)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if not y.any():
        return math.nan
    with warnings.catch_warnings():
        # No negatives makes fpr undefined, which does not matter for a threshold on tpr.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        _, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # thresholds decrease and tpr rises along the curve: the first hit is the highest threshold.
    idx = int(np.argmax(tpr >= target - _EPS))
    return float(thresholds[idx])


def sens_spec(y_true_bin: Any, score: Any, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``score >= threshold`` (``roc_curve``'s convention).

    Each is NaN when undefined: no positives (sensitivity), no negatives (specificity), NaN threshold.
    """
    y = np.asarray(y_true_bin).reshape(-1).astype(bool)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if threshold is None or math.isnan(threshold):
        return math.nan, math.nan
    pred = s >= threshold
    sens = float(pred[y].mean()) if y.any() else math.nan
    spec = float((~pred[~y]).mean()) if (~y).any() else math.nan
    return sens, spec


def binary_auc(y_true_bin: Any, score: Any) -> float:
    """ROC AUC via sklearn; NaN (no exception) when only one class is present."""
    y = np.asarray(y_true_bin).reshape(-1).astype(bool)
    if y.all() or not y.any():
        return math.nan
    return float(roc_auc_score(y, np.asarray(score, dtype=np.float64).reshape(-1)))


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    mel_threshold: float | None = None,
    classes: Sequence[str] = CLASSES,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one (split, domain) as a flat dict of floats, plus its K x K confusion matrix.

    ``probs`` is (N, K) class probabilities (argmax gives the prediction; column ``mel`` is the
    melanoma score). The dict always has the same keys, NaN where undefined, so JSON lines stay
    rectangular: n, accuracy, macro_recall, balanced_acc, macro_f1, ovr_auc, brier, ece, recall_<cls>...,
    mel_auc, mel_threshold, mel_sens, mel_spec (the last two NaN when no threshold is given).
    """
    k = len(classes)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"probs must be (N, {k}); got {p.shape}")
    t = _labels(y_true, k, "y_true")
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"{t.shape[0]} labels but {p.shape[0]} rows of probs")
    pred = p.argmax(axis=1) if p.shape[0] else np.zeros(0, dtype=np.int64)
    cm = confusion(t, pred, k)
    is_mel, mel_score = melanoma_scores(t, p, classes)
    thr = math.nan if mel_threshold is None else float(mel_threshold)
    sens, spec = sens_spec(is_mel, mel_score, thr)
    out: dict[str, float] = {
        "n": float(t.size),
        "accuracy": float((pred == t).mean() * 100.0) if t.size else math.nan,
        "macro_recall": macro_recall(cm),
        "balanced_acc": balanced_accuracy(t, pred),
        "macro_f1": macro_f1(t, pred),
        "ovr_auc": ovr_auc(t, p),
        "brier": brier_score(t, p),
        "ece": expected_calibration_error(t, p),
    }
    out.update({f"recall_{c}": r for c, r in recall_by_class(cm, classes).items()})
    out.update(mel_auc=binary_auc(is_mel, mel_score), mel_threshold=thr, mel_sens=sens, mel_spec=spec)
    return out, cm


def melanoma_scores(t: np.ndarray, p: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(is melanoma, melanoma probability) per row; a label space without "mel" has no positives, so its
    melanoma metrics (AUC, threshold, sensitivity, specificity) come out NaN."""
    if "mel" not in classes:
        return np.zeros(len(t), dtype=bool), np.zeros(len(t))
    mel = list(classes).index("mel")
    return t == mel, p[:, mel]


def _first_seen(values: np.ndarray) -> list[str]:
    """Distinct values in order of first appearance (keeps the caller's domain order)."""
    return list(dict.fromkeys(values.tolist()))


def positive_scores(t: np.ndarray, p: np.ndarray, classes: Sequence[str], positive: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(in the positive set, P(positive set) = the sum of its classes' probabilities) per row; classes of the
    set that the label space lacks add nothing (a set with none of them has no positives: NaN metrics)."""
    cols = [list(classes).index(c) for c in positive if c in classes]
    if not cols:
        return np.zeros(len(t), dtype=bool), np.zeros(len(t))
    return np.isin(t, cols), p[:, cols].sum(axis=1)


def operating_point(y_true_bin: Any, score: Any, threshold: float, cost_fn: float, cost_fp: float) -> dict[str, float]:
    """The screen ``score >= threshold`` on these cases: sensitivity, specificity, PPV, NPV (fractions; NaN
    where the denominator is 0) and the expected cost per case (c_FN x FN + c_FP x FP) / N (NaN without a
    threshold or cases)."""
    y = np.asarray(y_true_bin).reshape(-1).astype(bool)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    out = dict(sens=math.nan, spec=math.nan, ppv=math.nan, npv=math.nan, cost=math.nan)
    if threshold is None or math.isnan(threshold) or y.size == 0:
        return out
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / (a + b) if a + b else math.nan

    out.update(sens=ratio(tp, fn), spec=ratio(tn, fp), ppv=ratio(tp, fp), npv=ratio(tn, fn),
               cost=(cost_fn * fn + cost_fp * fp) / y.size)
    return out


def _thresholds(is_pos: np.ndarray, score: np.ndarray, dom: np.ndarray, is_val: np.ndarray, target: float,
                threshold_from: str) -> dict[str, tuple[float, float]]:
    """Domain -> (threshold, 1.0 if it is the pooled one else 0.0): the domain's own validation threshold
    reaching ``target``, else (no validation rows or no positives there) the pooled validation one."""
    if threshold_from not in ("domain", "pooled"):
        raise ValueError(f"threshold_from must be 'domain' or 'pooled', got {threshold_from!r}")
    pooled = threshold_at_sensitivity(is_pos[is_val], score[is_val], target)
    out = {}
    for d in _first_seen(dom):
        out[d] = (pooled, 1.0)
        if threshold_from == "domain":
            m = is_val & (dom == d)
            own = threshold_at_sensitivity(is_pos[m], score[m], target)
            if not math.isnan(own):
                out[d] = (own, 0.0)
    return out


def _operating_metrics(t: np.ndarray, p: np.ndarray, classes: Sequence[str], protocol: Protocol, thr: float) -> dict[str, float]:
    """The ``pos_*`` columns of one (split, domain) at the threshold ``thr`` its validation chose."""
    is_pos, score = positive_scores(t, p, classes, protocol.positive)
    op = operating_point(is_pos, score, thr, protocol.cost_false_negative, protocol.cost_false_positive)
    return {"pos_auc": binary_auc(is_pos, score), "pos_threshold": thr} | {f"pos_{k}": v for k, v in op.items()}


def evaluate_domains(
    y_true: Any,
    probs: Any,
    domains: Any,
    splits: Any,
    *,
    val_split: str = "val",
    target: float = 0.95,
    threshold_from: Literal["domain", "pooled"] = "domain",
    classes: Sequence[str] = CLASSES,
    operating: Protocol | None = None,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Evaluate every (split, domain) present, with the melanoma threshold chosen on validation.

    The threshold for a domain is :func:`threshold_at_sensitivity` (``target``) on that domain's
    ``val_split`` rows (``threshold_from="domain"``, the default), and is applied to every split of
    that domain, test included. A domain with no usable validation (no rows, or no melanoma there,
    e.g. the held-out domain of a leave-one-domain-out run) falls back to the threshold from all
    validation rows pooled, i.e. the source domains; ``mel_threshold_pooled`` = 1.0 marks that.
    ``threshold_from="pooled"`` uses the pooled threshold everywhere. ``operating``: a study's protocol,
    whose positive set gets the same choice at the protocol's target (``pos_*`` columns, see the module
    docstring; ``pos_threshold_pooled`` marks the fallback).

    Returns rows ``{"split", "domain", **metrics, "mel_threshold_pooled"}`` in order of first
    appearance (domain-major), and the confusion matrices keyed by ``(split, domain)``.
    """
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    dom = np.asarray(domains).astype(str).reshape(-1)
    spl = np.asarray(splits).astype(str).reshape(-1)
    if not (t.shape[0] == p.shape[0] == dom.shape[0] == spl.shape[0]):
        raise ValueError(f"length mismatch: {t.shape[0]}, {p.shape[0]}, {dom.shape[0]}, {spl.shape[0]}")
    is_val = spl == val_split
    mel = _thresholds(*melanoma_scores(t, p, classes), dom, is_val, target, threshold_from)
    pos = {}
    if operating is not None:
        is_pos, score = positive_scores(t, p, classes, operating.positive)
        pos = _thresholds(is_pos, score, dom, is_val, operating.target_sensitivity, threshold_from)
    rows: list[dict[str, Any]] = []
    cms: dict[tuple[str, str], np.ndarray] = {}
    for d in _first_seen(dom):
        thr, from_pool = mel[d]
        for s in _first_seen(spl[dom == d]):
            m = (dom == d) & (spl == s)
            metrics, cm = evaluate_predictions(t[m], p[m], thr, classes)
            row = {"split": s, "domain": d, **metrics, "mel_threshold_pooled": from_pool}
            if operating is not None:
                row |= _operating_metrics(t[m], p[m], classes, operating, pos[d][0]) | {"pos_threshold_pooled": pos[d][1]}
            rows.append(row)
            cms[(s, d)] = cm
    return rows, cms
