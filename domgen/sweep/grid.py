"""Factorial ablations and hyperparameter searches as sweeps: each cell (one point of the grid, or one
trial of a search) is a list of ``--set`` items handed to :func:`plan_sweep` as a variant, so a cell is a
normal run: hashed, resumable, skipped when done, launched by the same local or Slurm launchers.

* A grid is the product of its axes (``--axis optim.lr=1e-3,1e-4``), in the order the axes are given,
  the last axis varying fastest.
* A random search draws ``n`` trials from a space file (``experiments/spaces/NAME.yaml``) whose keys are
  config keys and whose values name a distribution::

      optim.lr: {log_uniform: [1.0e-5, 1.0e-2]}     # exp(U(log lo, log hi))
      optim.weight_decay: {uniform: [0.0, 0.1]}      # U(lo, hi)
      optim.batch_size: {int: [16, 64]}              # an integer in [lo, hi], both included
      model.arch: {choice: [resnet18, resnet50]}     # one of the values, equally likely

  Trial ``i`` draws every key in file order from a generator seeded by (search seed, i), so trial ``i``
  is the same whatever ``n`` is: growing a search from 20 to 40 trials keeps the first 20 (and their
  finished runs). Values are rounded to 6 significant digits, so a trial's ``--set`` item, its run
  hash and the table show the same number.

No torch here: planning a grid reads configs only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from domgen.errors import ConfigError
from domgen.seeds import derive_seed

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")


@dataclass(frozen=True)
class Cell:
    """One point of an ablation (or one search trial): axis key -> value as written on the command line."""

    values: tuple[tuple[str, str], ...]

    @property
    def items(self) -> tuple[str, ...]:
        """The ``--set`` items that make this cell's runs."""
        return tuple(f"{k}={v}" for k, v in self.values)

    @property
    def label(self) -> str:
        return ",".join(self.items)

    def get(self, key: str) -> str:
        return dict(self.values)[key]


def parse_axis(text: str) -> tuple[str, tuple[str, ...]]:
    """``"optim.lr=1e-3,1e-4"`` -> ``("optim.lr", ("1e-3", "1e-4"))``; repeated or empty values refused."""
    key, sep, rest = text.partition("=")
    key = key.strip()
    values = tuple(v.strip() for v in rest.split(",") if v.strip())
    if not sep or not key or not values:
        raise ConfigError(f"--axis {text!r}: expected KEY=V1,V2,... (e.g. optim.lr=1e-3,1e-4)")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(f"--axis {key}: value {repeated[0]!r} is given twice")
    return key, values


def check_axes(axes: Iterable[tuple[str, Iterable[str]]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Axes as a tuple of (key, values); a key given twice is refused (its values would overwrite)."""
    out = tuple((str(k), tuple(str(v) for v in vs)) for k, vs in axes)
    keys = [k for k, _ in out]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"axis {twice[0]} is given twice; give all its values in one --axis")
    if not out:
        raise ConfigError("an ablation needs at least one axis (--axis KEY=V1,V2 or the study's ablation: block)")
    for k, vs in out:
        if not vs:
            raise ConfigError(f"axis {k} has no values")
    return out


def grid_cells(axes: Iterable[tuple[str, Iterable[str]]]) -> list[Cell]:
    """Every combination of the axes' values: exactly prod(len(values)) cells, the last axis fastest."""
    axes = check_axes(axes)
    keys = [k for k, _ in axes]
    return [Cell(tuple(zip(keys, combo))) for combo in itertools.product(*(vs for _, vs in axes))]


# ---- random search -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    key: str  # a config key, e.g. optim.lr
    kind: str  # one of DISTRIBUTIONS
    args: tuple  # (lo, hi) or the choices

    def draw(self, rng: np.random.Generator) -> str:
        if self.kind == "choice":
            return str(self.args[int(rng.integers(len(self.args)))])
        lo, hi = self.args
        if self.kind == "int":
            return str(int(rng.integers(int(lo), int(hi) + 1)))
        x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if self.kind == "log_uniform" else rng.uniform(lo, hi)
        return f"{float(f'{x:.6g}'):.6g}"


def load_space(path: str | Path) -> tuple[Dimension, ...]:
    """A search space file -> its dimensions in file order; every mistake names the file and the key."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"search space {path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {path}: not valid YAML ({err})") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"search space {path}: a mapping of config key -> {{distribution: arguments}}")
    return tuple(_dimension(path, str(k), v) for k, v in doc.items())


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    where = f"search space {path}, {key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: give one of {', '.join(DISTRIBUTIONS)}, e.g. {{log_uniform: [1.0e-5, 1.0e-2]}}")
    kind, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a list")
    if kind == "choice":
        return Dimension(key, kind, tuple(str(a) for a in args))
    try:
        lo, hi = (float(a) for a in args)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {kind} takes [low, high], got {args!r}") from None
    if not lo < hi or (kind == "log_uniform" and lo <= 0) or (kind == "int" and (lo != int(lo) or hi != int(hi))):
        raise ConfigError(f"{where}: {kind} [{lo}, {hi}] needs low < high" +
                          (", both > 0" if kind == "log_uniform" else ", both integers" if kind == "int" else ""))
    return Dimension(key, kind, (lo, hi))


def search_cells(space: Iterable[Dimension], n_trials: int, seed: int = 0) -> list[Cell]:
    """``n_trials`` cells drawn from ``space``; trial i depends only on (seed, i). Equal draws (a small
    choice space) are planned once."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials {n_trials}: at least one trial")
    space = tuple(space)
    cells = []
    for trial in range(n_trials):
        rng = np.random.default_rng(derive_seed(seed, trial, "search"))
        cells.append(Cell(tuple((d.key, d.draw(rng)) for d in space)))
    return list(dict.fromkeys(cells))
