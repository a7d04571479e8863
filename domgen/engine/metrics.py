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

Scales, fixed so tables need no guessing: ``macro_recall``, ``balanced_acc``, ``accuracy`` and
``recall_<cls>`` are percentages; ``mel_auc``, ``mel_sens``, ``mel_spec`` and ``mel_threshold`` are
fractions in [0, 1] (like the sensitivity target). Anything undefined (a class absent from the ground
truth, AUC with one class, no threshold) is NaN, never an exception; :func:`jsonable` turns NaN into
``None`` for the JSON-lines logs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve

from domgen.data.labels import CLASS_INDEX, CLASSES, NUM_CLASSES

MEL = CLASS_INDEX["mel"]
# Relative slack on ">= target": 19/20 and 0.95 are the same double, but a ratio such as 0.1 * 3 is not.
_EPS = 1e-12

__all__ = [
    "MEL",
    "confusion",
    "per_class_recall",
    "recall_by_class",
    "macro_recall",
    "balanced_accuracy",
    "threshold_at_sensitivity",
    "sens_spec",
    "binary_auc",
    "evaluate_predictions",
    "evaluate_domains",
    "jsonable",
    "confusion_figure",
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


def macro_auc(t: np.ndarray, p: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both positives and negatives in ``t``
    (sklearn's ``roc_auc_score(multi_class="ovr", average="macro")`` restricted to those classes); for two
    classes with softmax scores both terms equal the usual binary AUC. NaN when no class qualifies."""
    aucs = [binary_auc(t == c, p[:, c]) for c in range(p.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    mel_threshold: float | None = None,
    classes: Sequence[str] = CLASSES,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one (split, domain) as a flat dict of floats, plus its K x K confusion matrix.

    ``probs`` is (N, K) class probabilities (argmax gives the prediction; column ``mel`` is the
    melanoma score). The dict always has the same keys, NaN where undefined, so JSON lines stay
    rectangular: n, accuracy, macro_recall, balanced_acc, recall_<cls>..., mel_auc, mel_threshold,
    mel_sens, mel_spec (the last two NaN when no threshold is given), auc (one-vs-rest macro, 0..1).
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
    }
    out.update({f"recall_{c}": r for c, r in recall_by_class(cm, classes).items()})
    out.update(mel_auc=binary_auc(is_mel, mel_score), mel_threshold=thr, mel_sens=sens, mel_spec=spec)
    out["auc"] = macro_auc(t, p) if t.size else math.nan  # any label space's AUC (MedMNIST reports it)
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
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Evaluate every (split, domain) present, with the melanoma threshold chosen on validation.

    The threshold for a domain is :func:`threshold_at_sensitivity` (``target``) on that domain's
    ``val_split`` rows (``threshold_from="domain"``, the default), and is applied to every split of
    that domain, test included. A domain with no usable validation (no rows, or no melanoma there,
    e.g. the held-out domain of a leave-one-domain-out run) falls back to the threshold from all
    validation rows pooled, i.e. the source domains; ``mel_threshold_pooled`` = 1.0 marks that.
    ``threshold_from="pooled"`` uses the pooled threshold everywhere.

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
    is_mel, mel_score = melanoma_scores(t, p, classes)
    pooled = threshold_at_sensitivity(is_mel[is_val], mel_score[is_val], target)
    rows: list[dict[str, Any]] = []
    cms: dict[tuple[str, str], np.ndarray] = {}
    for d in _first_seen(dom):
        thr, from_pool = pooled, 1.0
        if threshold_from == "domain":
            m = is_val & (dom == d)
            own = threshold_at_sensitivity(is_mel[m], mel_score[m], target)
            if not math.isnan(own):
                thr, from_pool = own, 0.0
        elif threshold_from != "pooled":
            raise ValueError(f"threshold_from must be 'domain' or 'pooled', got {threshold_from!r}")
        for s in _first_seen(spl[dom == d]):
            m = (dom == d) & (spl == s)
            metrics, cm = evaluate_predictions(t[m], p[m], thr, classes)
            rows.append({"split": s, "domain": d, **metrics, "mel_threshold_pooled": from_pool})
            cms[(s, d)] = cm
    return rows, cms


def jsonable(obj: Any) -> Any:
    """Copy of ``obj`` that ``json.dumps`` accepts with strict JSON: NaN/inf -> None, numpy -> Python.

    Recurses into mappings, lists, tuples and arrays; mapping keys become strings.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def confusion_figure(cm: np.ndarray, classes: Sequence[str] = CLASSES, title: str = ""):
    """Matplotlib Figure of a confusion matrix for TensorBoard (``SummaryWriter.add_figure``).

    Rows are true classes, columns predictions; each cell shows its count, and colour is the row-
    normalised rate (recall on the diagonal), so small and large classes read alike. Built on the
    Agg canvas without pyplot: no GUI backend, no global figure state to leak.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    support = cm.sum(axis=1, keepdims=True)  # (K, 1); absent classes keep a blank row
    rate = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
    k = len(classes)
    fig = Figure(figsize=(1.0 + 0.7 * k, 0.6 + 0.7 * k))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row-normalised rate")
    for i in range(k):
        for j in range(k):
            colour = "white" if rate[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
