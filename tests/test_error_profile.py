"""The study's error profile (domgen.protocol, issue #13): read and checked, printed in plain words, frozen
beside the runs, edits refused or amended with a logged reason, the pre-registered metric in tables, and the
operating point of the positive set computed by hand."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from domgen import run
from domgen.engine.metrics import evaluate_domains, operating_point
from domgen.protocol import (
    SELECTIONS,
    Protocol,
    ProtocolError,
    freeze,
    frozen_path,
    amendments_path,
    parse_protocol,
    protocol_hash,
    read_frozen,
)
from domgen.studies import load_study

CLASSES = ("nv", "mel", "bcc")
PROTOCOL = {"positive": {"malignant": ["mel", "bcc"]}, "target_sensitivity": 0.75, "cost_false_negative": 10,
            "cost_false_positive": 1, "primary_metric": "macro_recall", "selection": "train", "seeds": 3, "folds": 1,
            "rationale": "an example"}


def write_study(folder: Path, file: str = "mine.yaml", protocol: dict | None = PROTOCOL, name: str = "mine") -> Path:
    """A one-row study named ``name`` (several files may carry one name: each is its own cached study)."""
    doc = {"study": name, "experiments": [{"name": "base", "arch": "resnet18"}]}
    if protocol is not None:
        doc["protocol"] = protocol
    path = folder / file
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---- reading -----------------------------------------------------------------------------------------
def test_a_protocol_block_is_read_into_a_typed_frozen_record(tmp_path):
    p = load_study(write_study(tmp_path)).protocol
    assert p == Protocol(positive_name="malignant", positive=("mel", "bcc"), target_sensitivity=0.75,
                         cost_false_negative=10.0, cost_false_positive=1.0, primary_metric="macro_recall",
                         selection="train", seeds=3, folds=1, rationale="an example", source=str(tmp_path / "mine.yaml"))
    with pytest.raises(AttributeError):
        p.target_sensitivity = 0.5  # frozen
    # a single class names itself; a list is named by its classes; the source never enters the hash
    assert parse_protocol({"positive": "mel"}, "x").positive == ("mel",)
    assert parse_protocol({"positive": ["mel", "bcc"]}, "x").positive_name == "mel+bcc"
    assert protocol_hash(replace(p, source="elsewhere")) == protocol_hash(p) != protocol_hash(replace(p, seeds=5))


def test_a_protocol_file_beside_the_study_is_read_and_both_at_once_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "protocol.yaml").write_text(yaml.safe_dump({"positive": "mel", "cost_false_negative": 5}))
    p = load_study(write_study(tmp_path, "mine.yaml", protocol=None)).protocol
    assert (p.positive, p.cost_false_negative, p.source) == (("mel",), 5.0, str(tmp_path / "mine" / "protocol.yaml"))
    (tmp_path / "mine2").mkdir()
    (tmp_path / "mine2" / "protocol.yaml").write_text("positive: mel\n")
    with pytest.raises(ProtocolError, match=r"mine2\.yaml: the study has a 'protocol:' block and a protocol file"):
        load_study(write_study(tmp_path, "mine2.yaml", name="mine2"))


@pytest.mark.parametrize("change, message", [
    ({"target_sensitivity": 1.5}, "target_sensitivity=1.5 must be in (0, 1]"),
    ({"selection": "best"}, "selection='best' is not one of train, lodo, oracle"),
    ({"primary_metric": "f1"}, "primary_metric='f1' is not one of"),
    ({"cost_false_negative": 0, "cost_false_positive": 0}, "the two costs are both 0"),
    ({"seeds": 2.5}, "seeds must be a whole number"),
    ({"costs": 1}, "unknown key 'costs'"),
    ({"positive": {"a": ["mel"], "b": ["bcc"]}}, "positive names one set"),
])
def test_protocol_mistakes_are_one_error_naming_the_file(tmp_path, change, message):
    with pytest.raises(ProtocolError) as err:
        load_study(write_study(tmp_path, protocol=PROTOCOL | change))
    assert str(err.value).startswith(f"{tmp_path / 'mine.yaml'}, protocol: ") and message in str(err.value)


def test_selections_agree_with_the_selection_registry():
    from domgen.results.selection import SELECTIONS as REGISTRY

    assert set(SELECTIONS) == set(REGISTRY.names()) == set(run.SELECTIONS)


def test_yoon2019_carries_the_papers_protocol():
    p = load_study("yoon2019").protocol
    assert (p.positive, p.target_sensitivity, p.primary_metric, p.selection) == (("mel",), 0.95, "macro_recall", "train")
    assert "not the paper's" in p.rationale


# ---- in plain words ------------------------------------------------------------------------------------
def test_protocol_command_prints_it_in_plain_words(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path)
    assert run.main(["protocol", "--study", str(study), "--runs", "runs"]) == 0
    h = protocol_hash(load_study(study).protocol)
    assert capsys.readouterr().out.splitlines() == [
        f"Protocol of study mine (mine.yaml), hash {h}.",
        "Positive set 'malignant': mel, bcc; a case's score is the sum of the probabilities of these classes.",
        "Operating point: on each domain's validation split, the highest threshold on that score that catches at least "
        "75% of the malignant cases (all validation splits pooled when a domain has none); applied unchanged to the "
        "domain's test split, where sensitivity, specificity, PPV, NPV and the expected cost are reported.",
        "Costs: a missed malignant case (false negative) costs 10, a false alarm (false positive) 1: a miss weighs 10 "
        "false alarms. Expected cost per case = (10 x FN + 1 x FP) / cases.",
        "Primary metric: macro_recall (macro-average recall over the classes present in each domain, x100). table and "
        "compare report it; any other metric only with --exploratory, and the caption then says so.",
        "Model selection: train, training-domain validation (the epoch with the best mean validation score over the "
        "training domains).",
        "Seeds: 3; folds: 1 (the study's fixed split).",
        "Why: an example",
        "Not frozen yet: frozen in runs/.protocol when the study's first run there starts.",
    ]


def test_protocol_command_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = "import sys; from domgen import run; run.main(['protocol']); assert 'torch' not in sys.modules, 'torch'"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Primary metric: macro_recall" in done.stdout


# ---- frozen, refused, amended ---------------------------------------------------------------------------
def test_freeze_refuse_and_amend_with_a_logged_reason(tmp_path):
    p = load_study(write_study(tmp_path)).protocol
    out = tmp_path / "runs"
    first = freeze(p, "mine", out, now=lambda: "2026-12-01T12:00:00+00:00")
    doc = yaml.safe_load(frozen_path(out, "mine").read_text())
    assert doc == {"study": "mine", "hash": protocol_hash(p), "frozen_at": "2026-12-01T12:00:00+00:00", "amendments": 0,
                   "source": p.source, "protocol": p.as_dict()}
    assert freeze(p, "mine", out, now=lambda: "later") == first  # the same protocol: nothing rewritten, nothing logged
    edited = load_study(write_study(tmp_path, "edited.yaml", PROTOCOL | {"target_sensitivity": 0.9, "seeds": 5})).protocol
    with pytest.raises(ProtocolError) as err:
        freeze(edited, "mine", out)
    assert (f"the protocol of study mine ({tmp_path / 'edited.yaml'}) differs from the copy frozen when its first run "
            f"started ({frozen_path(out, 'mine')}, hash {protocol_hash(p)}, 2026-12-01T12:00:00+00:00): "
            "target_sensitivity 0.75 -> 0.9; seeds 3 -> 5. Restore it, or record the change with --amend \"reason\"") in str(err.value)
    assert not amendments_path(out, "mine").exists() and read_frozen(frozen_path(out, "mine")).hash == protocol_hash(p)
    amended = freeze(edited, "mine", out, amend="  the screening clinic asked for 90%  ", now=lambda: "2026-12-02T09:30:00+00:00")
    log = [json.loads(l) for l in amendments_path(out, "mine").read_text().splitlines()]
    assert log == [{"time": "2026-12-02T09:30:00+00:00", "study": "mine", "reason": "the screening clinic asked for 90%",
                    "from_hash": protocol_hash(p), "to_hash": protocol_hash(edited),
                    "changes": [{"key": "target_sensitivity", "before": 0.75, "after": 0.9},
                                {"key": "seeds", "before": 3, "after": 5}]}]
    assert (amended.hash, amended.frozen_at, amended.amendments) == (protocol_hash(edited), "2026-12-02T09:30:00+00:00", 1)
    assert freeze(edited, "mine", out) == amended  # the amended protocol is now the frozen one
    with pytest.raises(ProtocolError, match="target_sensitivity 0.9 -> 0.75; seeds 5 -> 3"):
        freeze(p, "mine", out)  # going back is a change too
    with pytest.raises(ProtocolError, match="has no protocol any more"):
        freeze(None, "mine", out, amend="withdrawn")


def test_a_training_command_under_an_edited_protocol_is_refused_before_any_run_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    p = load_study(write_study(tmp_path)).protocol
    freeze(p, "mine", out, now=lambda: "T0")
    edited = write_study(tmp_path, "edited.yaml", PROTOCOL | {"cost_false_negative": 20})
    argv = ["train", "--study", str(edited), "--exp", "base", "--preset", "smoke", "--weights", "none", "--out", str(out)]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: the protocol of study mine" in err and "cost_false_negative 10.0 -> 20.0" in err
    assert sorted(q.name for q in out.iterdir()) == [".protocol"]
    # `protocol --amend` records it; the amended copy is what later runs and tables are checked against
    assert run.main(["protocol", "--study", str(edited), "--runs", str(out), "--amend", "costs from the clinic"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2].startswith(f"Frozen in {frozen_path(out, 'mine')} (last amended ") and printed[-2].endswith(
        f"1 amendment(s), logged in {amendments_path(out, 'mine')}:")
    assert printed[-1].endswith(": costs from the clinic (cost_false_negative 10.0 -> 20.0)")


# ---- the pre-registered metric in tables ----------------------------------------------------------------
def _write_run(root: Path, exp: str, seed: int, recall: float, study: str = "yoon2019") -> None:
    run_dir = root / f"{exp}-s{seed}-0123456789"
    run_dir.mkdir(parents=True)
    ctx = dict(exp=exp, seed=seed, preset="quick", study=study, config_hash="0123456789", data="synthetic:x",
               synthetic=True, arch="resnet18", nsec="0", algorithm="erm", loss="ce", weighted_cls=True, holdout=[],
               train_domains=["HAM"])
    rows = [ctx | dict(epoch=1, stage="final", split="test", domain=d, n=10, macro_recall=recall + seed,
                       balanced_acc=recall / 2 + seed) for d in ("HAM", "PH2")]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "done").write_text("{}\n")


def test_table_and_compare_report_the_primary_metric_and_another_only_as_exploratory(tmp_path, capsys):
    for seed in (0, 1):
        _write_run(tmp_path, "A", seed, 50.0)
        _write_run(tmp_path, "K", seed, 60.0)
    assert run.main(["table", "--runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("Table 2: test macro_recall (x100) per domain;")
    assert run.main(["table", "--runs", str(tmp_path), "--metric", "balanced_acc"]) == 2
    assert ("error: --metric balanced_acc: the pre-registered primary metric of study yoon2019 is macro_recall (protocol "
            f"{protocol_hash(load_study().protocol)} in {load_study().path}); another metric is reported only with "
            "--exploratory") in capsys.readouterr().err
    assert run.main(["table", "--runs", str(tmp_path), "--metric", "balanced_acc", "--exploratory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    h = protocol_hash(load_study().protocol)
    assert lines[0] == (f"EXPLORATORY: balanced_acc is not the pre-registered primary metric of protocol {h} "
                        "(macro_recall); not a pre-registered result.  ")
    assert lines[1].startswith("Table 2: test balanced_acc (x100)")
    assert "| A | 0 | ResNet-18 | w | - | - | 25.5 ± 0.7 |" in "\n".join(lines)
    assert run.main(["compare", "K", "A", "--runs", str(tmp_path), "--metric", "balanced_acc"]) == 2
    capsys.readouterr()
    assert run.main(["compare", "K", "A", "--runs", str(tmp_path), "--metric", "balanced_acc", "--exploratory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("EXPLORATORY: balanced_acc is not") and lines[1] == "K - A: test balanced_acc (x100), paired by seed."
    assert "| avg | 2 | 30.50 | 25.50 | +5.00 |" in "\n".join(lines)


def test_tables_refuse_runs_frozen_under_another_protocol(tmp_path, capsys):
    study = write_study(tmp_path)
    runs = tmp_path / "runs"
    _write_run(runs, "base", 0, 50.0, study="mine")
    freeze(load_study(write_study(tmp_path, "old.yaml", PROTOCOL | {"primary_metric": "balanced_acc"})).protocol, "mine", runs)
    assert run.main(["table", "--runs", str(runs), "--study", str(study)]) == 2
    assert "primary_metric \"balanced_acc\" -> \"macro_recall\"" in capsys.readouterr().err


# ---- the operating point, by hand ------------------------------------------------------------------------
def _rows(scores: list[float], labels: list[int]) -> np.ndarray:
    """(N, 3) probabilities over nv, mel, bcc whose malignant score P(mel) + P(bcc) is ``scores``."""
    s = np.asarray(scores)
    return np.stack([1 - s, s / 2, s / 2], axis=1)


def test_operating_point_of_the_positive_set_by_hand():
    p = parse_protocol(PROTOCOL, "test")
    # domain X, validation: malignant (mel, bcc) at 0.9 0.8 0.6 0.3, benign (nv) at 0.7 0.5 0.2 0.1. Catching 75%
    # (3 of 4) needs the threshold down to 0.6, the highest that does.
    val_s, val_y = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1], [1, 2, 1, 2, 0, 0, 0, 0]
    # test: malignant at 0.95 0.65 0.55 0.4 0.7 (>= 0.6: 3 caught, 2 missed), benign at 0.62 0.59 0.1 0.3 0.2
    # (1 false alarm, 4 right). Sens 3/5, spec 4/5, PPV 3/4, NPV 4/6, cost (10 x 2 + 1 x 1) / 10 = 2.1.
    test_s, test_y = [0.95, 0.65, 0.55, 0.4, 0.7, 0.62, 0.59, 0.1, 0.3, 0.2], [2, 1, 1, 2, 1, 0, 0, 0, 0, 0]
    # domain Y has no malignant case in validation: the pooled validation threshold (X's, 0.6) stands in
    y_val_s, y_test_s = [0.2, 0.3], [0.7, 0.5]
    probs = np.concatenate([_rows(val_s, val_y), _rows(test_s, test_y), _rows(y_val_s, [0, 0]), _rows(y_test_s, [1, 0])])
    y = val_y + test_y + [0, 0, 1, 0]
    dom = ["X"] * 18 + ["Y"] * 4
    spl = ["val"] * 8 + ["test"] * 10 + ["val"] * 2 + ["test"] * 2
    rows, _ = evaluate_domains(y, probs, dom, spl, classes=CLASSES, operating=p)
    by = {(r["domain"], r["split"]): r for r in rows}
    xt = by[("X", "test")]
    assert xt["pos_threshold"] == pytest.approx(0.6) and xt["pos_threshold_pooled"] == 0.0
    assert [xt[f"pos_{k}"] for k in ("sens", "spec", "ppv", "npv", "cost")] == pytest.approx([3 / 5, 4 / 5, 3 / 4, 4 / 6, 2.1])
    assert by[("X", "val")]["pos_sens"] == pytest.approx(0.75)  # the target, reached on the split that chose it
    yt = by[("Y", "test")]
    assert yt["pos_threshold"] == pytest.approx(0.6) and yt["pos_threshold_pooled"] == 1.0
    # Y's test: malignant 0.7 caught, benign 0.5 right: sens 1, spec 1, PPV 1, NPV 1, no cost
    assert [yt[f"pos_{k}"] for k in ("sens", "spec", "ppv", "npv", "cost")] == pytest.approx([1, 1, 1, 1, 0])
    # AUC of the malignant score on X's test: of the 25 (malignant, benign) pairs, the malignant case scores
    # higher in 5 + 5 + 3 + 3 + 5 (0.95, 0.65, 0.55, 0.4, 0.7 against 0.62 0.59 0.1 0.3 0.2) = 21
    assert xt["pos_auc"] == pytest.approx(21 / 25)


def test_positive_mel_is_the_melanoma_columns_special_case():
    p = parse_protocol({"positive": "mel", "target_sensitivity": 0.95}, "test")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=60)
    y = rng.integers(0, 3, 60)
    rows, _ = evaluate_domains(y, probs, ["X"] * 60, ["val"] * 30 + ["test"] * 30, classes=CLASSES, operating=p)
    for r in rows:
        assert (r["pos_threshold"], r["pos_sens"], r["pos_spec"], r["pos_auc"]) == (
            r["mel_threshold"], r["mel_sens"], r["mel_spec"], r["mel_auc"])


def test_operating_point_undefined_parts_are_nan_not_errors():
    op = operating_point([0, 0, 0], [0.1, 0.2, 0.9], 0.5, cost_fn=10, cost_fp=1)
    assert math.isnan(op["sens"]) and op["npv"] == 1.0 and op["ppv"] == 0.0
    assert op["spec"] == pytest.approx(2 / 3) and op["cost"] == pytest.approx(1 / 3)
    assert all(math.isnan(v) for v in operating_point([1], [0.3], math.nan, 1, 1).values())


# ---- a run: frozen when it starts, the hash beside the config's, the operating point in its final rows ----
def test_a_run_freezes_the_protocol_and_records_its_hash_and_operating_point(smoke_cache, tmp_path):
    from domgen.engine.logging import read_results
    from domgen.runs.registry import resolve_config
    from domgen.runs.train import run_train

    out = tmp_path / "runs"
    cfg = resolve_config("A", "smoke", 0, [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1", f"out={out}",
                                           "optim.epochs=1"])
    p = load_study().protocol
    result = run_train(cfg)
    frozen = read_frozen(frozen_path(out, "yoon2019"))
    assert frozen.hash == protocol_hash(p) and frozen.protocol == p.as_dict()
    resolved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["resolved"]
    assert (resolved["protocol_hash"], resolved["positive"], resolved["positive_classes"]) == (protocol_hash(p), "mel", ["mel"])
    assert protocol_hash(p) not in result.run_dir.name  # beside the run's own hash, never in it
    final = [r for r in read_results(result.run_dir) if r["stage"] == "final"]
    assert final and all(r["protocol_hash"] == protocol_hash(p) for r in final)
    for r in final:  # positive [mel] at 0.95: the melanoma columns' threshold and screen, now with PPV/NPV and cost
        assert (r["pos_threshold"], r["pos_sens"], r["pos_spec"]) == (r["mel_threshold"], r["mel_sens"], r["mel_spec"])
        assert {"pos_auc", "pos_ppv", "pos_npv", "pos_cost", "pos_threshold_pooled"} <= set(r)


def test_readme_quotes_the_protocol_command(monkeypatch, capsys):
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_outputs", repo / "tools" / "readme_outputs.py")
    readme_outputs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_outputs)
    quoted = readme_outputs.blocks((repo / "README.md").read_text())["protocol"].splitlines()
    monkeypatch.chdir(repo)
    assert run.main(["protocol"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # the last line says whether ./runs holds a frozen copy: the checkout's own state, not the protocol's
    assert printed[:-1] == quoted[:-1] and quoted[-1].startswith("Not frozen yet")


def test_amend_before_any_run_freezes_nothing(tmp_path, capsys):
    study = write_study(tmp_path)
    assert run.main(["protocol", "--study", str(study), "--runs", str(tmp_path / "runs"), "--amend", "early"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("Nothing to amend. Not frozen yet: frozen in ")
    assert not (tmp_path / "runs").exists()
