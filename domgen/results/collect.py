"""Read every run's ``results.jsonl`` back into one DataFrame; tables, plots and comparisons read that.

Results describe themselves (DomainBed's habit): each line carries experiment, seed, preset, data and
every metric, so the folder tree is only searched for ``results.jsonl`` files (any depth, so sweep
subfolders work) and each run's ``done`` marker sets ``finished``. Torn last lines are skipped by
:func:`domgen.engine.logging.read_results`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from domgen.engine.logging import RESULTS, is_done, read_results
from domgen.studies import DEFAULT_STUDY

# Columns always present, even when nothing was found, so callers can filter an empty frame.
BASE_COLUMNS = ("run", "run_dir", "finished", "exp", "seed", "preset", "study", "data", "synthetic", "config_hash",
                "stage", "split", "domain", "epoch")


def run_dirs(runs_dir: Path) -> list[Path]:
    """Every folder under ``runs_dir`` (itself included) holding a ``results.jsonl``, sorted."""
    # runs moved aside by --restart/--force (<name>.abandoned-<time>) are kept on disk, not in tables
    return sorted(p.parent for p in Path(runs_dir).rglob(RESULTS) if ".abandoned-" not in p.parent.name)


def _run_name(run_dir: Path, runs_dir: Path) -> str:
    rel = run_dir.relative_to(runs_dir).as_posix()
    return rel if rel != "." else run_dir.name


def _run_rows(run_dir: Path, run: str, stages: tuple[str, ...], splits: tuple[str, ...]) -> list[dict[str, Any]]:
    finished = is_done(run_dir)
    out = []
    for row in read_results(run_dir):
        if not isinstance(row, dict) or row.get("stage") not in stages or row.get("split") not in splits:
            continue
        row = dict(row)
        # Lists (from JSON) become tuples so the column can be grouped and compared.
        for key in ("holdout", "train_domains"):
            if isinstance(row.get(key), list):
                row[key] = tuple(row[key])
        out.append({"run": run, "run_dir": str(run_dir), "finished": finished} | row)
    return out


def collect(runs_dir: Path, stages: Iterable[str] = ("final",), splits: Iterable[str] = ("test",)) -> pd.DataFrame:
    """One row per (run, stage, split, domain[, epoch]) from every ``results.jsonl`` under ``runs_dir``.

    By default only the rows Table 2 is built from (``stage == "final"``, ``split == "test"``); pass
    ``splits=("val", "test")`` for validation too, ``stages=("val", "final")`` for per-epoch rows.
    ``finished`` is True when the run's ``done`` marker exists; unfinished runs are kept here and left
    out by the tables (see :func:`select`). Runs without matching rows (killed mid-training) contribute
    no rows; ``df.attrs["unfinished"]`` names every run without ``done`` so that tables can still say
    what they left out. If a row was written twice, the last wins.
    """
    runs_dir = Path(runs_dir)
    stages, splits = tuple(stages), tuple(splits)
    rows: list[dict[str, Any]] = []
    unfinished = []
    for rd in run_dirs(runs_dir):
        rows.extend(_run_rows(rd, _run_name(rd, runs_dir), stages, splits))
        if not is_done(rd):
            unfinished.append(_run_name(rd, runs_dir))
    df = pd.DataFrame(rows)
    for col in BASE_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=object)
    df.attrs["unfinished"] = unfinished
    if df.empty:
        return df
    key = ["run", "stage", "split", "domain", "epoch"]
    df = df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    df["seed"] = df["seed"].astype(int)
    df["study"] = df["study"].fillna(DEFAULT_STUDY)  # runs recorded before studies were named are yoon2019's
    df["finished"] = df["finished"].astype(bool)
    return df



def select(
    df: pd.DataFrame,
    *,
    include_unfinished: bool = False,
    preset: str | None = None,
    study: str | None = None,
    data: str | None = None,
    config_hash: str | None = None,
    exps: Iterable[str] | None = None,
) -> pd.DataFrame:
    """The rows a table should use: finished runs only (unless asked), optionally one preset / data
    identity / config hash / set of experiments / study (by name)."""
    keep = pd.Series(True, index=df.index)
    if not include_unfinished:
        keep &= df["finished"].astype(bool)
    for col, value in (("preset", preset), ("study", study), ("data", data), ("config_hash", config_hash)):
        if value is not None:
            keep &= df[col] == value
    if exps is not None:
        keep &= df["exp"].isin(list(exps))
    return df[keep]


def unfinished_runs(df: pd.DataFrame) -> list[str]:
    """Names of the runs in ``df`` without a ``done`` marker (the tables leave them out and say so)."""
    return sorted(df.loc[~df["finished"].astype(bool), "run"].unique().tolist())


def check_one_run_per_seed(df: pd.DataFrame) -> None:
    """Raise when one (experiment, seed) comes from several run folders, e.g. two presets, two data
    roots or two ``--set`` overrides in one tree: averaging them would mix different settings."""
    if df.empty:
        return
    counts = df.groupby(["exp", "seed"])["run"].nunique()
    clashes = counts[counts > 1]
    if len(clashes):
        exp, seed = clashes.index[0]
        runs = sorted(df.loc[(df["exp"] == exp) & (df["seed"] == seed), "run"].unique())
        raise ValueError(
            f"{len(clashes)} (experiment, seed) pairs come from several runs, e.g. {exp} seed {seed}: "
            f"{', '.join(runs)}. Runs of one row with several algorithms or held-out domains (a sweep with "
            "--algorithms, or --exps ROWS --holdout) are read with `table --by algorithm`; otherwise keep one setting "
            "per row (--preset, --exps, --study, or a separate --runs folder; in Python, select(df, preset=..., "
            "data=..., config_hash=...))"
        )
