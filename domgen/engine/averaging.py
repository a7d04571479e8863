"""Weight averaging on top of any algorithm (``average.name``): EMA, SMA and SWAD.

The trainer calls :meth:`Averager.update` after every optimiser step (``train_epoch``'s ``on_step``), so
an average never asks which algorithm trained the weights. What each one evaluates:

* ``ema``: the exponential moving average of the weights, e_1 = w_1 and e_t = d e_{t-1} + (1 - d) w_t
  (decay d = ``average.decay``; torch's ``get_ema_multi_avg_fn``). Buffers (BatchNorm's running
  statistics) are copied from the trained model after each step, not averaged.
* ``sma``: the simple (uniform) moving average of Arpit et al., NeurIPS 2022, "Ensemble of Averages"
  (Eq. 1; DomainBed's ERM_SMA / ERMPlusPlus ``update_sma``): before ``average.start_epoch`` epochs have
  passed it is the current weights; from then on the arithmetic mean of the weights after every step,
  the last pre-start weights included as Eq. 1 includes w_{t0} (with ``start_epoch`` 0 there is no
  pre-start step, so the mean starts at w_1). Buffers are copied as for EMA; DomainBed instead averages
  the running statistics (ERM_SMA) or refreshes them by forwarding each batch through the average
  (ERM++), both approximations of the statistics of averaged weights.
* ``swad``: SWAD (Cha et al., NeurIPS 2021, Sec. 3.3 and Alg. 1; khanrc/swad ``swad.py`` LossValley):
  dense (every-step) averaging over the window of low validation loss. domgen validates once per epoch,
  so a *segment* is one epoch: its dense average is evaluated on the training domains' validation splits
  (mean over domains of the mean cross-entropy, SWAD's ``tr_outloss``) and :func:`loss_valley` decides
  the window; the SWAD model is the uniform average of the window's segments, with BatchNorm statistics
  recomputed on training batches (``update_bn``) before it is evaluated. During training, validation and
  model selection use the trained weights as usual; the final evaluation uses the SWAD model.

    Deviations from khanrc/swad, and why: (1) SWAD stops training when the valley is dead; domgen trains
    the configured epochs (the record stays comparable) and leaves the window closed. (2) The reference
    code adds the convergence segment more than once (at convergence, again via ``Q[start_idx + 1:]``
    and again when it reaches the front of the smoothing queue) and skips the first segment of the
    look-back; here every segment of the window counts once, as the paper's uniform average says.
    (3) A segment's buffers are the trained model's at the segment's end (the reference keeps those of
    its start); only its parameters are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from domgen.config import AverageConfig


def copy_buffers(target: nn.Module, source: nn.Module) -> None:
    """``target``'s buffers (running statistics, BatchNorm's step counters) := ``source``'s."""
    with torch.no_grad():
        for b_target, b_source in zip(target.buffers(), source.buffers(), strict=True):
            b_target.copy_(b_source)


def domain_mean_cross_entropy(probs: np.ndarray, y: np.ndarray, domains: np.ndarray) -> float:
    """Mean over domains of each domain's mean cross-entropy, from softmax probabilities [N, K] (SWAD's
    ``tr_outloss``: every training domain's validation loss counts equally, whatever its size)."""
    if len(y) == 0:
        return float("nan")
    p = np.clip(probs[np.arange(len(y)), y].astype(np.float64), np.finfo(np.float32).tiny, None)
    nll = -np.log(p)
    return float(np.mean([nll[domains == d].mean() for d in np.unique(domains)]))


# ---- SWAD's window rule (LossValley), as a function of the segments' validation losses ---------------
@dataclass(frozen=True)
class Valley:
    """What the validation losses of segments 0..n-1 say so far (segment indices, 0-based).

    ``converged``: the first segment c whose loss is the minimum of the n_converge segments from it on
    (None: not yet); ``threshold``: (1 + tolerance_ratio) x their mean loss; ``start``..``end``: the
    segments known to be in the window; ``dead``: n_tolerance segments in a row above the threshold
    after ``end``, so the window is closed."""

    converged: int | None = None
    threshold: float | None = None
    start: int | None = None
    end: int | None = None
    dead: bool = False


def loss_valley(losses: list[float], n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3) -> Valley:
    """SWAD's LossValley rule on per-segment validation losses (khanrc/swad ``swad.py``):

    * convergence at the first t >= n_converge - 1 where argmin(losses[t-n_converge+1 .. t]) is the oldest
      of them (ties: the oldest, as ``np.argmin``); c = that oldest segment;
    * start: from c back over the smoothing window (at most n_tolerance - n_converge segments), as long
      as the losses stay <= threshold;
    * end: segment j > c is in the window when some loss among losses[j .. j + n_tolerance - 1] (those
      seen so far) is <= threshold, and the window closes (dead valley) at the first j whose
      n_tolerance losses are all above it. So the end is the last segment at or below the threshold
      before the first run of n_tolerance segments above it.
    """
    n = len(losses)
    c = next((t - n_converge + 1 for t in range(n_converge - 1, n)
              if int(np.argmin(losses[t - n_converge + 1 : t + 1])) == 0), None)
    if c is None:
        return Valley()
    threshold = float(np.mean(losses[c : c + n_converge])) * (1.0 + tolerance_ratio)
    start, lo = c, max(0, c - (n_tolerance - n_converge))
    while start > lo and losses[start - 1] <= threshold:
        start -= 1
    end, above = c, 0
    for j in range(c + 1, n):
        if losses[j] <= threshold:
            end, above = j, 0
        else:
            above += 1
            if above == n_tolerance:
                return Valley(c, threshold, start, end, dead=True)
    return Valley(c, threshold, start, end)


def final_window(losses: list[float], n_converge: int = 3, n_tolerance: int = 6, tolerance_ratio: float = 0.3) -> tuple[int, int]:
    """The segments (first, last; inclusive, 0-based) the SWAD model averages once training ends: the
    valley's window, or the last segment alone when the losses never converged (the reference's
    ``get_final_model`` then returns the last segment's average)."""
    v = loss_valley(losses, n_converge, n_tolerance, tolerance_ratio)
    if v.converged is None:
        return len(losses) - 1, len(losses) - 1
    return v.start, v.end


# ---- the averagers -------------------------------------------------------------------------------
class Averager:
    """``average.name = none``: the trained model is the evaluated one; nothing is kept."""

    final_model = False  # True when :meth:`finish` gives the model the final evaluation uses (SWAD)

    def __init__(self, cfg: AverageConfig, model: nn.Module):
        self.cfg = cfg
        self.epoch = 0

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # 0-based

    def update(self, model: nn.Module) -> None:
        """After every optimiser step of ``model``."""

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The weights that per-epoch validation, model selection and ``best.pt`` use."""
        return model

    def end_epoch(self, epoch: int, model: nn.Module, val_loss: Callable[[nn.Module], float]) -> dict[str, float]:
        """After epoch ``epoch`` (0-based) was validated; returns values to record with the epoch."""
        return {}

    def finish(self, model: nn.Module, bn_batches: Callable[[], Iterable]) -> nn.Module | None:
        """The model the final evaluation uses when it is not the selected epoch's (SWAD's), else None."""
        return None

    def summary(self) -> dict[str, Any]:
        """What the done marker and the final rows say about the average."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EMA(Averager):
    def __init__(self, cfg: AverageConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.decay), use_buffers=False)

    def update(self, model: nn.Module) -> None:
        self.avg.update_parameters(model)  # the first call copies: e_1 = w_1
        copy_buffers(self.avg.module, model)

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.avg.module

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.avg.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg.load_state_dict(state["averaged"])


class SMA(EMA):
    def __init__(self, cfg: AverageConfig, model: nn.Module):
        Averager.__init__(self, cfg, model)
        self.avg = AveragedModel(model, use_buffers=False)  # uniform running mean (lerp by 1 / (n + 1))

    def update(self, model: nn.Module) -> None:
        if self.epoch < self.cfg.start_epoch:
            self.avg.n_averaged.zero_()  # not started: the next update copies the current weights
        super().update(model)


class SWAD(Averager):
    """Segments are epochs. ``segment``: the dense average of the current epoch's steps; ``window``: the
    uniform average of the segments committed to the window so far; ``pending``: segment averages (on
    the CPU) that the losses to come may still put in the window: before convergence the last
    n_tolerance - 1 (the look-back can reach n_tolerance - n_converge segments before the convergence
    segment, found n_converge - 1 epochs after it), afterwards those above the threshold since the
    window's end (at most n_tolerance - 1, or the valley is dead). They travel in ``last.pt``: up to five
    model copies with the default rule."""

    final_model = True

    def __init__(self, cfg: AverageConfig, model: nn.Module):
        super().__init__(cfg, model)
        self.segment = AveragedModel(model, use_buffers=False)
        self.window = AveragedModel(model, use_buffers=False)
        self.losses: list[float] = []
        self.pending: dict[int, dict[str, torch.Tensor]] = {}
        self.committed = -1  # the last segment in ``window``
        self.closed = False  # the valley is dead: nothing more joins the window

    def _rule(self) -> dict[str, Any]:
        c = self.cfg
        return {"n_converge": c.n_converge, "n_tolerance": c.n_tolerance, "tolerance_ratio": c.tolerance_ratio}

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.segment.n_averaged.zero_()  # a new segment: its first update copies

    def update(self, model: nn.Module) -> None:
        if not self.closed:
            self.segment.update_parameters(model)

    def end_epoch(self, epoch: int, model: nn.Module, val_loss: Callable[[nn.Module], float]) -> dict[str, float]:
        if self.closed:
            return {}
        copy_buffers(self.segment.module, model)
        loss = float(val_loss(self.segment.module))
        self.losses.append(loss)
        i = len(self.losses) - 1
        self.pending[i] = {k: v.detach().to("cpu", copy=True) for k, v in self.segment.module.state_dict().items()}
        v = loss_valley(self.losses, **self._rule())
        if v.converged is None:
            # a convergence found later has c >= i + 2 - n_converge and looks back n_tolerance - n_converge
            # from it at most; the last segment is the model if it never converges
            keep = min(i, i + 2 - max(self.cfg.n_tolerance, self.cfg.n_converge))
            self.pending = {j: s for j, s in self.pending.items() if j >= keep}
        else:
            for j in range(max(v.start, self.committed + 1), v.end + 1):
                self._commit(j)
            self.pending = {j: s for j, s in self.pending.items() if j > self.committed}
            if v.dead:
                self.closed, self.pending = True, {}
        return {"swad_val_loss": loss}

    def _commit(self, j: int) -> None:
        scratch = self.segment.module  # done with this epoch's segment: lend its module
        scratch.load_state_dict(self.pending.pop(j))
        self.window.update_parameters(scratch)
        copy_buffers(self.window.module, scratch)
        self.committed = j

    def window_epochs(self) -> list[int]:
        """The averaged epochs, 1-based as the result rows count them."""
        if not self.losses:
            return []
        first, last = final_window(self.losses, **self._rule())
        return list(range(first + 1, last + 2))

    def finish(self, model: nn.Module, bn_batches: Callable[[], Iterable]) -> nn.Module:
        first, last = final_window(self.losses, **self._rule())
        if self.committed < first:  # never converged: the last segment alone
            self.window.n_averaged.zero_()
            self._commit(last)
        update_bn(bn_batches(), self.window.module)  # statistics of the averaged weights, not of any step's
        return self.window.module

    def summary(self) -> dict[str, Any]:
        return {"average_epochs": self.window_epochs()}

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict(), "losses": list(self.losses), "committed": self.committed,
                "closed": self.closed, "pending": {str(j): s for j, s in self.pending.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state["window"])
        self.losses, self.committed, self.closed = list(state["losses"]), state["committed"], state["closed"]
        self.pending = {int(j): {k: v.to("cpu") for k, v in s.items()} for j, s in state["pending"].items()}


AVERAGERS: dict[str, type[Averager]] = {"none": Averager, "ema": EMA, "sma": SMA, "swad": SWAD}


def make_averager(cfg: AverageConfig, model: nn.Module) -> Averager:
    """The averager ``cfg.name`` names, keeping its copies of ``model`` (deep copies made now: build it
    before an algorithm attaches hooks to the model, so that the copies evaluate without them)."""
    return AVERAGERS[cfg.name](cfg, model)
