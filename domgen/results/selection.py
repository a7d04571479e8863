"""Model selection, named: which epoch (and which trial of a hyperparameter search) a result is read at.

DomainBed's point (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021, Sec. 3
and ``model_selection.py``): the selection method is part of the result, so every table says which one it
used. Here each method is applied afterwards to the rows the runs recorded (``results.jsonl``), never by
retraining: a run that holds a domain out records the validation and test split of every domain after
every epoch (stage ``val``, ``epoch_eval=auto``), other runs the training domains' validation splits.

* ``train`` (training-domain validation; the default and what the trainer itself does, Yoon et al. 2019
  Sec. 3): per run, the epoch with the best mean validation macro recall over its training domains
  (earliest on ties, like the trainer's strict ``>``). Reported: the run's ``final`` test rows, i.e. the
  selected weights evaluated at the end, so runs recorded before per-epoch test rows existed still work.
* ``oracle`` (test-domain validation, DomainBed's ``OracleSelectionMethod``): per run, the epoch with the
  best validation macro recall on the held-out domain(s) themselves; reported: that epoch's test rows. It
  looks at the target domain's labels, so it is an upper bound, never a result.
* ``lodo`` (leave-one-domain-out validation, DomainBed's ``LeaveOneOutSelectionMethod``): a run holding out
  T, of family F and seed s, is scored at epoch e by the mean, over its *siblings* (the finished runs of
  family F and seed s holding out one other domain U), of the sibling's validation macro recall on its own
  held-out U at epoch e. Reported: the run's own test rows at the best epoch.

  How this differs from DomainBed: DomainBed trains, for test domain T, extra runs that hold out T *and*
  U, and scores on U; T never enters those runs. Here the leave-one-out sweep's own runs (``loo --holdout
  all``: one run per held-out domain) are reused, so the sibling scored on U was trained on T's training
  images. T's labels still never choose anything for the run that holds T out (its own T rows are only
  reported), and no extra training is needed; the price is that the score comes from models that saw T.
  DomainBed also needs a run for every other domain and scores on U's whole "in" split; here the mean is
  over the domains the family holds out in any of its runs (a sweep may leave domains out: yoon2019's O-T
  never hold out HAM) and over U's validation split, the split every other method selects on. A run whose
  siblings of its own seed are not all finished yet (a sweep under way) is *pending*: left out of the
  table, and named in its caption, rather than scored on fewer siblings than it will have, so a lodo
  figure never changes once printed.

Trials: the runs of one random search share ``search`` (``domgen.config.run_keys``: the config without
exp, seed, holdout and the algorithm's hyperparameters) and differ in ``family``. Within one
(exp, search, holdout, seed) the trial whose best epoch scores highest by the method's own score wins
(for lodo: the (trial, epoch) pair), ties to the first run by name. ``exp`` is part of the key because
Table 2's rows K and M differ only in an algorithm hyperparameter (``weighted_align``): they share
``search`` yet are two rows, not two trials. Runs recorded before ``search`` existed are each their own
group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from domgen.errors import DomgenError
from domgen.registry import Registry

SCORE = "macro_recall"  # what every method maximises (the trainer's selection score), whatever the table shows
DEFAULT = "train"


class SelectionError(DomgenError, ValueError):
    """A selection method cannot be applied to these runs (what they lack, and how to get it)."""


class SiblingsPending(SelectionError):
    """lodo: some of the run's sibling leave-one-out runs (same family and seed) are not finished yet."""


@dataclass(frozen=True)
class Run:
    """One run's identity, as its rows state it."""

    run: str
    exp: str
    seed: int
    family: str | None
    search: str | None
    holdout: tuple[str, ...]
    train_domains: tuple[str, ...]
    finished: bool


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _domains(value) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else ()


class RunIndex:
    """The collected rows (``collect(..., stages=("val", "final"), splits=("val", "test"))``) split once:
    per-epoch validation scores, per-epoch test rows, final test rows, and each run's identity."""

    def __init__(self, df: pd.DataFrame):
        stage, split = df["stage"], df["split"]
        val = df[(stage == "val") & (split == "val")]
        self.epoch_test = df[(stage == "val") & (split == "test")]
        self.final_test = df[(stage == "final") & (split == "test")]
        if len(val) and SCORE in val.columns:
            score = pd.to_numeric(val[SCORE], errors="coerce")
            # (run, epoch) x domain: the validation macro recall every score below averages
            self.val = val.assign(_s=score).drop_duplicates(["run", "epoch", "domain"], keep="last") \
                .set_index(["run", "epoch", "domain"])["_s"].unstack("domain")
        else:
            self.val = pd.DataFrame(index=pd.MultiIndex.from_arrays([[], []], names=["run", "epoch"]))
        self.runs = {
            r["run"]: Run(r["run"], str(r["exp"]), int(r["seed"]), _text(r.get("family")), _text(r.get("search")),
                          _domains(r.get("holdout")), _domains(r.get("train_domains")), bool(r["finished"]))
            for r in df.drop_duplicates("run").to_dict("records")
        }
        # looked up once per run below: split by run once, not filtered per run
        self._val = {k: g.droplevel("run") for k, g in self.val.groupby(level="run", sort=False)}
        self._epoch_test = {k: g for k, g in self.epoch_test.groupby("run", sort=False)}
        self._final_test = {k: g for k, g in self.final_test.groupby("run", sort=False)}
        self.by_family: dict[tuple, list[Run]] = {}
        self.family_holdouts: dict[str | None, set[tuple]] = {}  # what each family holds out, any seed or state
        for r in sorted(self.runs.values(), key=lambda r: r.run):
            self.by_family.setdefault((r.family, r.seed), []).append(r)
            if len(r.holdout) == 1:
                self.family_holdouts.setdefault(r.family, set()).add(r.holdout)

    def final_test_rows(self, run: str) -> pd.DataFrame:
        return self._final_test.get(run, self.final_test.iloc[:0])

    def val_curve(self, run: str, domains) -> pd.DataFrame:
        """epoch x ``domains`` validation scores of ``run`` (columns it never recorded are all NaN)."""
        if run not in self._val:
            return pd.DataFrame(columns=list(domains), dtype=float)
        return self._val[run].reindex(columns=list(domains)).sort_index()

    def epoch_test_rows(self, run: str, epoch: int, method: str) -> pd.DataFrame:
        rows = self._epoch_test.get(run, self.epoch_test.iloc[:0])
        rows = rows[rows["epoch"] == epoch]
        if rows.empty:
            raise SelectionError(
                f"{method} selection reports a run's test rows at the selected epoch, and {run} recorded none at "
                f"epoch {epoch} (it evaluated only the validation splits selection needed: epoch_eval=selection, "
                "or a run recorded before per-epoch test rows existed); train it with --set epoch_eval=all")
        return rows


class SelectionMethod:
    """A named way to choose the epoch of a run (``curve``: epoch -> score, argmax wins) and what it reports."""

    name = ""
    caption = ""
    upper_bound = False

    def curve(self, run: Run, index: RunIndex) -> pd.Series:
        raise NotImplementedError

    def reported(self, run: Run, epoch: int | None, index: RunIndex) -> pd.DataFrame:
        """The test rows that stand for ``run`` selected at ``epoch`` (one per domain)."""
        return index.epoch_test_rows(run.run, epoch, self.name)


SELECTIONS: Registry[SelectionMethod] = Registry("selection method")


@SELECTIONS.register("train")
class TrainDomain(SelectionMethod):
    name = "train"
    caption = ("training-domain validation (train): per run, the epoch with the best mean validation macro recall "
               "over its training domains; among the trials of a search, the best by that score")

    def curve(self, run: Run, index: RunIndex) -> pd.Series:
        # nanmean over the training domains, as Trainer.validate scores an epoch
        return index.val_curve(run.run, run.train_domains).mean(axis=1).dropna()

    def reported(self, run: Run, epoch: int | None, index: RunIndex) -> pd.DataFrame:
        # the selected weights' own evaluation at the end; its epoch column is the trainer's best epoch
        return index.final_test_rows(run.run)


@SELECTIONS.register("oracle")
class Oracle(SelectionMethod):
    name = "oracle"
    upper_bound = True
    caption = ("test-domain validation (oracle), an UPPER BOUND and not a result: per run, the epoch with the best "
               "validation macro recall on the held-out domain itself (its labels choose the model)")

    def curve(self, run: Run, index: RunIndex) -> pd.Series:
        if not run.holdout:
            raise SelectionError(f"oracle selection scores a run on its held-out domains, and {run.run} holds none "
                                 "out; use it on runs with data.holdout set (loo runs: e.g. table --exps O-T)")
        curve = index.val_curve(run.run, run.holdout).mean(axis=1).dropna()
        if curve.empty:
            raise SelectionError(f"oracle selection needs per-epoch validation rows of the held-out "
                                 f"{' '.join(run.holdout)}, and {run.run} recorded none (epoch_eval=selection, or "
                                 "recorded before they existed); train it with --set epoch_eval=all")
        return curve


@SELECTIONS.register("lodo")
class LeaveOneDomainOut(SelectionMethod):
    name = "lodo"
    caption = ("leave-one-domain-out validation (lodo): per run holding out one domain, the epoch with the best mean "
               "validation macro recall of its sibling leave-one-out runs (same settings and seed) on their own "
               "held-out domains; among trials, the best (trial, epoch)")

    def siblings(self, run: Run, index: RunIndex) -> list[Run]:
        if len(run.holdout) != 1:
            raise SelectionError(f"lodo selection applies to runs holding out exactly one domain; {run.run} holds out "
                                 f"{' '.join(run.holdout) or 'none'} (leave it out, e.g. table --exps O-T)")
        if run.family is None:
            raise SelectionError(f"lodo selection groups leave-one-out runs by their family key, and {run.run} was "
                                 "recorded before runs carried it; rerun the leave-one-out sweep")
        sibs = {}
        for other in index.by_family.get((run.family, run.seed), []):
            if other.finished and len(other.holdout) == 1 and other.holdout != run.holdout:
                sibs.setdefault(other.holdout, other)  # one sibling per held-out domain
        needed = index.family_holdouts.get(run.family, set()) - {run.holdout}
        if not needed:
            raise SelectionError(
                f"lodo selection of {run.run} (holding out {run.holdout[0]}) needs the finished leave-one-out runs of "
                f"the other domains with the same settings and seed {run.seed}: run `loo --holdout all` (same preset, "
                "--set overrides and seed)")
        missing = sorted(d for (d,) in needed - set(sibs))
        if missing:
            raise SiblingsPending(f"{run.run} (holding out {run.holdout[0]}, seed {run.seed}) waits for the "
                                  f"leave-one-out runs of {' '.join(missing)} with its settings and seed to finish")
        return list(sibs.values())

    def curve(self, run: Run, index: RunIndex) -> pd.Series:
        per_sibling = {}
        for sib in self.siblings(run, index):
            held = sib.holdout[0]
            scores = index.val_curve(sib.run, [held])[held].dropna()
            if scores.empty:
                raise SelectionError(f"lodo selection scores {sib.run} on its held-out {held}, and it recorded no "
                                     "per-epoch validation rows there (recorded before epoch_eval=auto); rerun it")
            per_sibling[sib.run] = scores
        # epochs every sibling recorded: a mean over fewer siblings would be a different score
        return pd.concat(per_sibling, axis=1).mean(axis=1, skipna=False).dropna().sort_index()


def get_selection(name: str) -> SelectionMethod:
    return SELECTIONS.get(name)()


def _best(curve: pd.Series) -> tuple[float, int | None]:
    """(best score, its epoch), earliest epoch on ties; (nan, None) for an empty curve."""
    if curve.empty:
        return math.nan, None
    curve = curve.sort_index()
    return float(curve.max()), int(curve.idxmax())  # idxmax: first occurrence of the maximum


def trial_key(run: Run) -> tuple:
    """Runs with equal keys are trials of one search, among which selection picks one (module docstring)."""
    return (run.exp, run.search if run.search is not None else f"run:{run.run}", run.holdout, run.seed)


def selected_epochs(df: pd.DataFrame, method: str = DEFAULT, index: RunIndex | None = None,
                    exps: Iterable[str] | None = None, runs: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per run in ``df`` (only of ``exps`` / only ``runs``, when given): ``run``, ``epoch`` (argmax
    of the method's score), ``score``, ``trial`` (its trial group) and ``chosen`` (whether it wins its
    group). Runs left out here still serve as lodo siblings."""
    m, index = get_selection(method), index or RunIndex(df)
    keep_exps, keep_runs = (None if x is None else set(x) for x in (exps, runs))
    recs, pending = [], []
    for run in sorted(index.runs.values(), key=lambda r: r.run):
        if (keep_exps is not None and run.exp not in keep_exps) or (keep_runs is not None and run.run not in keep_runs):
            continue
        try:
            score, epoch = _best(m.curve(run, index))
        except SiblingsPending:  # a sweep under way: left out and named (attrs["pending"]), not scored on fewer
            pending.append(run.run)
            continue
        recs.append({"run": run.run, "epoch": epoch, "score": score, "trial": trial_key(run)})
    if pending and not recs:
        raise SiblingsPending(f"{method} selection: every run waits for sibling leave-one-out runs (same settings and "
                              f"seed) to finish: {', '.join(pending)}")
    out = pd.DataFrame(recs, columns=["run", "epoch", "score", "trial"])
    out.attrs["pending"] = pending
    out["chosen"] = False
    for key, group in out.groupby("trial", sort=False):
        if len(group) > 1 and group["score"].isna().all():
            raise SelectionError(f"{len(group)} trials of one search ({', '.join(group['run'])}) and no validation "
                                 "rows to choose among them: collect with stages=('val', 'final'), splits=('val', 'test')")
        # NaN scores (no validation rows) lose to any number; ties go to the first run by name
        out.loc[group["score"].fillna(-math.inf).idxmax(), "chosen"] = True
    return out


def select_rows(df: pd.DataFrame, method: str = DEFAULT, exps: Iterable[str] | None = None,
                runs: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (selected run, domain): the run's test row under ``method`` with every context and metric
    column, ``epoch`` = the selected epoch, ``score`` = the selection score, ``selection`` = the method.
    Tables and comparisons read these in place of the final test rows. ``exps`` / ``runs``: report only
    these experiments' runs / these runs (the others still count as lodo siblings)."""
    m = get_selection(method)
    if df.empty:
        out = df.assign(score=pd.Series(dtype=float), selection=pd.Series(dtype=object))
        out.attrs["pending"] = []
        return out
    if not df.index.is_unique:  # rows are picked by index label below
        df = df.reset_index(drop=True)
    index = RunIndex(df)
    picks = selected_epochs(df, method, index, exps, runs)
    labels, scores = [], {}
    for rec in picks[picks["chosen"]].to_dict("records"):
        epoch = None if pd.isna(rec["epoch"]) else int(rec["epoch"])
        labels.extend(m.reported(index.runs[rec["run"]], epoch, index).index)
        scores[rec["run"]] = rec["score"]
    out = df.loc[sorted(labels)]  # the collected order (run folders sorted), as the tables had it
    out = out.assign(score=out["run"].map(scores).astype(float), selection=m.name)
    out.attrs["pending"] = picks.attrs["pending"]  # runs lodo left out until their siblings finish
    return out


def pending_line(pending: Iterable[str]) -> list[str]:
    """The caption line naming runs left out because their sibling leave-one-out runs are not all finished."""
    pending = sorted(pending)
    if not pending:
        return []
    return [f"Left out: {len(pending)} run(s) whose sibling leave-one-out runs (same settings and seed) are not all "
            f"finished, so their lodo score would change: {', '.join(pending)}."]


def selection_line(method: str) -> str:
    """The caption line every table and comparison prints for ``method``."""
    m = get_selection(method)
    return f"Model selection: {m.caption}."
