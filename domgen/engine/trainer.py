"""The loop every experiment runs through: train an epoch, validate, checkpoint, select.

Model selection (Yoon et al. 2019, Sec. 3): the epoch with the best validation score, i.e. HAM's
validation macro recall when only HAM trains (nsec = 0), else the mean validation macro recall over the
domains used for training (held-out domains excluded). The test split is evaluated once, at the end,
with the best epoch's weights and the melanoma threshold chosen on validation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from domgen.algorithms import Algorithm, make_algorithm
from domgen.config import RunConfig, to_dict
from domgen.data.labels import DOMAINS
from domgen.data.samplers import TrainPool
from domgen.engine.averaging import Averager, make_averager
from domgen.engine.checkpoint import load_checkpoint, previous, rng_state, save_checkpoint, seed_everything, set_rng_state
from domgen.engine.features import FeatureView, run_features
from domgen.engine.inputs import Inputs, ValidationStream
from domgen.engine.mixing import make_mixer
from domgen.engine.logging import RESULTS, TensorBoard, append_results, log_final, truncate_results
from domgen.errors import CheckpointError
from domgen.engine.loop import autocast, prepare_model, train_epoch
from domgen.engine.evaluation import Evaluator
from domgen.engine.predictions import save_test_predictions
from domgen.engine.provenance import set_deterministic
from domgen.engine.profile import NoProfile, RunProfile
from domgen.engine.schedules import make_schedule
from domgen.data.run_data import RunData
from domgen.models import build_model, input_normalization
from domgen.progress import lazy_bar
from domgen.regimes import Regime, make_regime
from domgen.seeds import derive_seed
from domgen.studies import load_study
from domgen.threads import thread_budget

LAST, BEST, INIT = "last.pt", "best.pt", "init.pt"
PREV = previous(Path(LAST)).name  # the last.pt before the newest, kept until the run is done


clock = time.perf_counter  # what epochs are timed with (a test replaces it with a counter)


def _noop(*args, **kwargs) -> None:
    return None


def _identity(iterable: Iterable, **kwargs) -> Iterable:
    return iterable


@dataclass
class Hooks:
    """How a driver talks to the outside without printing: ``log`` gets summary lines, ``progress``
    wraps an iterable and ``bar`` makes a counter with ``update(n)`` (the CLI passes tqdm for both)."""

    log: Callable[[str], None] = _noop
    progress: Callable[..., Iterable] = _identity
    bar: Callable[..., Any] | None = None
    profile: RunProfile | None = None  # times the run's phases (``profile`` command, ``train --profile``)


def _domain_order(row: dict) -> int:
    return DOMAINS.index(row["domain"]) if row["domain"] in DOMAINS else len(DOMAINS)


def train_pool(data: RunData, seed: int) -> TrainPool:
    """The training pool as algorithms see it: labels and domains of ``data.pool``, the run's seed."""
    domains = data.manifest["domain"].to_numpy()[data.pool]
    return TrainPool.of(data.labels[data.pool], domains, num_classes=len(data.classes), seed=seed, primary=data.primary)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: RunConfig, data: RunData, run_dir: Path, context: dict, hooks: Hooks, init_state=None, model=None):
        """``init_state``: a warm start (state dict of the same architecture); ``model``: a ready model
        (e.g. a pruned one) used as is."""
        self.cfg, self.data, self.run_dir, self.context, self.hooks = cfg, data, Path(run_dir), context, hooks
        self.device = pick_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(thread_budget(cfg.data.cached, cfg.data.workers, cfg.threads).torch)
        set_deterministic(cfg.deterministic)  # before the model exists: cuDNN and cuBLAS read it at first use
        seed_everything(cfg.seed)
        if model is None:
            weights = "none" if init_state is not None else cfg.model.weights
            model = build_model(cfg.model.arch, weights, len(data.classes), cfg.model.head_dropout)
        if init_state is not None:
            model.load_state_dict(init_state)
        self.model = prepare_model(model, self.device, cfg.channels_last)
        # the regime sees the model first: LoRA changes its structure, L2-SP keeps its initial weights
        self.regime: Regime = make_regime(cfg.regime)
        self.regime.attach(self.model)
        # before attach: the average's copies of the model never carry the algorithm's hooks (MixStyle's)
        self.averager: Averager = make_averager(cfg.average, self.model)
        m = data.manifest
        pool = train_pool(data, cfg.seed)
        bar = lazy_bar(hooks.bar, total=len(m), desc="caching images", unit="img")
        self.inputs = Inputs(m["path"].tolist(), data.labels, cfg.transform, cfg.data, self.device, bar,
                             norm=input_normalization(cfg.model.arch), domains=pool.domain_index(m["domain"]), acfg=cfg.augment)
        # TPGM learns its radii on batches training never sees: the training domains' validation split
        self.regime.use_validation(ValidationStream(self.inputs, data.positions("val", data.train_domains),
                                                    cfg.optim.batch_size, derive_seed(cfg.seed, "regime_val")))
        # regime.precompute (lp): g(x) computed once at first use, then epochs of head passes (domgen.engine.features)
        self.features = run_features(cfg, data, self.inputs, hooks.bar, hooks.log)
        self.algorithm: Algorithm = make_algorithm(cfg.algorithm, cfg.loss, self.device).build(pool)
        self.algorithm.attach(self.model)  # its own modules and hooks exist before the optimiser sees them
        self.mixer = make_mixer(cfg.augment, self.algorithm, len(data.classes))  # augment.mix: wraps its criterion
        o = cfg.optim
        groups = self.regime.param_groups(self.model, self.algorithm.param_groups(self.model), o.lr)  # ft: as given
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = make_schedule(self.optimizer, o)  # optim.schedule, stepped once per epoch
        self.profile = hooks.profile or NoProfile()
        self.profile.watch(self.optimizer)
        self.epoch, self.best_score, self.best_epoch = 0, -math.inf, -1
        self.saved_epoch = 0  # epochs safely in last.pt (what a Ctrl-C keeps)
        self.train_s = 0.0  # seconds of training and per-epoch evaluation, over every session (done: train_s)
        self.tb: TensorBoard | None = None
        # every evaluation; the study's error profile puts its operating point in every row (pos_*)
        self.evaluator = Evaluator(cfg, data, self.inputs, self.features, self.model, self.device,
                                   load_study(cfg.study_file or cfg.study).protocol)

    # ---- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,  # epochs completed
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "rng": rng_state(),
            "algorithm": self.algorithm.state_dict(),
            "average": self.averager.state_dict(),
            "regime": self.regime.state_dict(),
            "train_s": self.train_s,
            "config": to_dict(self.cfg),
        }

    def best_state(self) -> dict[str, Any]:
        """What ``best.pt`` holds: what inference and warm starts need, not the optimiser's moments. With
        ``average`` ema or sma, the averaged weights (the ones validated and selected)."""
        return {"model": self.averager.eval_model(self.model).state_dict(), "epoch": self.epoch, "best_score": self.best_score, "config": to_dict(self.cfg)}

    def start_fresh(self) -> None:
        """Training from epoch 0 in a folder whose results (if any) a kill left before the first checkpoint.
        With ``save_init``, the weights before step 1 go to ``init.pt`` (``similarity --vs-init`` reads them)."""
        if (self.run_dir / RESULTS).exists():
            truncate_results(self.run_dir, after_epoch=0)
        if self.cfg.save_init:
            save_checkpoint(self.run_dir / INIT, {"model": self.model.state_dict(), "epoch": 0, "config": to_dict(self.cfg)})

    def _load_last(self) -> dict[str, Any] | None:
        """``last.pt``, or ``last.prev.pt`` (with a message) when the newest is corrupt; None when neither exists."""
        last, prev = self.run_dir / LAST, self.run_dir / PREV
        if not last.exists():
            return load_checkpoint(prev, self.device) if prev.exists() else None
        try:
            return load_checkpoint(last, self.device)
        except CheckpointError as err:
            if not prev.exists():
                raise CheckpointError(f"{err}; there is no earlier {PREV} to fall back to: start over with --restart "
                                      "(the run folder is moved aside, not deleted)") from None
            state = load_checkpoint(prev, self.device)
            kept = last.with_name(LAST + ".corrupt")
            last.rename(kept)  # kept for a look, and never linked over the good previous one
            self.hooks.log(f"[{self.cfg.exp} s{self.cfg.seed}] {err}: resuming from {PREV} (epoch {state['epoch']}) instead; "
                           f"the unreadable file is now {kept.name}")
            return state

    def resume(self) -> bool:
        """Continue from ``last.pt`` when present; results written after it are dropped and redone."""
        state = self._load_last()
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_score, self.best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
        self.saved_epoch = self.epoch
        set_rng_state(state["rng"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.averager.load_state_dict(state.get("average", {}))
        self.regime.load_state_dict(state.get("regime", {}))
        self.train_s = float(state.get("train_s", 0.0))  # 0 for checkpoints written before it was kept
        truncate_results(self.run_dir, after_epoch=self.epoch)
        return True

    # ---- training --------------------------------------------------------------------------------
    def fit(self) -> None:
        # events logged after the checkpoint (the interrupted epoch's, at step epoch + 1) are purged
        self.tb = TensorBoard(self.run_dir / "tb", purge_step=self.epoch + 1 if self.epoch else None)
        try:
            self._fit()
        except BaseException:  # Ctrl-C, a kill signal turned KeyboardInterrupt, an error: flush and end the writer
            self.tb.close()  # its thread would otherwise outlive the run, writing into a folder that may be gone
            self.tb = None
            raise

    def _fit(self) -> None:
        total = self.cfg.optim.epochs
        prof = self.profile
        while self.epoch < total and not self.stopped_early():
            prof.stage(self.epoch + 1)
            started = clock()
            losses = self._train_one(self.epoch)
            self.epoch += 1
            with prof.phase("evaluation"):
                score, rows = self.validate(self.epoch)
                extra = self.averager.end_epoch(self.epoch - 1, self.model, self.evaluator.val_loss)
            # wall time of the epochs in last.pt, summed over sessions (an interrupted epoch's is lost with it)
            self.train_s += clock() - started
            with prof.phase("logging_checkpointing"):
                self._log_epoch(losses, score, rows, extra)
                if score > self.best_score:
                    self.best_score, self.best_epoch = score, self.epoch
                    save_checkpoint(self.run_dir / BEST, self.best_state())
                save_checkpoint(self.run_dir / LAST, self.state(), keep_previous=True)
            self.saved_epoch = self.epoch
        if self.stopped_early():
            self.hooks.log(f"[{self.cfg.exp} s{self.cfg.seed}] early stop after epoch {self.epoch}: no better selection score "
                           f"for {self.cfg.optim.patience} epochs (best: epoch {self.best_epoch})")
        self._finish_average()

    def stopped_early(self) -> bool:
        """Early stopping (``optim.patience`` P > 0): training stops once P epochs in a row have not improved on
        the best selection score, i.e. after epoch ``best_epoch + P``. A function of the epoch and the best
        epoch, both in ``last.pt``, so a resumed run stops where the uninterrupted one does (and a run
        killed after its stopping epoch's checkpoint trains no further epoch when resumed)."""
        p = self.cfg.optim.patience
        return p > 0 and self.best_epoch >= 0 and self.epoch - self.best_epoch >= p and self.epoch < self.cfg.optim.epochs

    def _finish_average(self) -> None:
        """SWAD: its model (BatchNorm statistics recomputed on training batches) becomes ``best.pt``, the
        weights :meth:`final` evaluates. Recomputed from ``last.pt``'s state when a run is resumed after
        its last epoch, so it is the same model."""
        if not self.averager.final_model:
            return
        with self.profile.phase("evaluation"), autocast(self.device, self.cfg.precision):
            model = self.averager.finish(self.model, self._bn_batches)
        with self.profile.phase("logging_checkpointing"):
            state = {"model": model.state_dict(), "epoch": self.epoch, "best_score": self.best_score,
                     "config": to_dict(self.cfg), **self.averager.summary()}
            save_checkpoint(self.run_dir / BEST, state)

    def _bn_batches(self) -> Iterable:
        """One pass over the training pool in a seeded order, augmented as in training: the batches that
        recompute an averaged model's BatchNorm statistics (SWAD, as SWA's ``update_bn``)."""
        cfg, pool = self.cfg, self.data.pool
        order = pool[np.random.default_rng(derive_seed(cfg.seed, "average_bn")).permutation(len(pool))]
        return self.inputs.train_batches(order, cfg.optim.batch_size, derive_seed(cfg.seed, "average_bn", "augment"))

    def _train_one(self, epoch: int) -> dict[str, float]:
        cfg, pool = self.cfg, self.data.pool
        bs = cfg.optim.batch_size
        with self.profile.phase("data"):
            draws = [d._replace(idx=pool[d.idx]) for d in self.algorithm.batches(epoch, bs)]  # pool -> manifest
        if self.features is None:
            model, batches = self.model, self.inputs.batches(draws, derive_seed(cfg.seed, epoch, "augment"))
        else:  # the same draws, as features of the images; the algorithm trains the head through the view
            model, batches = FeatureView(self.model), self.features.ready(self.model).batches(draws)
        if self.mixer is not None:
            batches = self.mixer.batches(batches, derive_seed(cfg.seed, epoch, "mix"))
        desc = f"{cfg.exp} s{cfg.seed} epoch {epoch + 1}/{cfg.optim.epochs}"
        batches = self.hooks.progress(self.profile.batches(batches), desc=desc, total=len(draws), leave=False)
        self.algorithm.begin_epoch(epoch, cfg.optim.epochs)
        self.averager.begin_epoch(epoch)
        self.regime.begin_epoch(epoch, cfg.optim.epochs, self.model)
        on_step = None if cfg.average.name == "none" else (lambda: self.averager.update(self.model))
        losses = train_epoch(model, batches, self.algorithm, self.optimizer, self.device, self.cfg.precision, on_step,
                             self.regime, clip_norm=cfg.optim.clip_norm)
        losses["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return losses

    def _log_epoch(self, losses: dict[str, float], score: float, rows: list[dict], extra: dict[str, float] | None = None) -> None:
        # The epoch's mean loss terms (and each named term's gradient norm at the features) go into
        # results.jsonl too, so which term drove training can be read back without TensorBoard.
        # ``extra``: the average's own values (SWAD's segment validation loss), unprefixed.
        extra = extra or {}
        append_results(self.run_dir, [self.context | {"epoch": self.epoch, "stage": "train", "split": "train", "domain": "pool"}
                                     | {f"train_{k}": v for k, v in losses.items()} | extra])
        # Shown: the validation splits model selection reads. The held-out domains' figures and every test
        # split are recorded in results.jsonl (what oracle and lodo selection read afterwards), not shown:
        # a curve on the screen invites choosing by it.
        shown = [r for r in rows if r["split"] == "val" and r["domain"] in self.data.train_domains]
        self.tb.scalars(losses, self.epoch, prefix="train/")
        self.tb.scalars({f"{r['domain']}": r["macro_recall"] for r in shown}, self.epoch, prefix="val_macro_recall/")
        self.tb.scalars({"selection_score": score} | extra, self.epoch, prefix="val/")
        per_domain = " ".join(f"{r['domain']} {r['macro_recall']:.1f}" for r in sorted(shown, key=_domain_order))
        loss = " ".join(f"{k} {v:.4g}" for k, v in losses.items() if k != "lr" and not k.startswith("gn_"))
        if any(k.startswith("gn_") for k in losses):
            loss += " | grad at features: " + " ".join(f"{k[3:]} {v:.3g}" for k, v in losses.items() if k.startswith("gn_"))
        self.hooks.log(f"[{self.cfg.exp} s{self.cfg.seed}] epoch {self.epoch}/{self.cfg.optim.epochs} {loss} | val macro recall: {per_domain} | score {score:.2f}")

    # ---- evaluation ------------------------------------------------------------------------------
    def validate(self, epoch: int) -> tuple[float, list[dict]]:
        """Evaluate the evaluator's ``epoch_splits`` (and ``train_subsample``), record them (stage ``val``, each row's
        split named) and return the selection score: the mean validation macro recall over the training
        domains (Yoon et al., Sec. 3)."""
        splits, domains = self.evaluator.epoch_splits()
        rows, _, _, _ = self.evaluator.evaluate(self.averager.eval_model(self.model), splits, domains=domains,
                                                extra=self.evaluator.train_subsample())
        rows = [self.context | {"epoch": epoch, "stage": "val"} | r for r in rows]
        append_results(self.run_dir, rows)
        used = [r["macro_recall"] for r in rows if r["split"] == "val" and r["domain"] in self.data.train_domains]
        score = float(np.nanmean(used)) if used else -math.inf
        return score, rows

    def final(self) -> dict[str, Any]:
        """Best epoch's weights (with ``average.name=swad``, SWAD's model) on every domain's validation and
        test split; rows tagged ``final``."""
        prof = self.profile
        prof.stage("final")
        with prof.phase("logging_checkpointing"):
            state = load_checkpoint(self.run_dir / BEST, self.device)
            self.model.load_state_dict(state["model"])
        with prof.phase("evaluation"):
            rows, cms, embed, (pos, probs) = self.evaluator.evaluate(self.model, ("val", "test"), features=self.algorithm.shapes_features)
        averaged = self.averager.summary()  # SWAD: which epochs its model averages
        # the rows carry the epoch the evaluated weights are from: SWAD's model, its window's last epoch
        epoch = averaged["average_epochs"][-1] if averaged.get("average_epochs") else self.best_epoch
        rows = [self.context | {"epoch": epoch, "stage": "final"} | averaged | r for r in rows]
        with prof.phase("logging_checkpointing"):
            append_results(self.run_dir, rows)
            # per-case test predictions: what bootstrap intervals over patients are computed from
            save_test_predictions(self.run_dir, self.data.manifest, pos, embed[1], probs, list(self.data.classes))
            self._log_final(rows, cms, embed)
        test = {r["domain"]: r["macro_recall"] for r in rows if r["split"] == "test"}
        # the epoch training stopped at, only for a run that may stop early (older done markers stay as they are)
        stop = {"stopped_epoch": self.epoch} if self.cfg.optim.patience else {}
        return (self.context | {"best_epoch": self.best_epoch, "best_val_score": self.best_score, "test_macro_recall": test}
                | stop | averaged | {"train_s": round(self.train_s, 1)})

    def _log_final(self, rows, cms, embed) -> None:
        tb = self.tb or TensorBoard(self.run_dir / "tb")
        hp = {k: v for k, v in self.context.items() if k not in ("data",)}
        log_final(tb, rows, cms, embed, self.data.classes, hp, self.cfg.exp, self.best_epoch)
        tb.close()
