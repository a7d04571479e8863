"""What a run leaves behind: append-only ``results.jsonl``, TensorBoard events and the ``done`` marker.

Tables and plots read ``results.jsonl`` alone; each line describes itself (experiment, seed, data,
epoch, split, domain, every metric), so no other file is needed to build Table 2.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from domgen.config import write_atomic
from domgen.engine.metrics import jsonable

RESULTS = "results.jsonl"
DONE = "done"


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
    write_atomic(Path(run_dir) / RESULTS, text)


def write_done(run_dir: Path, final: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / DONE, json.dumps(jsonable(final), indent=2) + "\n")


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
