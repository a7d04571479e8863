"""Driver for one training run: ``run_train(cfg)``, callable from the CLI, a sweep job or a test.

A run lives in ``<out>/<exp>-s<seed>-<hash>``, the hash taken over the resolved config and the data's
identity, and is owned by one process at a time (``domgen.lock``; ``wait`` waits for the owner). Nothing
is deleted: a finished run (``done`` marker) is not redone unless ``force``, an unfinished one is
continued from ``last.pt`` with ``resume`` or refused, and ``restart`` (or ``force`` on a finished run)
moves the old folder's contents to ``<name>.abandoned-<time>`` before starting over. Experiments that warm-start (F-V) first train or reuse their parent (A, or K), found by
the parent's own config hash.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domgen.atomic import remove_stale_temporaries, write_text_atomic
from domgen.config import RunConfig, config_hash, run_keys, save_yaml
from domgen.config_check import normalise_data
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.logging import RESULTS, is_done, jsonable, read_results, write_done
from domgen.engine.provenance import environment, write_environment
from domgen.engine.trainer import BEST, LAST, PREV, Hooks, Trainer
from domgen.errors import RunFolderError, RunInterrupted
from domgen.lock import LOCK, RunLock, describe
from domgen.data.catalog import Catalog
from domgen.data.run_data import RunData, prepare_data
from domgen.protocol import freeze, missing_classes, protocol_hash
from domgen.runs.registry import resolve_config, study_of


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]  # the done marker's contents
    skipped: bool = False  # True when the run was already done and nothing was trained


def run_dir_for(cfg: RunConfig, identity: str) -> Path:
    return Path(cfg.out) / f"{cfg.exp}-s{cfg.seed}-{config_hash(cfg, identity)}"


def run_context(cfg: RunConfig, data: RunData, run_dir: Path) -> dict[str, Any]:
    """Fields written into every result line, so that tables need no other file: the run's identity and
    data, the method as its algorithm describes it (``Algorithm.describe``: name, hyperparameters,
    classification loss and its weighting) and its weight average when it has one."""
    from domgen.algorithms import make_algorithm

    return {
        "exp": cfg.exp,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "study": cfg.study,
        "config_hash": run_dir.name.rsplit("-", 1)[-1],
        **run_keys(cfg, data.identity),
        "data": data.identity,
        "synthetic": data.catalog.synthetic,
        "arch": cfg.model.arch,
        "nsec": cfg.data.nsec,
        **make_algorithm(cfg.algorithm, cfg.loss).describe(),
        "holdout": list(cfg.data.holdout),
        "train_domains": data.train_domains,
        **average_context(cfg),
        **split_context(cfg),
        **protocol_context(cfg),
        **regime_context(cfg),
        **training_context(cfg),
    }


def split_context(cfg: RunConfig) -> dict[str, Any]:
    """The data split, only when it is not the default one (split seed 0, no folds), so that older records
    stay as they are: ``split_seed``, ``folds`` and ``fold``, which tables spread over (``results.spread``)."""
    d = cfg.data
    if d.folds == 0 and d.split_seed == 0:
        return {}
    return {"split_seed": d.split_seed, "folds": d.folds, "fold": d.fold}


def protocol_context(cfg: RunConfig) -> dict[str, Any]:
    """The study's protocol as the record states it, only when it has one (``domgen.protocol``): its hash,
    beside the config hash and never in it, and the positive set the ``pos_*`` columns are about."""
    p = study_of(cfg).protocol
    if p is None:
        return {}
    return {"protocol_hash": protocol_hash(p), "positive": p.positive_name, "positive_classes": list(p.positive)}


def freeze_protocol(cfg: RunConfig, amend: str | None = None) -> None:
    """Freeze the study's protocol beside the runs when its first run starts (``<out>/.protocol``); refuse a
    run whose study file has changed it since, unless ``amend`` says why (``domgen.protocol.freeze``)."""
    freeze(study_of(cfg).protocol, cfg.study, cfg.out, amend)


def regime_context(cfg: RunConfig) -> dict[str, Any]:
    """The fine-tuning regime (``regime.*``) as the record states it, only when it is not the default ``ft``:
    ``regime`` and ``regime_<key>`` for its hyperparameters, so older records stay as they are."""
    from domgen.regimes import make_regime

    return {} if cfg.regime.name == "ft" else make_regime(cfg.regime).describe()


def training_context(cfg: RunConfig) -> dict[str, Any]:
    """The schedule, regularisers and augmentation (issue 14's keys) as the record states them, each only when
    it differs from the default (so older records stay as they are): ``schedule``, ``clip_norm``,
    ``patience``, ``head_dropout``, ``augment`` (the policy), ``mix`` and the parameters those use."""
    o, a = cfg.optim, cfg.augment
    out: dict[str, Any] = {}
    if o.schedule != "step":
        out["schedule"] = o.schedule
        out |= {"warmup_epochs": o.warmup_epochs} if o.schedule == "warmup_cosine" else {}
        out |= {"min_lr": o.min_lr} if o.schedule in ("cosine", "warmup_cosine") and o.min_lr else {}
    out |= {k: getattr(o, k) for k in ("clip_norm", "patience") if getattr(o, k)}
    out |= {"head_dropout": cfg.model.head_dropout} if cfg.model.head_dropout else {}
    if a.policy != "paper":
        out["augment"] = a.policy
        out |= {"augment_jitter": a.jitter} if a.policy == "dermoscopy" else {}
    if a.mix != "none":
        out |= {"mix": a.mix, "mix_alpha": a.mix_alpha}
    return out


def average_context(cfg: RunConfig) -> dict[str, Any]:
    """The weight average (``average.*``) as the record states it, only when there is one: ``average`` and
    the hyperparameters it uses, so that tables tell averaged runs apart and older records stay as they are."""
    a = cfg.average
    if a.name == "none":
        return {}
    own = {"ema": ("decay",), "sma": ("start_epoch",), "swad": ("n_converge", "n_tolerance", "tolerance_ratio")}[a.name]
    return {"average": a.name} | {f"average_{k}": getattr(a, k) for k in own}


def parent_config(cfg: RunConfig) -> RunConfig:
    """The run a warm-started experiment starts from: same preset, seed, data, sizes, backbone and
    initial weights. A warm-started run loads its parent's checkpoint, so its own ``model.weights`` can
    only mean the weights its chain starts from: they pass down to the root (K -> A; U -> K -> A).
    ``save_init`` passes down too: a run that keeps its start has its parent keep its own, and so do the
    settings of this process that are not the run's identity (``threads``, ``deterministic``): a parent
    trained inside its child's command runs as the child asked, as it would on its own command line."""
    parent = resolve_config(cfg.warm_start, cfg.preset, cfg.seed, study=study_of(cfg))
    data = normalise_data(replace(cfg.data, nsec=parent.data.nsec, holdout=parent.data.holdout))
    model = replace(parent.model, arch=cfg.model.arch, weights=cfg.model.weights)
    return replace(parent, out=cfg.out, device=cfg.device, save_init=cfg.save_init, threads=cfg.threads,
                   deterministic=cfg.deterministic, data=data, transform=cfg.transform, model=model)


def warm_start_state(cfg: RunConfig, hooks: Hooks, catalog: Catalog, resume: bool = False) -> dict | None:
    if not cfg.warm_start:
        return None
    # the parent may be in training by a sibling experiment's process: wait for it rather than fail;
    # a profile covers this run only
    parent = run_train(parent_config(cfg), replace(hooks, profile=None), resume=resume, catalog=catalog, wait=True)
    hooks.log(f"[{cfg.exp} s{cfg.seed}] warm start from {parent.run_dir}/{BEST}")
    return load_checkpoint(parent.run_dir / BEST)["model"]


@contextlib.contextmanager
def open_run(cfg: RunConfig, hooks: Hooks, resume: bool, force: bool, catalog: Catalog | None = None,
             restart: bool = False, wait: bool = False):
    """``with open_run(...) as (data, run_dir, finished)``: the data, the run folder (locked until the
    block ends) and the finished result when there is nothing to do. ``catalog``: see ``prepare_data``. The
    study's protocol is frozen (or checked against its frozen copy) once the data is found, before the run
    folder exists."""
    data = prepare_data(cfg.data, bar=hooks.bar, catalog=catalog, log=hooks.log)
    freeze_protocol(cfg)
    protocol = study_of(cfg).protocol
    if protocol is not None and missing_classes(protocol, data.classes):
        hooks.log(f"[{cfg.exp} s{cfg.seed}] the protocol's positive set {protocol.positive_name!r} names classes this data "
                  f"lacks ({', '.join(missing_classes(protocol, data.classes))}): they add nothing to its pos_* metrics")
    run_dir = run_dir_for(cfg, data.identity)
    tag = f"[{cfg.exp} s{cfg.seed}]"
    lock = RunLock(run_dir, wait=wait, on_wait=lambda o: hooks.log(f"{tag} waiting for {describe(o)} to release {run_dir}"),
                   on_takeover=lambda o: hooks.log(f"{tag} took over {run_dir} from {describe(o)}, which is gone (recorded in takeovers.jsonl)"))
    with lock:
        clean_killed_writes(run_dir, tag, hooks)
        yield data, run_dir, settle_folder(cfg, hooks, run_dir, resume, force, restart)


def clean_killed_writes(run_dir: Path, tag: str, hooks: Hooks) -> None:
    """Delete what a killed write left in the run folder (``.last.pt.<random>.tmp``: a checkpoint's size
    each), now that this process owns the folder; the lock's own temporaries stay (a launcher may write it)."""
    n, freed = remove_stale_temporaries(run_dir, keep=(LOCK,))
    if n:
        hooks.log(f"{tag} removed {n} temporary file(s) a killed write left in {run_dir} ({freed / 2**20:.1f} MiB)")


def progress_note(run_dir: Path) -> str | None:
    """What an unfinished run folder holds worth keeping ('checkpoint after epoch 3'), or None."""
    if not any((run_dir / name).exists() for name in (LAST, PREV, RESULTS, "pruned.pt")):
        return None
    epochs = [r.get("epoch", 0) for r in read_results(run_dir) if r.get("stage") == "val"]
    return f"validated up to epoch {max(epochs)}" if epochs else "a checkpoint or a pruned model"


def settle_folder(cfg: RunConfig, hooks: Hooks, run_dir: Path, resume: bool, force: bool, restart: bool) -> RunResult | None:
    tag = f"[{cfg.exp} s{cfg.seed}]"
    if is_done(run_dir):
        if not force:
            hooks.log(f"{tag} already done: {run_dir} (use --force to redo; the old run is moved aside, not deleted)")
            return RunResult(run_dir, json.loads((run_dir / "done").read_text()), skipped=True)
        hooks.log(f"{tag} --force: moved the finished run to {move_aside(run_dir)}")
        return None
    note = progress_note(run_dir)
    if note is None:
        return None
    if restart or force:
        hooks.log(f"{tag} --restart: moved the unfinished run ({note}) to {move_aside(run_dir)}")
    elif not resume:
        raise RunFolderError(f"{run_dir} holds an unfinished run ({note}): continue it with --resume, or move it "
                             "aside and start over with --restart", run_dir, retry_flag="--resume")
    return None


def move_aside(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` but the lock into ``<name>.abandoned-<time>`` beside it (the lock,
    and so the ownership, stays where it is). Nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.abandoned-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.abandoned-{stamp}-{n}")
    target.mkdir()
    for entry in run_dir.iterdir():
        if not entry.name.startswith((LOCK, f".{LOCK}")):
            entry.rename(target / entry.name)
    return target


def finish_run(trainer: Trainer, resume: bool) -> RunResult:
    """Resume if asked and possible, train, evaluate the best epoch, write the done marker. Ctrl-C
    becomes :class:`RunInterrupted`, naming the last epoch that is safely checkpointed."""
    cfg = trainer.cfg
    prof = trainer.profile
    # what this session runs on (a resumed run keeps the earlier sessions' records in the file)
    write_environment(trainer.run_dir, environment(trainer.device, cfg.deterministic))
    try:
        if resume and trainer.resume():
            trainer.hooks.log(f"[{cfg.exp} s{cfg.seed}] resumed after epoch {trainer.epoch} from {trainer.run_dir}")
        else:
            trainer.start_fresh()
        prof.start(trainer.run_dir / "profile")
        try:
            trainer.fit()
            summary = trainer.final()
        finally:
            prof.stop()
    except RunInterrupted:
        raise
    except KeyboardInterrupt:
        raise RunInterrupted(trainer.run_dir, trainer.saved_epoch) from None
    if trainer.hooks.profile is not None:
        write_text_atomic(trainer.run_dir / "profile.json", json.dumps(jsonable(prof.report()), indent=1))
    write_done(trainer.run_dir, summary)
    (trainer.run_dir / PREV).unlink(missing_ok=True)  # only a resume needs the fallback checkpoint
    return RunResult(trainer.run_dir, summary)


def run_train(cfg: RunConfig, hooks: Hooks = Hooks(), resume: bool = False, force: bool = False,
              catalog: Catalog | None = None, restart: bool = False, wait: bool = False) -> RunResult:
    with open_run(cfg, hooks, resume, force, catalog, restart=restart, wait=wait) as (data, run_dir, finished):
        if finished is not None:
            return finished
        init = warm_start_state(cfg, hooks, data.catalog, resume)
        context = run_context(cfg, data, run_dir)
        save_yaml(cfg, run_dir / "config.yaml", extra={"resolved": context, "classes": list(data.classes)})
        return finish_run(Trainer(cfg, data, run_dir, context, hooks, init_state=init), resume)
