"""What a run leaves behind: append-only ``results.jsonl``, TensorBoard events (scalars, confusion matrices,
hparams, the test features' projector) and the ``done`` marker.

Tables and plots read ``results.jsonl`` alone; each line describes itself (experiment, seed, data,
epoch, split, domain, every metric), so no other file is needed to build Table 2.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domgen.atomic import write_text_atomic
from domgen.data.labels import CLASSES

RESULTS = "results.jsonl"
DONE = "done"


def jsonable(obj: Any) -> Any:
    """Copy of ``obj`` that ``json.dumps`` accepts with strict JSON: NaN/inf -> None, numpy -> Python.

    Recurses into mappings, lists, tuples and arrays; mapping keys become strings.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def append_results(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Append one JSON line per evaluation; flushed and fsynced so a killed run loses nothing written."""
    with open(Path(run_dir) / RESULTS, "a") as f:
        for row in rows:
            f.write(json.dumps(jsonable(row), sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill mid-write: skip it, keep the rest
                continue
    return rows


def truncate_results(run_dir: Path, after_epoch: int) -> None:
    """On resume, drop lines written after the checkpoint's epoch (they will be written again)."""
    rows = [r for r in read_results(run_dir) if r.get("epoch", -1) <= after_epoch and r.get("stage") != "final"]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_text_atomic(Path(run_dir) / RESULTS, text)


def write_done(run_dir: Path, final: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / DONE, json.dumps(jsonable(final), indent=2) + "\n")


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / DONE).exists()


class TensorBoard:
    """Thin wrapper: scalars, figures, hparams and embeddings, or nothing when disabled."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        clean = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.writer.add_hparams(hp, clean, run_name=".")

    def embedding(self, features, metadata: list[list[str]], header: list[str], step: int) -> None:
        if self.writer is not None:
            self.writer.add_embedding(features, metadata=metadata, metadata_header=header, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_final(tb: TensorBoard, rows: list[dict], cms: dict, embed: tuple, classes: Sequence[str], hparams: dict[str, Any],
              title: str, step: int) -> None:
    """The end of a run in TensorBoard: each domain's test confusion matrix, the hparams against each
    domain's test macro recall, and up to 2,000 test features (a fixed draw) in the projector, labelled by
    domain, class and both. ``embed`` is (features or None, labels, domains, splits) per evaluated image."""
    for (split, domain), cm in cms.items():
        if split == "test":
            tb.figure(f"confusion/{domain}", confusion_figure(cm, classes, f"{title} {domain} test"), step)
    tb.hparams(hparams, {f"test/{r['domain']}": r["macro_recall"] for r in rows if r["split"] == "test"})
    import torch  # the projector takes a tensor; this module imports torch only when a run logs

    feats, y, doms, spl = embed
    if feats is not None and len(feats):
        test = np.flatnonzero(spl == "test")  # the projector shows test features only
        keep = test[np.random.default_rng(0).permutation(len(test))[:2000]]
        meta = [[str(doms[i]), classes[y[i]], f"{doms[i]}/{classes[y[i]]}"] for i in keep]
        tb.embedding(torch.from_numpy(feats[keep]), meta, ["domain", "class", "domain_class"], step)


def confusion_figure(cm: np.ndarray, classes: Sequence[str] = CLASSES, title: str = ""):
    """Matplotlib Figure of a confusion matrix for TensorBoard (``SummaryWriter.add_figure``).

    Rows are true classes, columns predictions; each cell shows its count, and colour is the row-
    normalised rate (recall on the diagonal), so small and large classes read alike. Built on the
    Agg canvas without pyplot: no GUI backend, no global figure state to leak.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    support = cm.sum(axis=1, keepdims=True)  # (K, 1); absent classes keep a blank row
    rate = np.divide(cm, support, out=np.zeros(cm.shape, dtype=np.float64), where=support > 0)
    k = len(classes)
    fig = Figure(figsize=(1.0 + 0.7 * k, 0.6 + 0.7 * k))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row-normalised rate")
    for i in range(k):
        for j in range(k):
            colour = "white" if rate[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
