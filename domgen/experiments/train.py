"""Driver for one training run: ``run_train(cfg)``, callable from the CLI, a sweep job or a test.

A run lives in ``<out>/<exp>-s<seed>-<hash>``, the hash taken over the resolved config and the data's
identity. A finished run (``done`` marker) is not redone unless ``force``; ``resume`` continues from
``last.pt``. Experiments that warm-start (F-V) first train or reuse their parent (A, or K), found by
the parent's own config hash.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domgen.atomic import write_text_atomic
from domgen.config import RunConfig, config_hash, save_yaml
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.logging import is_done, write_done
from domgen.engine.metrics import jsonable
from domgen.engine.trainer import BEST, Hooks, Trainer
from domgen.data.catalog import Catalog
from domgen.experiments.data import RunData, prepare_data
from domgen.experiments.registry import resolve_config


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]  # the done marker's contents
    skipped: bool = False  # True when the run was already done and nothing was trained


def run_dir_for(cfg: RunConfig, identity: str) -> Path:
    return Path(cfg.out) / f"{cfg.exp}-s{cfg.seed}-{config_hash(cfg, identity)}"


def run_context(cfg: RunConfig, data: RunData, run_dir: Path) -> dict[str, Any]:
    """Fields written into every result line, so that tables need no other file."""
    return {
        "exp": cfg.exp,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "config_hash": run_dir.name.rsplit("-", 1)[-1],
        "data": data.identity,
        "synthetic": data.catalog.synthetic,
        "arch": cfg.model.arch,
        "nsec": cfg.data.nsec,
        "loss": cfg.loss.name,
        "weighted_cls": cfg.loss.weighted_cls if cfg.loss.name == "ccsa" else None,
        "weighted_align": cfg.loss.weighted_align if cfg.loss.name == "ccsa" else None,
        "holdout": list(cfg.data.holdout),
        "train_domains": data.train_domains,
    }


def parent_config(cfg: RunConfig) -> RunConfig:
    """The run a warm-started experiment starts from: same preset, seed, data, sizes and backbone."""
    parent = resolve_config(cfg.warm_start, cfg.preset, cfg.seed)
    data = replace(cfg.data, nsec=parent.data.nsec, holdout=parent.data.holdout)
    model = replace(parent.model, arch=cfg.model.arch)
    return replace(parent, out=cfg.out, device=cfg.device, data=data, transform=cfg.transform, model=model)


def warm_start_state(cfg: RunConfig, hooks: Hooks, catalog: Catalog) -> dict | None:
    if not cfg.warm_start:
        return None
    parent = run_train(parent_config(cfg), replace(hooks, profile=None), catalog=catalog)  # profile this run only
    hooks.log(f"[{cfg.exp} s{cfg.seed}] warm start from {parent.run_dir}/{BEST}")
    return load_checkpoint(parent.run_dir / BEST)["model"]


def open_run(cfg: RunConfig, hooks: Hooks, resume: bool, force: bool, catalog: Catalog | None = None) -> tuple[RunData, Path, RunResult | None]:
    """Data, run folder, and the finished result when there is nothing to do. A run that is not resumed
    (or is forced) starts from an empty folder. ``catalog``: see ``prepare_data``."""
    data = prepare_data(cfg.data, bar=hooks.bar, catalog=catalog)
    run_dir = run_dir_for(cfg, data.identity)
    if is_done(run_dir) and not force:
        hooks.log(f"[{cfg.exp} s{cfg.seed}] already done: {run_dir} (use --force to redo)")
        return data, run_dir, RunResult(run_dir, json.loads((run_dir / "done").read_text()), skipped=True)
    if run_dir.exists() and (force or not resume):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return data, run_dir, None


def finish_run(trainer: Trainer, resume: bool) -> RunResult:
    """Resume if asked and possible, train, evaluate the best epoch, write the done marker."""
    cfg = trainer.cfg
    if resume and trainer.resume():
        trainer.hooks.log(f"[{cfg.exp} s{cfg.seed}] resumed after epoch {trainer.epoch} from {trainer.run_dir}")
    prof = trainer.profile
    prof.start(trainer.run_dir / "profile")
    try:
        trainer.fit()
        summary = trainer.final()
    finally:
        prof.stop()
    if trainer.hooks.profile is not None:
        write_text_atomic(trainer.run_dir / "profile.json", json.dumps(jsonable(prof.report()), indent=1))
    write_done(trainer.run_dir, summary)
    return RunResult(trainer.run_dir, summary)


def run_train(cfg: RunConfig, hooks: Hooks = Hooks(), resume: bool = False, force: bool = False,
              catalog: Catalog | None = None) -> RunResult:
    data, run_dir, finished = open_run(cfg, hooks, resume, force, catalog)
    if finished is not None:
        return finished
    init = warm_start_state(cfg, hooks, data.catalog)
    context = run_context(cfg, data, run_dir)
    save_yaml(cfg, run_dir / "config.yaml", extra={"resolved": context})
    return finish_run(Trainer(cfg, data, run_dir, context, hooks, init_state=init), resume)
