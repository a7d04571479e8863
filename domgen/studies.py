"""Studies as data: a study is a YAML file of experiments (rows) in the repository's ``experiments/``
folder; presets (paper / quick / smoke) live beside them in ``presets.yaml``.

A study is named (``yoon2019``) or given as a path (``experiments/mine.yaml``). Names are looked up in
``$DOMGEN_EXPERIMENTS`` (a folder), then in the repository's ``experiments/`` (an editable install: the
folder beside the package). ``presets.yaml`` is read from beside the study file, else from the same
search folders; a study's own ``presets:`` section adds or replaces presets by name.

Every mistake in a study file is one :class:`ConfigError` naming the file and the row. No torch here:
``python -m domgen.run list`` reads studies.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import yaml

from domgen.config import TransformConfig
from domgen.errors import ConfigError
from domgen.protocol import Protocol, load_protocol
from domgen.registry import Registry

DEFAULT_STUDY = "yoon2019"
DRIVERS = ("train", "prune")
REPO_EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@dataclass(frozen=True)
class Preset:
    """Sizes of one scale of the recipe. ``*_base``: a row trained from scratch; ``*_warm``: a row
    warm-started from its parent, and the pruning fine-tune (the paper: 1e-4, 20 epochs, lr / 10 after 10)."""

    transform: TransformConfig
    weights: str
    lr_base: float
    epochs_base: int
    step_base: int
    lr_warm: float
    epochs_warm: int
    step_warm: int
    batch_size: int
    synthetic_scale: float
    prune_batches: int


@dataclass(frozen=True)
class Experiment:
    """One row of a study: what is trained (arch, nsec, algorithm, holdout, ``set:`` overrides), from
    which parent's best checkpoint (``parent``), and by which driver (``train`` or ``prune``)."""

    name: str
    description: str = ""
    arch: str = "resnet18"
    nsec: str = "0"
    algorithm: str = "erm"  # a registered algorithm (domgen.algorithms)
    holdout: tuple[str, ...] = ()
    parent: str = ""  # the row whose best checkpoint initialises this one ("" = from scratch)
    driver: str = "train"  # train | prune
    set: tuple[str, ...] = ()  # --set items that define the row; the user's own come after

    @property
    def warm_start(self) -> str:
        return self.parent

    @property
    def stage(self) -> str:
        """``base`` (from scratch), ``warm`` (from the parent's best checkpoint) or ``prune``."""
        if self.driver == "prune":
            return "prune"
        return "warm" if self.parent else "base"


@dataclass(frozen=True)
class AblationSpec:
    """A study's ``ablation:`` block: the row ablated, its axes (config key -> values), seeds and the
    pre-registered metric the best cell is chosen by (``python -m domgen.run ablate --study NAME``)."""

    exp: str
    axes: tuple[tuple[str, tuple[str, ...]], ...]
    seeds: str = "5"
    metric: str = "macro_recall"


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    description: str
    experiments: Registry[Experiment] = field(repr=False)
    presets: dict[str, Preset] = field(repr=False)
    protocol: Protocol | None = field(default=None, repr=False)  # its error profile (domgen.protocol), if written
    ablation: AblationSpec | None = field(default=None, repr=False)

    @property
    def loo(self) -> dict[str, str]:
        """Held-out domain -> the row that holds out that one domain alone (the ``loo`` command's rows)."""
        rows = (self.experiments.get(n) for n in self.experiments.names())
        return {e.holdout[0]: e.name for e in rows if len(e.holdout) == 1}


def search_dirs() -> list[Path]:
    env = os.environ.get("DOMGEN_EXPERIMENTS")
    return ([Path(env).expanduser()] if env else []) + [REPO_EXPERIMENTS, installed_experiments()]


def installed_experiments() -> Path:
    """Where a non-editable install puts the repository's study files (pyproject's data-files)."""
    return Path(sys.prefix) / "share" / "domgen" / "experiments"


def find_study(ref: str | os.PathLike) -> Path:
    """A study name or file -> the study file. A reference with a suffix or a slash is a path."""
    ref = str(ref)
    if ref.endswith((".yaml", ".yml")) or os.sep in ref or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ConfigError(f"study file {path} does not exist")
        return path.resolve()
    for d in search_dirs():
        for suffix in (".yaml", ".yml"):
            if (d / f"{ref}{suffix}").is_file():
                return (d / f"{ref}{suffix}").resolve()
    known = sorted({p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.y*ml") if p.stem != "presets"})
    where = " or ".join(str(d) for d in search_dirs())
    raise ConfigError(f"unknown study {ref!r}: no {ref}.yaml in {where} (known: {', '.join(known) or 'none'}); "
                      "give a path or set DOMGEN_EXPERIMENTS")


def load_study(ref: str | os.PathLike = DEFAULT_STUDY) -> Study:
    """The study named or given by ``ref``, parsed and checked (cached per file)."""
    return _load(find_study(ref))


def study_file_ref(study: Study) -> str:
    """What a run records to find ``study`` again in another process: "" when its name finds it."""
    try:
        return "" if find_study(study.name) == study.path else str(study.path)
    except ConfigError:
        return str(study.path)


@lru_cache(maxsize=None)
def _load(path: Path) -> Study:
    doc = _read(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a study file is a mapping with an 'experiments:' list")
    _check_keys(path, "the study", doc, {"study", "description", "experiments", "presets", "protocol", "ablation"})
    name = str(doc.get("study") or path.stem)
    rows = doc.get("experiments")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: 'experiments:' must be a non-empty list of rows")
    presets = dict(_presets(_presets_file(path)))
    presets.update(_parse_presets(path, doc.get("presets") or {}))
    registry: Registry[Experiment] = Registry("experiment")
    for i, row in enumerate(rows):
        exp = _experiment(path, i, row)
        if exp.name in registry:
            raise ConfigError(f"{path}, row {exp.name!r}: the name is used twice")
        registry.add(exp.name, exp)
    _check_parents(path, registry)
    protocol = load_protocol(path, name, doc.get("protocol"))
    ablation = _ablation(path, doc["ablation"], registry) if doc.get("ablation") is not None else None
    return Study(name, path, str(doc.get("description", "")), registry, presets, protocol, ablation)


def _ablation(path: Path, block, registry: Registry[Experiment]) -> AblationSpec:
    """``ablation: {exp: base, seeds: 5, metric: ovr_auc, axes: {model.arch: [resnet18, resnet50], ...}}``."""
    where = "ablation"
    if not isinstance(block, dict):
        raise ConfigError(f"{path}, {where}: a mapping with exp, axes and optionally seeds, metric")
    _check_keys(path, where, block, {"exp", "axes", "seeds", "metric"})
    exp = str(block.get("exp") or registry.names()[0])
    if exp not in registry:
        raise ConfigError(f"{path}, {where}: unknown row {exp!r} (rows: {', '.join(registry.names())})")
    axes = block.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{path}, {where}: 'axes:' maps config keys to lists of values")
    out = []
    for key, values in axes.items():
        values = values if isinstance(values, list) else [values]
        if not values or len(set(map(str, values))) != len(values):
            raise ConfigError(f"{path}, {where}, axis {key}: give distinct values as a list")
        out.append((str(key), tuple(str(v) for v in values)))
    return AblationSpec(exp, tuple(out), str(block.get("seeds", "5")), str(block.get("metric", "macro_recall")))


def _read(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None


def _check_keys(path: Path, where: str, d: dict, known: set[str]) -> None:
    unknown = sorted(set(map(str, d)) - known)
    if unknown:
        raise ConfigError(f"{path}, {where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


_ROW_KEYS = {f.name for f in fields(Experiment)}


def _experiment(path: Path, i: int, row) -> Experiment:
    if not isinstance(row, dict) or "name" not in row:
        raise ConfigError(f"{path}, row {i + 1}: a row is a mapping with at least a 'name:'")
    name = str(row["name"])
    where = f"row {name!r}"
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name):  # run folders are <name>-s<seed>-<hash>; sweeps split on , and -
        raise ConfigError(f"{path}, {where}: a row name is letters, digits, '_' and '.' only")
    _check_keys(path, where, row, _ROW_KEYS)
    kw = {k: v for k, v in row.items() if v is not None}
    kw["name"] = name
    for k in ("description", "arch", "nsec", "algorithm", "parent", "driver"):
        if k in kw:
            kw[k] = str(kw[k])  # nsec: 5 in YAML is the string "5"
    for k in ("holdout", "set"):
        if k in kw:
            v = kw[k]
            kw[k] = tuple(str(x) for x in (v if isinstance(v, list) else [v]))
    if kw.get("driver", "train") not in DRIVERS:
        raise ConfigError(f"{path}, {where}: driver {kw['driver']!r} is not one of {', '.join(DRIVERS)}")
    bad = [s for s in kw.get("set", ()) if "=" not in s]
    if bad:
        raise ConfigError(f"{path}, {where}: set item {bad[0]!r} is not KEY=VALUE")
    exp = Experiment(**kw)
    if exp.driver == "prune" and not exp.parent:
        raise ConfigError(f"{path}, {where}: a prune row needs a parent (the trained run it prunes)")
    return exp


def _check_parents(path: Path, registry: Registry[Experiment]) -> None:
    for name in registry.names():
        seen = [name]
        exp = registry.get(name)
        while exp.parent:
            if exp.parent not in registry:
                known = ", ".join(registry.names())
                raise ConfigError(f"{path}, row {exp.name!r}: unknown parent {exp.parent!r} (rows: {known})")
            if exp.parent in seen:
                raise ConfigError(f"{path}, row {name!r}: parents form a cycle ({' -> '.join(seen + [exp.parent])})")
            seen.append(exp.parent)
            exp = registry.get(exp.parent)


def _presets_file(study_path: Path) -> Path:
    for d in [study_path.parent, *search_dirs()]:
        if (d / "presets.yaml").is_file():
            return (d / "presets.yaml").resolve()
    raise ConfigError(f"no presets.yaml beside {study_path} nor in {', '.join(map(str, search_dirs()))}")


@lru_cache(maxsize=None)
def _presets(path: Path) -> tuple[tuple[str, Preset], ...]:
    doc = _read(path)
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{path}: a presets file is a mapping of preset name -> sizes")
    return tuple(_parse_presets(path, doc).items())


_PRESET_KEYS = {f.name for f in fields(Preset)}
_TRANSFORM_KEYS = {f.name for f in fields(TransformConfig)}


def _parse_presets(path: Path, doc) -> dict[str, Preset]:
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: 'presets:' is a mapping of preset name -> sizes")
    out = {}
    for name, p in doc.items():
        where = f"preset {name!r}"
        if not isinstance(p, dict):
            raise ConfigError(f"{path}, {where}: a preset is a mapping of sizes")
        _check_keys(path, where, p, _PRESET_KEYS)
        missing = sorted(_PRESET_KEYS - set(p))
        if missing:
            raise ConfigError(f"{path}, {where}: missing {', '.join(missing)}")
        t = p["transform"]
        if not isinstance(t, dict):
            raise ConfigError(f"{path}, {where}: transform is a mapping ({', '.join(sorted(_TRANSFORM_KEYS))})")
        _check_keys(path, f"{where} transform", t, _TRANSFORM_KEYS)
        try:
            out[str(name)] = Preset(
                transform=TransformConfig(**{k: int(v) for k, v in t.items()}), weights=str(p["weights"]),
                **{k: _number(p[k], k) for k in _PRESET_KEYS - {"transform", "weights"}})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}, {where}: {err}") from None
    return out


def _number(value, key: str):
    """YAML reads ``1e-4`` (no dot) as a string: accept it as the number it means."""
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    kind = float if key.startswith("lr") or key == "synthetic_scale" else int
    return kind(value)
