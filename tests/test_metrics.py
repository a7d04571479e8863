"""Metrics on hand-built cases: every expected number below is worked out in the comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from domgen.data.labels import CLASS_INDEX, CLASSES
from domgen.engine.logging import confusion_figure, jsonable
from domgen.engine.metrics import (
    MEL,
    balanced_accuracy,
    binary_auc,
    confusion,
    evaluate_domains,
    evaluate_predictions,
    macro_recall,
    per_class_recall,
    recall_by_class,
    sens_spec,
    threshold_at_sensitivity,
)

NV, BCC = CLASS_INDEX["nv"], CLASS_INDEX["bcc"]


def _ph2_like():
    """PH2 has only nv and mel. 10 nv: 7 -> nv, 2 -> bcc (a class PH2 lacks), 1 -> mel.
    4 mel: 3 -> mel, 1 -> nv. Recall nv = 7/10, mel = 3/4; macro = (70 + 75) / 2 = 72.5.
    Ignoring the bcc predictions would wrongly give nv 7/8 and macro 81.25."""
    y_true = [NV] * 10 + [MEL] * 4
    y_pred = [NV] * 7 + [BCC] * 2 + [MEL] + [MEL] * 3 + [NV]
    return np.array(y_true), np.array(y_pred)


def test_confusion_rows_are_truth():
    y_true, y_pred = _ph2_like()
    cm = confusion(y_true, y_pred)
    assert cm.shape == (7, 7)
    assert cm[NV, NV] == 7 and cm[NV, BCC] == 2 and cm[NV, MEL] == 1
    assert cm[MEL, MEL] == 3 and cm[MEL, NV] == 1
    assert cm.sum() == 14 and cm[2:].sum() == 0  # no bcc..akiec rows in PH2


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion([0, 7], [0, 0])


def test_macro_recall_domain_lacking_classes():
    y_true, y_pred = _ph2_like()
    cm = confusion(y_true, y_pred)
    assert macro_recall(cm) == pytest.approx(72.5)
    rec = recall_by_class(cm)
    assert rec["nv"] == pytest.approx(70.0) and rec["mel"] == pytest.approx(75.0)
    for c in ("bcc", "df", "bkl", "vasc", "akiec"):
        assert math.isnan(rec[c])  # absent from PH2's ground truth
    assert np.isnan(per_class_recall(cm)).sum() == 5


def test_macro_recall_three_classes_by_hand():
    # Rows: nv 8/10 correct, mel 1/2, bkl 3/4 (one bkl predicted as vasc, absent class).
    # Macro over the 3 present = (80 + 50 + 75) / 3 = 68.333...; accuracy would be 12/16 = 75.
    cm = np.zeros((7, 7), dtype=int)
    cm[0, 0], cm[0, 1], cm[0, 4] = 8, 1, 1
    cm[1, 1], cm[1, 0] = 1, 1
    cm[4, 4], cm[4, 5] = 3, 1
    assert macro_recall(cm) == pytest.approx(205 / 3)


def test_all_correct_is_100_and_empty_is_nan():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 0, 1])
    assert macro_recall(confusion(y, y)) == pytest.approx(100.0)
    assert math.isnan(macro_recall(np.zeros((7, 7))))


def test_balanced_accuracy_equals_macro_recall():
    y_true, y_pred = _ph2_like()
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(72.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        present = rng.choice(7, size=rng.integers(1, 8), replace=False)
        t = rng.choice(present, size=50)
        p = rng.integers(0, 7, size=50)  # predictions may name absent classes
        assert balanced_accuracy(t, p) == pytest.approx(macro_recall(confusion(t, p)))


# 20 melanomas: 17 at 0.9, then 0.6, 0.4, 0.35; 5 others: 0.7, 0.5, 0.3, 0.1, 0.05.
# >= 95 % sensitivity needs 19/20 melanomas above threshold -> the 19th highest mel score, 0.4
# (at 0.5 only 18/20 = 0.90). Specificity at 0.4: 0.3, 0.1, 0.05 fall below -> 3/5 = 0.6.
# 0.4 sits on a vertical ROC segment (0.5 -> 0.4 -> 0.35 add positives only), which roc_curve's
# default drop_intermediate=True would remove and give 0.35 instead.
POS = [0.9] * 17 + [0.6, 0.4, 0.35]
NEG = [0.7, 0.5, 0.3, 0.1, 0.05]


def test_threshold_at_95_sensitivity():
    y = np.array([1] * len(POS) + [0] * len(NEG))
    s = np.array(POS + NEG)
    thr = threshold_at_sensitivity(y, s, 0.95)
    assert thr == pytest.approx(0.4)
    sens, spec = sens_spec(y, s, thr)
    assert sens == pytest.approx(0.95) and spec == pytest.approx(0.6)
    # 100 % needs every melanoma: threshold 0.35, specificity still 3/5.
    assert threshold_at_sensitivity(y, s, 1.0) == pytest.approx(0.35)
    # 90 %: 18/20 reached first at 0.6 (0.9 -> 17/20 = 0.85).
    assert threshold_at_sensitivity(y, s, 0.90) == pytest.approx(0.6)


def test_threshold_and_sens_spec_undefined_cases():
    assert math.isnan(threshold_at_sensitivity([0, 0, 0], [0.1, 0.2, 0.3]))
    assert threshold_at_sensitivity([1, 1], [0.2, 0.8], 1.0) == pytest.approx(0.2)  # no negatives
    sens, spec = sens_spec([1, 1], [0.2, 0.8], 0.5)
    assert sens == pytest.approx(0.5) and math.isnan(spec)
    assert all(math.isnan(v) for v in sens_spec([1, 0], [0.2, 0.8], math.nan))


def test_auc_by_hand_and_nan_with_one_class():
    # Positives 0.8, 0.6, 0.4 vs negatives 0.7, 0.3: pairs ranked right = 2 + 1 + 1 = 4 of 6.
    y = [1, 1, 1, 0, 0]
    s = [0.8, 0.6, 0.4, 0.7, 0.3]
    assert binary_auc(y, s) == pytest.approx(4 / 6)
    assert math.isnan(binary_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(binary_auc([0, 0], [0.1, 0.5]))


def _probs(mel_scores):
    """Rows with P(mel) = s and P(nv) = 1 - s: argmax is mel iff s > 0.5."""
    p = np.zeros((len(mel_scores), 7))
    p[:, MEL] = mel_scores
    p[:, NV] = 1.0 - np.asarray(mel_scores)
    return p


def test_evaluate_predictions_keys_and_values():
    # 3 mel (0.9, 0.6, 0.2) + 2 nv (0.3, 0.8). Argmax: mel, mel, nv | nv, mel.
    # Recall mel 2/3, nv 1/2 -> macro (66.67 + 50) / 2 = 58.33; accuracy 3/5 = 60.
    # AUC: 0.9 beats both, 0.6 beats 0.3, 0.2 beats none -> 3/6 = 0.5.
    # Threshold 0.25: mel 0.9, 0.6 caught (2/3); nv 0.3 flagged, 0.8 flagged -> spec 0/2.
    y = np.array([MEL] * 3 + [NV] * 2)
    m, cm = evaluate_predictions(y, _probs([0.9, 0.6, 0.2, 0.3, 0.8]), mel_threshold=0.25)
    assert set(m) == {
        "n", "accuracy", "macro_recall", "balanced_acc", "macro_f1", "ovr_auc", "brier", "ece",
        "mel_auc", "mel_threshold", "mel_sens", "mel_spec",
    } | {f"recall_{c}" for c in CLASSES}
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(60.0)
    assert m["macro_recall"] == pytest.approx(175 / 3) == m["balanced_acc"]
    assert m["recall_mel"] == pytest.approx(200 / 3) and math.isnan(m["recall_df"])
    assert m["mel_auc"] == pytest.approx(0.5)
    assert m["ovr_auc"] == pytest.approx(0.5)  # mel vs rest 0.5; nv vs rest, scored 1 - P(mel), the same pairs: 0.5
    assert m["mel_sens"] == pytest.approx(2 / 3) and m["mel_spec"] == pytest.approx(0.0)
    assert cm[MEL, NV] == 1 and cm[NV, MEL] == 1
    m2, _ = evaluate_predictions(y, _probs([0.9, 0.6, 0.2, 0.3, 0.8]))
    assert math.isnan(m2["mel_sens"]) and math.isnan(m2["mel_threshold"])


def _domain_case():
    """Domain A val: mel 0.9, 0.8, 0.5, 0.3; nv 0.6, 0.2, 0.1 -> 95 % of 4 needs all 4 -> thr 0.3.
    A test: mel 0.9, 0.35, 0.25, 0.1 -> 2/4 = 0.5 at 0.3; nv 0.4, 0.2 -> spec 1/2.
    Domain B val: mel 0.7, 0.6; nv 0.5 -> thr 0.6. B test: mel 0.65, 0.55, 0.9 -> 2/3 at 0.6
    (A's 0.3 would give 3/3). Domain C: test only -> pooled val threshold: all 6 val melanomas
    needed (5/6 < 0.95) -> 0.3; C test mel 0.35, 0.25 -> 1/2."""
    parts = [  # (domain, split, mel scores of melanomas, mel scores of nevi)
        ("A", "val", [0.9, 0.8, 0.5, 0.3], [0.6, 0.2, 0.1]),
        ("A", "test", [0.9, 0.35, 0.25, 0.1], [0.4, 0.2]),
        ("B", "val", [0.7, 0.6], [0.5]),
        ("B", "test", [0.65, 0.55, 0.9], [0.3]),
        ("C", "test", [0.35, 0.25], [0.1]),
    ]
    y, s, dom, spl = [], [], [], []
    for d, sp, mel, nv in parts:
        y += [MEL] * len(mel) + [NV] * len(nv)
        s += mel + nv
        dom += [d] * (len(mel) + len(nv))
        spl += [sp] * (len(mel) + len(nv))
    return np.array(y), _probs(s), np.array(dom), np.array(spl)


def test_evaluate_domains_applies_val_threshold_to_test():
    rows, cms = evaluate_domains(*_domain_case())
    by = {(r["split"], r["domain"]): r for r in rows}
    assert [(r["split"], r["domain"]) for r in rows] == [
        ("val", "A"), ("test", "A"), ("val", "B"), ("test", "B"), ("test", "C"),
    ]
    assert by[("test", "A")]["mel_threshold"] == pytest.approx(0.3)
    assert by[("test", "A")]["mel_sens"] == pytest.approx(0.5)
    assert by[("test", "A")]["mel_spec"] == pytest.approx(0.5)
    assert by[("val", "A")]["mel_sens"] == pytest.approx(1.0)  # chosen there, so >= 0.95
    assert by[("test", "B")]["mel_threshold"] == pytest.approx(0.6)
    assert by[("test", "B")]["mel_sens"] == pytest.approx(2 / 3)
    assert by[("test", "C")]["mel_threshold"] == pytest.approx(0.3)
    assert by[("test", "C")]["mel_sens"] == pytest.approx(0.5)
    assert by[("test", "C")]["mel_threshold_pooled"] == 1.0
    assert by[("test", "A")]["mel_threshold_pooled"] == 0.0
    assert by[("test", "B")]["n"] == 4 and cms[("test", "B")].sum() == 4


def test_evaluate_domains_pooled_threshold():
    rows, _ = evaluate_domains(*_domain_case(), threshold_from="pooled")
    b = next(r for r in rows if (r["split"], r["domain"]) == ("test", "B"))
    assert b["mel_threshold"] == pytest.approx(0.3) and b["mel_sens"] == pytest.approx(1.0)


def test_jsonable_turns_nan_into_none():
    d = {"a": math.nan, "b": np.float32(2.5), "c": [np.inf, 1], "d": np.int64(3), "e": "x"}
    out = jsonable(d)
    assert out == {"a": None, "b": 2.5, "c": [None, 1], "d": 3, "e": "x"}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    rows, _ = evaluate_domains(*_domain_case())
    text = json.dumps(jsonable(rows[0]), allow_nan=False)  # would raise on a NaN
    assert json.loads(text)["recall_df"] is None


def test_confusion_figure_annotates_every_cell():
    y_true, y_pred = _ph2_like()
    cm = confusion(y_true, y_pred)
    fig = confusion_figure(cm, CLASSES, "PH2 test")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 49
    assert texts[NV * 7 + NV] == "7" and texts[NV * 7 + BCC] == "2" and texts[MEL * 7 + NV] == "1"
    assert ax.get_title() == "PH2 test"
    fig.canvas.draw()  # renders on Agg without a display
    assert fig.canvas.buffer_rgba().shape[2] == 4


def test_ovr_auc_is_the_one_vs_rest_macro_over_present_classes():
    # class a: positives 0.6, 0.2 vs negatives 0.3, 0.1 -> 3 of 4 pairs; b: 0.4 vs 0.3, 0.5, 0.2 -> 2/3;
    # c: 0.7 vs 0.1, 0.3, 0.3 -> 1; mean (0.75 + 2/3 + 1) / 3
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]])
    m, _ = evaluate_predictions(np.array([0, 0, 1, 2]), p, classes=("a", "b", "c"))
    assert m["ovr_auc"] == pytest.approx((0.75 + 2 / 3 + 1) / 3)
    one, _ = evaluate_predictions(np.array([1, 1]), p[:2], classes=("a", "b", "c"))
    assert math.isnan(one["ovr_auc"])  # one class present: no AUC


def test_log_final_writes_test_confusions_hparams_and_a_capped_projector(tmp_path):
    """The end of a run in TensorBoard: one confusion image per test domain (none for validation), the
    hparams with each test domain's macro recall, and the projector capped at 2,000 test features."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from domgen.engine.logging import TensorBoard, log_final

    y_true, y_pred = _ph2_like()
    cm = confusion(y_true, y_pred)
    cms = {("val", "HAM"): cm, ("test", "HAM"): cm, ("test", "PH2"): cm}
    rows = [{"split": "val", "domain": "HAM", "macro_recall": 10.0}, {"split": "test", "domain": "HAM", "macro_recall": 20.0},
            {"split": "test", "domain": "PH2", "macro_recall": 30.0}]
    n_test, n_val = 2100, 50
    spl = np.array(["val"] * n_val + ["test"] * n_test)
    doms = np.array(["HAM"] * (n_val + n_test // 2) + ["PH2"] * (n_test - n_test // 2))
    y = np.arange(n_val + n_test) % 7
    feats = np.random.default_rng(1).normal(size=(n_val + n_test, 4)).astype(np.float32)
    tb = TensorBoard(tmp_path / "tb")
    log_final(tb, rows, cms, (feats, y, doms, spl), CLASSES, {"exp": "A", "seed": 0}, "A", 5)
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["confusion/HAM", "confusion/PH2"]
    assert [e.step for e in acc.Images("confusion/PH2")] == [5]
    meta = next((tmp_path / "tb").rglob("metadata.tsv")).read_text().splitlines()
    assert meta[0].split("\t") == ["domain", "class", "domain_class"] and len(meta) == 1 + 2000
    assert {line.split("\t")[0] for line in meta[1:]} == {"HAM", "PH2"}  # test rows only, from both domains
    # the hparams are written into the run's own folder (run_name="."), the validation row left out
    assert {t: acc.Scalars(t)[0].value for t in acc.Tags()["scalars"]} == {"hparam/test/HAM": 20.0, "hparam/test/PH2": 30.0}
