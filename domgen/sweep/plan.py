"""Plan a sweep: experiments x seeds -> one job per run folder, with the parents it warm-starts from.

Each job carries the resolved :class:`RunConfig` its run is keyed by, its run folder (the same
``<out>/<EXP>-s<SEED>-<HASH>`` that :func:`run_train` computes), the jobs it must wait for, its state
on disk (see :mod:`domgen.sweep.status`) and an estimate of its GPU-hours.

Dependencies follow the paper's recipe (Yoon et al., MICCAI 2019, Sec. 3): the CCSA experiments F-T
fine-tune the best checkpoint of baseline A, K is itself one of them, and the pruning experiments U, V
start from K. A parent is planned through :func:`parent_config`, exactly the config ``run_train``
would train or reuse, so its folder hash matches; it is added even when not requested (and run only
when a requested run still needs it), and runs that share a folder are planned once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from domgen.config import DataConfig, RunConfig
from domgen.runs.registry import resolve_config, study_of
from domgen.studies import DEFAULT_STUDY, Study, load_study
from domgen.runs.train import parent_config, run_dir_for
from domgen.sweep.status import read_state, read_states

# ---- GPU-hour model ------------------------------------------------------------------------------
# Training images per second of one H100 (bf16 autocast, channels_last, batch 32, images from the
# decode-once uint8 cache with augmentation on the GPU) at 224 x 224. Assumed, not measured here:
# set from published ResNet training throughputs, derated for the paper's small batch. Images of side
# s cost (s / 224)^2 as much; below ~112 px per-step overhead dominates and the estimate is optimistic.
THROUGHPUT_224 = {"resnet18": 2000.0, "resnet50": 800.0, "resnet152": 330.0}
THROUGHPUT_OTHER = 800.0  # timm backbones: assume ResNet-50-like cost
EVAL_COST = 1 / 3  # a forward pass costs about a third of forward + backward
GPU_HOURS_ASSUMPTION = (
    "GPU-hours = [epochs x (training images x images per sample (CCSA: 2, a pair) + (val + test) images / 3) + (val + test) / 3]"
    " / (images/s on one H100: resnet18 2000, resnet50 800, resnet152 330 at 224 px, scaled by pixel count)"
    "; pruning adds one epoch for channel selection. An assumption, not a measurement."
)


@dataclass(frozen=True)
class DataSize:
    """Images a run touches: its training pool, and the validation / test images of every domain."""

    pool: int
    val: int
    test: int
    val_epoch: int | None = None  # validation images of the selection domains (epoch_eval=selection); None = every domain's


def data_size(cfg: DataConfig) -> DataSize:
    """The real numbers for this data config (loads the catalog and the cached split manifest)."""
    from domgen.data.run_data import prepare_data

    data = prepare_data(cfg)
    return DataSize(int(data.pool.size), int(data.positions("val").size), int(data.positions("test").size),
                    int(data.positions("val", data.train_domains).size))


def estimate_gpu_hours(cfg: RunConfig, size: DataSize) -> float:
    """H100 hours for one run under the model in ``GPU_HOURS_ASSUMPTION``."""
    from domgen.algorithms import images_per_sample

    # pruning: channel selection (about one epoch's worth) + fine-tuning for optim.epochs
    epochs = cfg.optim.epochs + (1 if study_of(cfg).experiments.get(cfg.exp).driver == "prune" else 0)
    train = size.pool * images_per_sample(cfg.algorithm)  # CCSA: one pair of images per pool image
    every = cfg.epoch_eval == "all" or (cfg.epoch_eval == "auto" and bool(cfg.data.holdout))
    per_epoch = size.val + size.test if every else size.val if size.val_epoch is None else size.val_epoch
    images = epochs * (train + EVAL_COST * per_epoch) + EVAL_COST * (size.val + size.test)
    rate = THROUGHPUT_224.get(cfg.model.arch, THROUGHPUT_OTHER) * (224 / cfg.transform.size) ** 2
    return images / rate / 3600


# ---- the plan ------------------------------------------------------------------------------------
@dataclass
class SweepJob:
    name: str  # the run folder's name, e.g. "K-s0-1a2b3c4d5e": unique within a plan
    cfg: RunConfig
    run_dir: Path
    parents: tuple[str, ...]  # jobs whose best checkpoint this run starts from (A for F-T, K for U/V)
    depth: int  # 0 = starts from scratch, 1 = F-T, 2 = U/V: the wave it belongs to
    requested: bool  # False for a parent added only because a requested run needs it
    estimator: Callable[[RunConfig], float] = field(repr=False, default=lambda cfg: float("nan"))
    state: str = "pending"  # done | running | failed | interrupted | pending
    record: dict[str, Any] = field(default_factory=dict)  # the claim or failure record behind the state
    _gpu_hours: float | None = field(default=None, repr=False)

    @property
    def gpu_hours(self) -> float:
        """Estimated H100 hours; computed on first use (it counts the data), so status checks stay cheap."""
        if self._gpu_hours is None:
            self._gpu_hours = self.estimator(self.cfg)
        return self._gpu_hours

    def refresh(self) -> None:
        self.state, self.record = read_state(self.run_dir)


@dataclass
class Plan:
    jobs: list[SweepJob]  # parents before children (by depth), then registry order, then seed
    identity: str  # the data identity hashed into every run folder name
    preset: str
    out: Path

    def job(self, name: str) -> SweepJob:
        for j in self.jobs:
            if j.name == name:
                return j
        raise KeyError(f"no run {name!r} in this sweep")

    def children(self, name: str) -> list[SweepJob]:
        return [j for j in self.jobs if name in j.parents]

    def refresh(self) -> "Plan":
        """Re-read every run's state from disk (and Slurm's, in one sacct call)."""
        for j, (state, record) in zip(self.jobs, read_states([j.run_dir for j in self.jobs])):
            j.state, j.record = state, record
        return self

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for j in self.jobs)


def parse_exps(spec: str, study: str | Study = DEFAULT_STUDY) -> list[str]:
    """``"A-V"``, ``"A,K,R"``, ``"F-K,U"`` -> the study's row names in file order, each checked to exist;
    ``"all"``: every row."""
    EXPERIMENTS = (study if isinstance(study, Study) else load_study(study)).experiments
    names = EXPERIMENTS.names()
    if spec.strip().lower() == "all":
        return names
    chosen: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "-" in part:
            lo, hi = (s.strip() for s in part.split("-", 1))
            EXPERIMENTS.get(lo), EXPERIMENTS.get(hi)  # unknown names fail here, with suggestions
            i, j = names.index(lo), names.index(hi)
            if i > j:
                raise ValueError(f"experiment range {part!r} runs backwards; did you mean {hi}-{lo}?")
            chosen.update(names[i : j + 1])
        else:
            EXPERIMENTS.get(part)
            chosen.add(part)
    if not chosen:
        raise ValueError(f"no experiment in {spec!r}; use e.g. A-V, A,K,R or F-K,U")
    return [n for n in names if n in chosen]


HPARAMS = ("default", "random")


def algorithm_variants(algorithms: str | Iterable[str] | None, hparams: str = "default", n_hparams: int = 8) -> list[tuple[str, ...]]:
    """``--algorithms erm,coral`` x ``--hparams``: the ``--set`` items each requested run is planned with.

    ``default``: one variant per algorithm, at its declared defaults. ``random``: ``n_hparams`` trials per
    algorithm (DomainBed's hyperparameter search): trial 0 is the defaults, trial i > 0 draws every
    searched hyperparameter from the distribution its class declares (``domgen.algorithms.hparam``), seeded
    by (algorithm, i), so the same command plans the same trials. Trial i > 0 also carries ``hparams.trial=i``
    (:data:`TRIAL`, not a config key): :func:`plan_sweep` draws the run's regime's searched hyperparameters
    for it (:func:`regime_trial_items`), since the regime is known only once the row and ``--set`` are
    resolved. Each trial's config is hashed like any run's, so a search is resumable and skips finished
    trials (and trials that draw nothing new are one run); ``table --selection`` chooses among them.
    No algorithms: the study rows' own (``default`` only)."""
    if hparams not in HPARAMS:
        raise ValueError(f"--hparams {hparams!r}: choose {' or '.join(HPARAMS)}")
    names = [a.strip() for a in (algorithms.split(",") if isinstance(algorithms, str) else algorithms or ()) if a.strip()]
    if not names:
        if hparams == "random":
            raise ValueError("--hparams random searches the hyperparameters of the algorithms named by --algorithms")
        return [()]
    if n_hparams < 1:
        raise ValueError(f"--n-hparams {n_hparams}: at least one trial")
    from domgen.algorithms import ALGORITHMS, random_hparams  # imports torch: only when a sweep names algorithms
    from domgen.seeds import derive_seed

    variants = []
    for name in dict.fromkeys(names):
        cls = ALGORITHMS.get(name)  # an unknown name fails here, with suggestions
        variants.append((f"algorithm.name={name}",))
        for trial in range(1, n_hparams if hparams == "random" else 1):
            drawn = random_hparams(cls, derive_seed(name, trial, "hparams", bits=32))
            searched = [f.name for f in fields(cls.Hparams) if f.metadata.get("search")]
            variants.append((f"algorithm.name={name}", *(f"algorithm.{k}={getattr(drawn, k)}" for k in searched),
                             f"{TRIAL}={trial}"))
    return list(dict.fromkeys(variants))


TRIAL = "hparams.trial"  # a variant's search trial: plan_sweep draws the run's regime's hyperparameters from it


def regime_trial_items(regime: str, trial: int) -> tuple[str, ...]:
    """The ``--set`` items of random-search trial ``trial`` for the regime named ``regime``: every
    hyperparameter its class declares a search distribution for (``hparam(default, search)``), drawn by the
    algorithms' rule, seeded by (regime, trial), so trial i is the same whatever the number of trials.
    Trial 0, or a regime with nothing to search: none (its defaults)."""
    if trial == 0:
        return ()
    from domgen.algorithms import random_hparams
    from domgen.regimes import REGIMES
    from domgen.seeds import derive_seed

    cls = REGIMES.get(regime)
    drawn = random_hparams(cls, derive_seed(regime, trial, "hparams", bits=32))
    return tuple(f"regime.{f.name}={getattr(drawn, f.name)}" for f in fields(cls.Hparams) if f.metadata.get("search"))


def resolve_variant(exp: str, preset: str, seed: int, items: list[str], variant: Iterable[str], study: Study) -> RunConfig:
    """The run of row ``exp`` x ``seed`` under ``items`` then ``variant``'s ``--set`` items; a search trial's
    (``hparams.trial=i``) also gets its regime's drawn hyperparameters, after everything else."""
    trial, rest = 0, []
    for item in variant:
        if item.startswith(f"{TRIAL}="):
            trial = int(item.split("=", 1)[1])
        else:
            rest.append(item)
    cfg = resolve_config(exp, preset, seed, [*items, *rest], study=study)
    drawn = regime_trial_items(cfg.regime.name, trial)
    return resolve_config(exp, preset, seed, [*items, *rest, *drawn], study=study) if drawn else cfg


def split_variants(folds: int = 0, split_seeds: Iterable[int] | None = None) -> list[tuple[str, ...]]:
    """``--folds K`` x ``--split-seeds``: the ``--set`` items of each data split a requested run is planned on
    (issue #13: the reported spread then includes split variance, not only training seeds).

    ``folds`` 0: the study's own split (yoon2019: 50/20/30); K >= 2: one variant per test fold 0..K-1 of a
    stratified group K-fold (``data.folds``, ``data.fold``). ``split_seeds``: one variant per seed of the
    split (``data.split_seed``); None leaves the config's own. Neither: one variant with no items, so a
    sweep without them plans exactly what it always did."""
    if folds != 0 and folds < 2:
        raise ValueError(f"--folds {folds}: 0 (the study's split) or K >= 2 folds")
    seeds = [(f"data.split_seed={int(s)}",) for s in dict.fromkeys(split_seeds)] if split_seeds is not None else [()]
    if split_seeds is not None and not seeds:
        raise ValueError("--split-seeds: at least one split seed")
    parts = [(f"data.folds={folds}", f"data.fold={k}") for k in range(folds)] if folds else [()]
    return [s + p for s in seeds for p in parts]


def holdout_variants(holdout: str, data: DataConfig) -> list[tuple[str, ...]]:
    """``--exps ROWS --holdout D1,D2`` (or ``all``): the ``--set`` items that plan each row once per held-out
    domain (``data.holdout=D``): leave-one-domain-out on data the study has no leave-one-out rows for (a
    DomainBed folder, a metadata.csv source, ``domain_by`` values). ``all``: every domain of ``data`` but its
    primary, which always trains. The runs of one row share a ``family`` (it leaves the holdout out), so
    ``table --selection lodo`` scores each by its siblings, as for yoon2019's O-T."""
    if holdout.strip().lower() == "all":
        from domgen.data.catalog import load_catalog

        domains = [d for d in load_catalog(data).domains if d != data.primary]
    else:
        domains = list(dict.fromkeys(d.strip() for d in holdout.split(",") if d.strip()))
    if not domains:
        raise ValueError(f"--holdout {holdout!r} names no domain to hold out")
    return [(f"data.holdout={d}",) for d in domains]


def cross_variants(*lists: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Every combination of one variant from each list (algorithms x splits), items concatenated."""
    out: list[tuple[str, ...]] = [()]
    for variants in lists:
        out = [a + tuple(b) for a in out for b in variants]
    return out


def plan_sweep(
    exps: str | Iterable[str],
    seeds: int | Iterable[int],
    preset: str = "paper",
    overrides: Iterable[str] = (),
    out: str | Path = "runs",
    identity: str | None = None,
    sizes: Callable[[DataConfig], DataSize] | None = None,
    study: str | Study = DEFAULT_STUDY,
    variants: Iterable[Iterable[str]] = ((),),
) -> Plan:
    """Every (experiment, seed) run plus the parents it needs, states read from disk.

    ``seeds``: a count (``5`` -> 0..4) or the seeds themselves. ``overrides`` are ``--set key=value``
    items applied to every requested run (parents get the child's data and transform settings, as in
    :func:`parent_config`). ``identity`` is the data identity; by default it is computed once from the
    first run's data section. ``sizes`` gives the image counts for the GPU-hour estimate (default: the
    real counts of the data, via :func:`data_size`, counted only when an estimate is asked for).
    ``study``: the study (name, path or loaded) whose rows ``exps`` names. ``variants``: each requested
    (experiment, seed) is planned once per variant, its ``--set`` items after ``overrides``
    (:func:`algorithm_variants`: one per algorithm, or per trial of a hyperparameter search, which draws the
    regime's hyperparameters too: :func:`resolve_variant`); variants that resolve to one config are one run.
    """
    study = study if isinstance(study, Study) else load_study(study)
    names = parse_exps(exps if isinstance(exps, str) else ",".join(exps), study)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("a sweep needs at least one seed")
    items = [f"out={out}", *overrides]
    cfgs = [resolve_variant(e, preset, s, items, v, study) for e in names for v in variants for s in seed_list]
    if identity is None:
        from domgen.data.catalog import load_catalog

        identity = load_catalog(cfgs[0].data).identity
    estimate = _size_cache(sizes or data_size)
    jobs: dict[str, SweepJob] = {}
    for cfg in cfgs:
        _add(cfg, True, jobs, identity, estimate)
    order = {n: i for i, n in enumerate(study.experiments.names())}
    ordered = sorted(jobs.values(), key=lambda j: (j.depth, order[j.cfg.exp], j.cfg.seed, j.name))
    plan = Plan(ordered, identity, preset, Path(out))
    return plan.refresh()


def _add(cfg: RunConfig, requested: bool, jobs: dict[str, SweepJob], identity: str, estimate) -> str:
    """Add ``cfg``'s run (and, recursively, its parent) to ``jobs`` once; return its name."""
    run_dir = run_dir_for(cfg, identity)
    name = run_dir.name
    if name in jobs:
        jobs[name].requested |= requested
        return name
    parents: tuple[str, ...] = ()
    depth = 0
    if cfg.warm_start:
        parent = _add(parent_config(cfg), False, jobs, identity, estimate)
        parents, depth = (parent,), jobs[parent].depth + 1
    jobs[name] = SweepJob(name, cfg, run_dir, parents, depth, requested, estimate)
    return name


def _size_cache(sizes: Callable[[DataConfig], DataSize]) -> Callable[[RunConfig], float]:
    """GPU-hours per config, with the data counted once per (nsec, holdout, split): the only data fields
    that differ between the runs of one sweep."""
    cache: dict[tuple, DataSize] = {}

    def estimate(cfg: RunConfig) -> float:
        d = cfg.data
        key = (d.nsec, d.holdout, d.split_seed, d.folds, d.fold)
        if key not in cache:
            cache[key] = sizes(cfg.data)
        return estimate_gpu_hours(cfg, cache[key])

    return estimate
