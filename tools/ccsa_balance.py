"""Does CCSA raise the classification loss above its warm start? For every finished CCSA run under RUNS
(default: experiment K), the classification term (L_C1 + L_C2, weighted) of the warm-start model over one
full epoch of the run's own pairs, against the epoch means the run logged (results.jsonl ``train_cls``).

    python tools/ccsa_balance.py RUNS [--exp K]

A person runs this; the package never imports it. It needs the warm start's checkpoint beside the run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from domgen.config import load_yaml
from domgen.engine.logging import read_results
from domgen.data.run_data import prepare_data
from domgen.runs.sampler_report import warm_start_terms


def balance(run_dir: Path) -> dict:
    cfg = load_yaml(run_dir / "config.yaml")
    data = prepare_data(cfg.data)
    n_batches = math.ceil(len(data.pool) / cfg.optim.batch_size)
    ws = warm_start_terms(cfg, data, n_batches)
    if "cls" not in ws:
        raise SystemExit(f"{run_dir}: {ws['status']}")
    rows = [r for r in read_results(run_dir) if r.get("stage") == "train"]
    epochs = [r["train_cls"] for r in sorted(rows, key=lambda r: r["epoch"])]
    return {"run": run_dir.name, "seed": cfg.seed, "warm_cls": ws["cls"] / (1 - cfg.algorithm.alpha), "epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--exp", default="K")
    args = ap.parse_args()
    print("seed  warm start cls | epoch means of cls (L_C1 + L_C2) | max / warm start")
    for run_dir in sorted(args.runs.glob(f"{args.exp}-s*-*")):
        if not (run_dir / "done").exists():
            continue
        b = balance(run_dir)
        worst = max(b["epochs"]) / b["warm_cls"]
        print(f"{b['seed']:>4}  {b['warm_cls']:14.3f} | " + " ".join(f"{v:.3f}" for v in b["epochs"]) + f" | {worst:.2f}")


if __name__ == "__main__":
    main()
