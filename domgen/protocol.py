"""A study's error profile, written before its runs: the pre-registered protocol (issue #13).

A study states, before anything is trained, which mistakes matter and how it will be judged: the positive
class set (the classes a screen must catch, e.g. ``malignant: [mel, bcc, akiec]``), the sensitivity the
operating point must reach on it, the cost of a missed positive and of a false alarm, the primary metric
that ``table`` and ``compare`` report, the model-selection method (``domgen.results.selection``) and the
numbers of seeds and folds. It is written as a ``protocol:`` block in the study YAML, or as
``<study folder>/<study name>/protocol.yaml`` beside the study file (``experiments/yoon2019/protocol.yaml``),
not both.

Frozen, so that it cannot drift after results are seen: when the first run of a study starts, a copy is
written to ``<out>/.protocol/<study>.yaml`` (beside the run folders, with its hash and the time), and the
hash goes into every run's context (``config.yaml``'s ``resolved`` and every results line), never into the
run folder's own hash. A later run (or ``table``/``compare`` over those runs) whose study file says
something else is refused, naming each changed key, unless the change is recorded with a reason
(``--amend "reason"``): then ``<out>/.protocol/<study>.amendments.jsonl`` gets one line with the time, the
reason, the hashes before and after and every change, and the frozen copy becomes the amended protocol.

No torch, no pandas here: ``python -m domgen.run protocol`` answers at once. Library code: nothing prints.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from domgen.atomic import write_text_atomic
from domgen.errors import ConfigError

# domgen.results.selection's registry, spelled here so that reading a protocol needs no pandas (a test checks)
SELECTIONS = ("train", "lodo", "oracle")
# Metrics a protocol may name as primary: the columns every final row holds (domgen.engine.metrics), plus
# recall_<class>. Percentages: macro_recall, balanced_acc, accuracy, recall_*; the rest are fractions.
METRICS = ("macro_recall", "balanced_acc", "accuracy", "mel_auc", "mel_sens", "mel_spec",
           "pos_auc", "pos_sens", "pos_spec", "pos_ppv", "pos_npv", "pos_cost")
FOLDER = ".protocol"


class ProtocolError(ConfigError):
    """A protocol that cannot be read, or one that differs from the frozen copy its runs were made under."""


@dataclass(frozen=True)
class Protocol:
    """The error profile of a study (see the module docstring). Costs are in any one unit (e.g. the harm
    of a needless biopsy = 1); only their ratio moves the cheapest threshold, their size scales the cost."""

    positive_name: str  # what the positive set is called in tables ("malignant"; "mel" for one class)
    positive: tuple[str, ...]  # its classes; P(set) = the sum of their probabilities
    target_sensitivity: float = 0.95  # the operating point: the highest threshold catching this share on validation
    cost_false_negative: float = 1.0  # cost of one missed positive
    cost_false_positive: float = 1.0  # cost of one negative called positive
    primary_metric: str = "macro_recall"
    selection: str = "train"  # train | lodo | oracle
    seeds: int = 5
    folds: int = 1  # 1 = the study's fixed split (yoon2019: 50/20/30)
    rationale: str = ""  # why these numbers (free text; part of what is frozen)
    source: str = ""  # the file it was read from (not hashed: moving the file changes nothing)

    def as_dict(self) -> dict[str, Any]:
        """What is hashed and frozen: every field but ``source``, lists for tuples."""
        d = asdict(self)
        d.pop("source")
        d["positive"] = list(self.positive)
        return d


def protocol_hash(p: Protocol) -> str:
    return hashlib.sha256(json.dumps(p.as_dict(), sort_keys=True).encode()).hexdigest()[:10]


# ---- reading ---------------------------------------------------------------------------------------
_KEYS = {f.name for f in fields(Protocol)} - {"positive_name", "source"}


def protocol_file(study_path: Path, name: str) -> Path:
    """Where a study's protocol may live as its own file: ``<study folder>/<name>/protocol.yaml``."""
    return Path(study_path).parent / name / "protocol.yaml"


def load_protocol(study_path: Path, name: str, block: Any = None) -> Protocol | None:
    """The protocol of the study ``name`` read from ``study_path``: its ``protocol:`` block (``block``), or
    the protocol file beside it; None when it has neither; an error when it has both."""
    own = protocol_file(study_path, name)
    if block is not None and own.is_file():
        raise ProtocolError(f"{study_path}: the study has a 'protocol:' block and a protocol file ({own}); keep one")
    if block is not None:
        return parse_protocol(block, f"{study_path}, protocol", source=str(study_path))
    if own.is_file():
        try:
            doc = yaml.safe_load(own.read_text())
        except yaml.YAMLError as err:
            raise ProtocolError(f"{own}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
        if isinstance(doc, dict) and set(doc) == {"protocol"}:
            doc = doc["protocol"]
        return parse_protocol(doc, str(own), source=str(own))
    return None


def parse_protocol(doc: Any, where: str, source: str = "") -> Protocol:
    """A mapping (the YAML) -> a checked :class:`Protocol`; every mistake is one error naming ``where``."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"{where}: a protocol is a mapping ({', '.join(sorted(_KEYS))})")
    unknown = sorted(set(map(str, doc)) - _KEYS)
    if unknown:
        raise ProtocolError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    if "positive" not in doc:
        raise ProtocolError(f"{where}: 'positive' is required: a class (mel), a list ([mel, bcc]) or a named set "
                            "({malignant: [mel, bcc, akiec]})")
    name, classes = _positive(doc["positive"], where)
    kw: dict[str, Any] = {}
    try:
        for key in ("target_sensitivity", "cost_false_negative", "cost_false_positive"):
            if key in doc:
                kw[key] = _number(doc[key], float)
        for key in ("seeds", "folds"):
            if key in doc:
                kw[key] = _number(doc[key], int)
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"{where}: {key} {err}") from None
    kw.update({k: str(doc[k]) for k in ("primary_metric", "selection", "rationale") if k in doc and doc[k] is not None})
    p = Protocol(positive_name=name, positive=classes, source=source, **kw)
    problems = list(_problems(p))
    if problems:
        raise ProtocolError(f"{where}: " + "; ".join(problems))
    return p


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number, got {value!r}")
    x = float(value)
    if kind is int and x != int(x):
        raise ValueError(f"must be a whole number, got {value!r}")
    return kind(x)


def _positive(value: Any, where: str) -> tuple[str, tuple[str, ...]]:
    """``mel`` | ``[mel, bcc]`` | ``{malignant: [mel, bcc, akiec]}`` -> (name, classes)."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise ProtocolError(f"{where}: positive names one set, e.g. {{malignant: [mel, bcc, akiec]}}; got {len(value)}")
        (name, classes), = value.items()
    else:
        name, classes = None, value
    classes = classes if isinstance(classes, list) else [classes]
    classes = [str(c).strip() for c in classes if c is not None and str(c).strip()]
    if not classes:
        raise ProtocolError(f"{where}: the positive set names no class")
    if len(set(classes)) != len(classes):
        raise ProtocolError(f"{where}: the positive set repeats a class: {', '.join(classes)}")
    return str(name if name is not None else "+".join(classes)), tuple(classes)


def _problems(p: Protocol):
    if not 0 < p.target_sensitivity <= 1:
        yield f"target_sensitivity={p.target_sensitivity} must be in (0, 1]"
    for key in ("cost_false_negative", "cost_false_positive"):
        v = getattr(p, key)
        if not (math.isfinite(v) and v >= 0):
            yield f"{key}={v} must be a finite number >= 0"
    if p.cost_false_negative == 0 and p.cost_false_positive == 0:
        yield "the two costs are both 0: give at least one"
    if p.primary_metric not in METRICS and not p.primary_metric.startswith("recall_"):
        yield f"primary_metric={p.primary_metric!r} is not one of {', '.join(METRICS)} or recall_<class>"
    if p.selection not in SELECTIONS:
        yield f"selection={p.selection!r} is not one of {', '.join(SELECTIONS)}"
    if p.seeds < 1:
        yield f"seeds={p.seeds} must be >= 1"
    if p.folds < 1:
        yield f"folds={p.folds} must be >= 1 (1 = the study's fixed split)"


def missing_classes(p: Protocol, classes: tuple[str, ...] | list[str]) -> list[str]:
    """The positive classes a run's label space lacks: they add nothing to the positive score (with none
    present every ``pos_*`` metric is NaN), which a run says in its log rather than refusing, since one study
    may run on data sources of several label spaces."""
    return [c for c in p.positive if c not in classes]


# ---- in plain words --------------------------------------------------------------------------------
_METRIC_WORDS = {
    "macro_recall": "macro-average recall over the classes present in each domain, x100",
    "balanced_acc": "balanced accuracy, x100",
    "accuracy": "accuracy, x100",
    "mel_auc": "melanoma-vs-rest ROC AUC",
    "mel_sens": "melanoma sensitivity at the 95% validation threshold",
    "mel_spec": "melanoma specificity at the 95% validation threshold",
    "pos_auc": "positive-set-vs-rest ROC AUC",
    "pos_sens": "positive-set sensitivity at the operating point",
    "pos_spec": "specificity at the operating point",
    "pos_ppv": "positive predictive value at the operating point",
    "pos_npv": "negative predictive value at the operating point",
    "pos_cost": "expected cost per case at the operating point (lower is better)",
}
_SELECTION_WORDS = {
    "train": "training-domain validation (the epoch with the best mean validation score over the training domains)",
    "lodo": "leave-one-domain-out validation (scored by the sibling runs on their own held-out domains)",
    "oracle": "the held-out domain's own validation (an upper bound, not a result)",
}


def _num(x: float) -> str:
    return f"{x:g}"


def _shown(source: str) -> str:
    """A protocol's file as a reader would type it: relative to the working folder when under it."""
    if not source:
        return "no file"
    try:
        return str(Path(source).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return source


def describe_protocol(p: Protocol, study: str) -> list[str]:
    """The protocol as sentences, one per line (what ``python -m domgen.run protocol`` prints)."""
    name, cls = p.positive_name, ", ".join(p.positive)
    fn, fp = p.cost_false_negative, p.cost_false_positive
    ratio = f"a miss weighs {_num(fn / fp)} false alarms" if fp > 0 else "false alarms cost nothing"
    metric = _METRIC_WORDS.get(p.primary_metric, f"recall of class {p.primary_metric[len('recall_'):]}, x100")
    lines = [
        f"Protocol of study {study} ({_shown(p.source)}), hash {protocol_hash(p)}.",
        f"Positive set {name!r}: {cls}; a case's score is the sum of the probabilities of these classes.",
        f"Operating point: on each domain's validation split, the highest threshold on that score that catches at "
        f"least {_num(100 * p.target_sensitivity)}% of the {name} cases (all validation splits pooled when a domain "
        "has none); applied unchanged to the domain's test split, where sensitivity, specificity, PPV, NPV and the "
        "expected cost are reported.",
        f"Costs: a missed {name} case (false negative) costs {_num(fn)}, a false alarm (false positive) "
        f"{_num(fp)}: {ratio}. Expected cost per case = ({_num(fn)} x FN + {_num(fp)} x FP) / cases.",
        f"Primary metric: {p.primary_metric} ({metric}). table and compare report it; any other metric only with "
        "--exploratory, and the caption then says so.",
        f"Model selection: {p.selection}, {_SELECTION_WORDS[p.selection]}.",
        f"Seeds: {p.seeds}; folds: {p.folds}" + (" (the study's fixed split)." if p.folds == 1 else "."),
    ]
    if p.rationale:
        lines.append(f"Why: {' '.join(p.rationale.split())}")
    return lines


# ---- frozen beside the runs --------------------------------------------------------------------------
@dataclass(frozen=True)
class Frozen:
    """The copy of a protocol frozen beside a study's runs."""

    path: Path
    hash: str
    frozen_at: str
    protocol: dict
    amendments: int = 0


def frozen_path(out: Path | str, study: str) -> Path:
    return Path(out) / FOLDER / f"{study}.yaml"


def amendments_path(out: Path | str, study: str) -> Path:
    return Path(out) / FOLDER / f"{study}.amendments.jsonl"


def read_frozen(path: Path) -> Frozen:
    try:
        doc = yaml.safe_load(Path(path).read_text())
        return Frozen(Path(path), str(doc["hash"]), str(doc["frozen_at"]), dict(doc["protocol"]), int(doc.get("amendments", 0)))
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"{path}: not a frozen protocol ({err}); it is written by domgen when a study's first "
                            "run starts: restore it from a backup or move it aside") from None


def frozen_copy(out: Path | str, study: str) -> Frozen | None:
    path = frozen_path(out, study)
    return read_frozen(path) if path.is_file() else None


def read_amendments(out: Path | str, study: str) -> list[dict]:
    path = amendments_path(out, study)
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


def changes(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    """(key, frozen value, current value) for every key that differs, in the protocol's field order."""
    keys = list(dict.fromkeys([*after, *before]))
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def _changed_words(diff: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in diff)


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_frozen(p: Protocol, study: str, out: Path | str, when: str, amendments: int) -> Frozen:
    path = frozen_path(out, study)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"study": study, "hash": protocol_hash(p), "frozen_at": when, "amendments": amendments,
           "source": p.source, "protocol": p.as_dict()}
    write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return Frozen(path, doc["hash"], when, doc["protocol"], amendments)


def refusal(p: Protocol | None, study: str, frozen: Frozen) -> ProtocolError:
    """The error for a study whose protocol is no longer the one its runs were made under."""
    where = f"the copy frozen when its first run started ({frozen.path}, hash {frozen.hash}, {frozen.frozen_at})"
    if p is None:
        return ProtocolError(f"study {study} has no protocol any more, but runs were made under {where}: restore its "
                             "protocol (a study's error profile cannot be withdrawn once runs exist)")
    log = amendments_path(frozen.path.parent.parent, study)
    return ProtocolError(f"the protocol of study {study} ({p.source}) differs from {where}: "
                         f"{_changed_words(changes(frozen.protocol, p.as_dict()))}. Restore it, or record the change "
                         f"with --amend \"reason\" (logged with the time in {log})")


def freeze(p: Protocol | None, study: str, out: Path | str, amend: str | None = None,
           now: Callable[[], str] = _utcnow) -> Frozen | None:
    """Freeze ``p`` beside the runs in ``out`` the first time; afterwards check it against the frozen copy.

    A difference is refused (:func:`refusal`) unless ``amend`` gives a reason: then the change is appended
    to the amendment log (time, reason, hashes, each changed key) and the frozen copy becomes ``p``.
    Returns the frozen copy in force, None for a study without a protocol (and no frozen copy)."""
    frozen = frozen_copy(out, study)
    if p is None:
        if frozen is not None:
            raise refusal(p, study, frozen)
        return None
    if frozen is None:
        return _write_frozen(p, study, out, now(), 0)
    if frozen.hash == protocol_hash(p):
        return frozen
    if not (amend and amend.strip()):
        raise refusal(p, study, frozen)
    when = now()
    entry = {"time": when, "study": study, "reason": amend.strip(), "from_hash": frozen.hash, "to_hash": protocol_hash(p),
             "changes": [{"key": k, "before": a, "after": b} for k, a, b in changes(frozen.protocol, p.as_dict())]}
    log = amendments_path(out, study)
    with open(log, "a") as f:  # append-only: one line per amendment, never rewritten
        f.write(json.dumps(entry) + "\n")
    return _write_frozen(p, study, out, when, frozen.amendments + 1)


def check_frozen(p: Protocol | None, study: str, runs: Path | str) -> list[Frozen]:
    """Every frozen copy of ``study`` under ``runs`` (the folder tables read, searched like the results),
    each checked against ``p``: results are reported only under the protocol they were made under."""
    found = sorted(Path(runs).rglob(f"{FOLDER}/{study}.yaml")) if Path(runs).is_dir() else []
    copies = [read_frozen(path) for path in found]
    for frozen in copies:
        if p is None or frozen.hash != protocol_hash(p):
            raise refusal(p, study, frozen)
    return copies


def exploratory_line(metric: str, p: Protocol | None, primary: str) -> str:
    """The caption line of a table or comparison of a metric that is not the pre-registered primary one."""
    by = f"the pre-registered primary metric of protocol {protocol_hash(p)}" if p is not None else "the default primary metric"
    return f"EXPLORATORY: {metric} is not {by} ({primary}); not a pre-registered result."
