"""Learning-rate schedules by name (``optim.schedule``), all from ``torch.optim.lr_scheduler``.

Every schedule steps ONCE PER EPOCH, after the epoch's last optimiser step: the learning rate an epoch trains
with is a function of the epoch alone, so a run resumed at an epoch boundary (``last.pt`` holds the
scheduler's and the optimiser's state) continues on exactly the uninterrupted curve, and ``train_lr`` in
results.jsonl is the epoch's rate. Each rate is a factor on every parameter group's own base rate, so the
groups of a regime (layer-wise rates) keep their ratios.

* ``step`` (default; Yoon et al. 2019): ``lr_e = lr * gamma^floor(e / lr_step)`` (``StepLR``, as before).
* ``constant``: ``lr_e = lr`` (``ConstantLR`` with factor 1).
* ``cosine`` (Loshchilov & Hutter, ICLR 2017, eq. 5, one cycle without restarts): ``lr_e = min_lr +
  (lr - min_lr) (1 + cos(pi e / E)) / 2`` over the E = ``optim.epochs`` epochs (``CosineAnnealingLR``).
* ``warmup_cosine`` (Goyal et al. 2017's linear warmup, then the cosine): for e < W = ``optim.warmup_epochs``,
  ``lr_e = lr (e + 1) / (W + 1)`` (``LinearLR``, never 0, reaching lr at e = W); then the cosine above over
  the remaining E - W epochs, ``e - W`` in place of e (``SequentialLR``).
* ``onecycle`` (Smith & Topin 2019; ``OneCycleLR`` with torch's defaults: pct_start 0.3, cosine annealing,
  div_factor 25, final_div_factor 1e4, momentum not cycled so AdamW's betas stay as set): over E steps, one
  per epoch, from lr/25 up to lr at step 0.3 E - 1 and down to lr/25/1e4 at the last epoch. With fewer than
  4 epochs the peak step is below 0 and training starts on the way down (torch's arithmetic, kept).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import lr_scheduler as S

from domgen.config import SCHEDULES

# OneCycleLR's own defaults, named so the docstring and the tests agree with the code
ONECYCLE = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}


class Schedule:
    """The run's schedule: :meth:`step` after every epoch; state saved and resumed with the checkpoint."""

    def __init__(self, name: str, scheduler: S.LRScheduler, last: int | None = None):
        self.name, self.scheduler, self.last = name, scheduler, last

    def step(self) -> None:
        # OneCycleLR refuses a step beyond its total: the step after the final epoch (the trainer steps after
        # every epoch) is skipped, so the last epoch trains with the cycle's final rate.
        if self.last is not None and self.scheduler.last_epoch >= self.last:
            return
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def make_schedule(optimizer: torch.optim.Optimizer, optim) -> Schedule:
    """The schedule ``optim.schedule`` names (an ``OptimConfig``) on ``optimizer``'s groups."""
    name, epochs = optim.schedule, optim.epochs
    if name == "step":
        return Schedule(name, S.StepLR(optimizer, step_size=optim.lr_step, gamma=optim.lr_gamma))
    if name == "constant":
        return Schedule(name, S.ConstantLR(optimizer, factor=1.0, total_iters=0))
    if name == "cosine":
        return Schedule(name, S.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=optim.min_lr))
    if name == "warmup_cosine":
        w = optim.warmup_epochs
        warm = S.LinearLR(optimizer, start_factor=1.0 / (w + 1), end_factor=1.0, total_iters=w)
        cos = S.CosineAnnealingLR(optimizer, T_max=epochs - w, eta_min=optim.min_lr)
        return Schedule(name, S.SequentialLR(optimizer, [warm, cos], milestones=[w]))
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        sched = S.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs, cycle_momentum=False, **ONECYCLE)
        return Schedule(name, sched, last=epochs - 1)
    raise ValueError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")

