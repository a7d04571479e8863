"""Where a run's wall time goes, per epoch: data, forward/backward, optimiser, evaluation, logging.

:class:`RunProfile` is handed to the trainer through ``Hooks.profile``. It times:

- ``data``: waiting for the next training batch (memmap gather, transfer and batched augmentation, or
  the reference DataLoader), plus drawing the epoch's pairs;
- ``forward_backward``: the rest of each training step (loss, backward, loss bookkeeping) less
- ``optimizer``: ``optimizer.step()``, timed by the optimiser's own step hooks;
- ``evaluation``: per-epoch validation and the final evaluation (their batches included);
- ``logging_checkpointing``: TensorBoard, ``results.jsonl``, checkpoints.

The phases are timed independently of the wall clock, so their sum falling short of the wall time
says what is not accounted for (a test holds it within 5%). Alongside, ``torch.profiler`` records a
few training steps of the first epoch (after one skipped and one warm-up step) with the phases as
named ranges, and writes a trace TensorBoard opens (``tensorboard --logdir <run>/profile``, with the
``torch-tb-profiler`` plugin) or ``chrome://tracing`` / Perfetto read directly.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

PHASES = ("data", "forward_backward", "optimizer", "evaluation", "logging_checkpointing")


class RunProfile:
    def __init__(self, trace_steps: int = 3):
        self.trace_steps = trace_steps
        self.records: list[dict[str, Any]] = []  # one per epoch, then one for the final evaluation
        self.trace_dir: Path | None = None
        self._torch: torch.profiler.profile | None = None
        self._opt_s = 0.0  # optimizer time inside the current step
        self._t0 = self._t1 = 0.0

    # ---- the run ------------------------------------------------------------------------------
    def start(self, trace_dir: Path) -> None:
        self.trace_dir = Path(trace_dir)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self._torch = torch.profiler.profile(
            activities=acts, schedule=torch.profiler.schedule(wait=1, warmup=1, active=self.trace_steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.trace_dir)))
        self._torch.__enter__()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._t1 = time.perf_counter()
        if self._torch is not None:
            self._torch.__exit__(None, None, None)
            self._torch = None

    def stage(self, name: str | int) -> None:
        """Open the record of an epoch (its number) or of ``"final"``."""
        self.records.append({"stage": name} | {p: 0.0 for p in PHASES})

    def _add(self, phase: str, seconds: float) -> None:
        self.records[-1][phase] += seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        self._add(name, time.perf_counter() - t)

    # ---- training steps -------------------------------------------------------------------------
    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Time ``optimizer.step()`` through its pre/post hooks."""
        start = [0.0]

        def pre(opt, args, kwargs):
            start[0] = time.perf_counter()

        def post(opt, args, kwargs):
            dt = time.perf_counter() - start[0]
            self._opt_s += dt
            self._add("optimizer", dt)

        optimizer.register_step_pre_hook(pre)
        optimizer.register_step_post_hook(post)

    def batches(self, items: Iterable) -> Iterator:
        """Yield ``items``, timing the wait for each as data and the consumer's step as compute."""
        it = iter(items)
        while True:
            t = time.perf_counter()
            with torch.profiler.record_function("data"):
                try:
                    item = next(it)
                except StopIteration:
                    self._add("data", time.perf_counter() - t)
                    return
            t_step = time.perf_counter()
            self._add("data", t_step - t)
            self._opt_s = 0.0
            with torch.profiler.record_function("step"):
                yield item
            self._add("forward_backward", time.perf_counter() - t_step - self._opt_s)
            if self._torch is not None:
                self._torch.step()

    # ---- the report -----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Seconds per phase per stage, totals, shares of the wall time, and the unaccounted rest."""
        wall = self._t1 - self._t0
        totals = {p: sum(r[p] for r in self.records) for p in PHASES}
        accounted = sum(totals.values())
        return {"wall_s": wall, "accounted_s": accounted, "totals_s": totals,
                "shares": {p: v / wall if wall > 0 else 0.0 for p, v in totals.items()},
                "per_stage": self.records, "trace_dir": str(self.trace_dir) if self.trace_dir else None}


class NoProfile:
    """What the trainer uses when nobody asked for a profile: every call costs nothing."""

    def start(self, trace_dir: Path) -> None: ...
    def stop(self) -> None: ...
    def stage(self, name) -> None: ...
    def watch(self, optimizer) -> None: ...

    def phase(self, name: str):
        return contextlib.nullcontext()

    def batches(self, items: Iterable) -> Iterable:
        return items


def format_profile(report: dict[str, Any]) -> str:
    """Seconds per phase for each epoch and the final evaluation, then each phase's share of the wall time."""
    short = {"data": "data", "forward_backward": "fwd+bwd", "optimizer": "optim", "evaluation": "eval",
             "logging_checkpointing": "log+ckpt"}
    lines = [f"{'stage':<8}" + "".join(f"{short[p]:>10}" for p in PHASES) + f"{'sum':>10}"]
    for r in report["per_stage"]:
        lines.append(f"{str(r['stage']):<8}" + "".join(f"{r[p]:>10.2f}" for p in PHASES) + f"{sum(r[p] for p in PHASES):>10.2f}")
    t, sh = report["totals_s"], report["shares"]
    lines.append(f"{'total s':<8}" + "".join(f"{t[p]:>10.2f}" for p in PHASES) + f"{report['accounted_s']:>10.2f}")
    lines.append(f"{'share':<8}" + "".join(f"{sh[p]:>10.1%}" for p in PHASES) + f"{report['accounted_s'] / report['wall_s']:>10.1%}")
    lines.append(f"wall time {report['wall_s']:.2f} s (phases timed separately; sum / wall = share of the run accounted for)")
    if report["trace_dir"]:
        lines.append(f"torch.profiler trace: {report['trace_dir']} (tensorboard --logdir {report['trace_dir']}, torch-tb-profiler plugin)")
    return "\n".join(lines)
