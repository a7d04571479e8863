"""Plan an ablation (or a search) over one row of a study, and record which run folder is which cell.

The cells (:mod:`domgen.sweep.grid`) become :func:`plan_sweep` variants of the row, so every run is
planned, hashed and launched exactly like a ``sweep`` run. Beside the run folders the plan writes
``<out>/ablations/<study>-<row>-<id>/cells.json``: the axes, each cell's values and its run folder per
seed. The analysis (:mod:`domgen.results.ablation`) reads that file and the runs' ``results.jsonl``
only. ``<id>`` hashes the axes, the row, the preset and the overrides, so two ablations never share a
report folder, and re-running the same command finds its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from domgen.atomic import atomic_path
from domgen.errors import ConfigError
from domgen.studies import DEFAULT_STUDY, Study, load_study
from domgen.sweep.grid import Cell
from domgen.sweep.plan import Plan, plan_sweep

CELLS = "cells.json"


@dataclass
class Ablation:
    plan: Plan
    cells: list[Cell]
    runs: dict[Cell, dict[int, str]]  # cell -> seed -> run folder name (under plan.out)
    folder: Path  # where cells.json and the reports go
    meta: dict = field(default_factory=dict)  # study, exp, preset, metric, kind (grid | search), axes


def ablation_folder(out: Path, study: str, exp: str, preset: str, cells: list[Cell], overrides: Iterable[str]) -> Path:
    blob = json.dumps([preset, list(overrides), [c.values for c in cells]], sort_keys=True).encode()
    return Path(out) / "ablations" / f"{study}-{exp}-{hashlib.sha256(blob).hexdigest()[:8]}"


def plan_ablation(
    cells: list[Cell],
    exp: str,
    seeds: int | Iterable[int],
    preset: str = "paper",
    overrides: Iterable[str] = (),
    out: str | Path = "runs",
    study: str | Study = DEFAULT_STUDY,
    identity: str | None = None,
    sizes: Callable | None = None,
    meta: dict | None = None,
) -> Ablation:
    """Every (cell, seed) run of row ``exp``, planned through :func:`plan_sweep`. Two cells that resolve
    to the same run (``1e-3`` and ``0.001``) are refused: each cell must be its own run."""
    from domgen.runs.train import run_dir_for

    study = study if isinstance(study, Study) else load_study(study)
    overrides = list(overrides)
    plan = plan_sweep(exp, seeds, preset, overrides, out=out, study=study, identity=identity,
                      sizes=sizes, variants=[c.items for c in cells])
    by_cfg = {(j.cfg.seed, j.name): j for j in plan.jobs if j.requested}
    runs: dict[Cell, dict[int, str]] = {}
    owner: dict[str, Cell] = {}
    from domgen.runs.registry import resolve_config

    for cell in cells:
        runs[cell] = {}
        for seed in sorted({j.cfg.seed for j in plan.jobs if j.requested}):
            cfg = resolve_config(exp, preset, seed, [f"out={out}", *overrides, *cell.items], study=study)
            name = run_dir_for(cfg, plan.identity).name
            if name in owner:
                raise ConfigError(f"cells {owner[name].label} and {cell.label} are the same run ({name}): "
                                  "give each axis distinct values")
            assert (seed, name) in by_cfg, "plan_sweep planned every variant"
            owner[name] = cell
            runs[cell][seed] = name
    folder = ablation_folder(Path(out), study.name, exp, preset, cells, overrides)
    info = {"study": study.name, "exp": exp, "preset": preset, "overrides": overrides} | (meta or {})
    return Ablation(plan, cells, runs, folder, info)


def write_cells(ab: Ablation) -> Path:
    """``cells.json`` in the ablation's folder (atomically): what the analysis needs to name each run."""
    ab.folder.mkdir(parents=True, exist_ok=True)
    doc = dict(ab.meta, runs_dir=str(ab.plan.out), cells=[
        {"values": dict(c.values), "runs": {str(s): n for s, n in ab.runs[c].items()}} for c in ab.cells])
    path = ab.folder / CELLS
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_cells(path: str | Path) -> dict:
    """A ``cells.json`` (or the folder holding one), checked for what the analysis reads."""
    path = Path(path)
    path = path / CELLS if path.is_dir() else path
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not an ablation's {CELLS} ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or not doc["cells"]:
        raise ConfigError(f"{path}: an ablation's {CELLS} lists its cells under 'cells:'")
    return doc
