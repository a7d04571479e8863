"""``bench``: the input pipeline against plain PIL, training steps against the model alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from domgen import cli_common as cc


def _side_by_side(r: dict, rows: list[tuple[str, str, str]]) -> list[str]:
    """One line per figure: idle, and beside it the same figure with ``--contention`` busy processes."""
    cond = r.get("contended")
    head = f"{'':<38}{'idle':>10}" + (f"{'%d busy' % cond['busy_processes']:>10}" if cond else "")
    lines = [head]
    for label, key, fmt in rows:
        lines.append(f"{label:<38}{format(r[key], fmt):>10}" + (f"{format(cond[key], fmt):>10}" if cond else ""))
    return lines


def cmd_bench(args: argparse.Namespace) -> int:
    from domgen.config import DataConfig, cache_dir
    from domgen.engine.logging import jsonable

    root = Path(args.root) if args.root else cache_dir(DataConfig()) / "bench"
    if args.what == "pipeline":
        from domgen.bench.pipeline import bench_pipeline

        r = bench_pipeline(root, workers=args.workers, quick=args.quick, device=args.device if args.device != "auto" else "cpu",
                           contention=args.contention)
        lines = _side_by_side(r, [("reference (PIL per image), batches/s", "reference_batches_per_s", ".2f"),
                                  ("domgen (cached + batched), batches/s", "cached_batches_per_s", ".2f"),
                                  ("ratio", "ratio", ".1f")])
        lines.append(f"cache build (one-off): {r['cache_build_s']:.1f} s")
    elif args.matrix:
        return _bench_matrix(args, root)
    else:
        from domgen.bench.train import bench_train

        r = bench_train(root, workers=args.workers, quick=args.quick, device=args.device, contention=args.contention,
                        arch=args.arch, precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                        algorithm=args.algorithm, **({"n_steps": args.steps} if args.steps else {}))
        name = r["algorithm"].upper()
        lines = _side_by_side(r, [(f"{name} steps/s with the full pipeline", "pipeline_steps_per_s", ".3f"),
                                  (f"{name} steps/s on device tensors", "model_only_steps_per_s", ".3f"),
                                  ("ratio", "ratio", ".2f")])
        lines.append(f"({r['precision']}{', channels_last' if r['channels_last'] else ''}{', compiled' if r['compiled'] else ''}, "
                     f"{r['arch']}, {r['batch_pairs']} {r['batch_unit']}/step)")
    if args.json:
        print(json.dumps(jsonable(r)))
    else:
        m = r.get("machine", r)
        print("\n".join(lines + [f"machine: {m['device']} ({m['device_name'] or 'CPU'}), {m['cpu_count']} CPUs "
                                 f"({m['usable_cores']} usable), {m['torch_threads']} torch threads, torch {m['torch']}"]))
        extra = {k: v for k, v in r.items() if ("rss" in k or "peak" in k) and v is not None}
        if extra:
            print("memory: " + ", ".join(f"{k} {v:.0f}" for k, v in extra.items()))
    return 0


def _bench_matrix(args: argparse.Namespace, root: Path) -> int:
    """``bench train --matrix``: each architecture x precision x memory format (x compiled), one line each."""
    from domgen.bench.train import bench_matrix
    from domgen.engine.logging import jsonable

    rows = bench_matrix(root, archs=tuple(args.archs.split(",")), compile=args.compile, workers=args.workers,
                        quick=args.quick, device=args.device, algorithm=args.algorithm,
                        **({"n_steps": args.steps} if args.steps else {}))
    if args.json:
        print(json.dumps(jsonable(rows)))
        return 0
    print(f"{'arch':<16}{'precision':<10}{'NHWC':<6}{'compiled':<10}{'pipeline':>10}{'model only':>12}{'ratio':>7}{'peak MB':>9}")
    for r in rows:
        peak = f"{r['peak_gpu_mem_mb']:.0f}" if r["peak_gpu_mem_mb"] is not None else "-"
        print(f"{r['arch']:<16}{r['precision']:<10}{'on' if r['channels_last'] else 'off':<6}{'yes' if r['compiled'] else 'no':<10}"
              f"{r['pipeline_steps_per_s']:>10.3f}{r['model_only_steps_per_s']:>12.3f}{r['ratio']:>7.2f}{peak:>9}")
    m = rows[0]
    print(f"steps/s of {m['algorithm'].upper()}, {m['batch_pairs']} {m['batch_unit']} per step; machine: {m['device']} ({m['device_name'] or 'CPU'}), torch {m['torch']}")
    return 0


def add_bench_parser(sub, description: str) -> None:
    be = sub.add_parser("bench", help="benchmarks: the input pipeline vs PIL, CCSA training steps vs model only",
                        description=description, formatter_class=cc.HelpFormatter)
    be.add_argument("what", choices=["pipeline", "train"], help="what to measure")
    be.add_argument("--quick", action="store_true", help="tiny sizes, seconds (for tests)")
    be.add_argument("--json", action="store_true", help="print the figures as JSON")
    be.add_argument("--workers", type=int, default=2, help="processes decoding images")
    be.add_argument("--steps", type=int, default=None, help="bench train: timed steps per measurement (default 30)")
    be.add_argument("--device", default="auto", help="auto | cpu | cuda")
    be.add_argument("--contention", type=int, default=0, metavar="N",
                    help="also measure beside N busy processes of our own (stopped at the end), reported next to idle")
    be.add_argument("--root", default=None, help="where the synthetic image tree goes (default: <cache>/bench)")
    be.add_argument("--arch", default="resnet18", help="bench train: the backbone")
    be.add_argument("--algorithm", default="ccsa", metavar="NAME",
                    help="bench train: the training algorithm at its defaults (`list algorithms`; default: the paper's CCSA)")
    be.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="bench train: auto = bf16 autocast on CUDA, fp32 elsewhere, as training does")
    be.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                    help="bench train: the model's memory format (auto = on for CUDA)")
    be.add_argument("--compile", action="store_true", help="bench train: run the backbone under torch.compile")
    be.add_argument("--matrix", action="store_true",
                    help="bench train: every --archs x precision (bf16, fp32) x channels_last (on, off), plus compiled "
                         "with --compile; steps/s, ratio and peak GPU memory per line")
    be.add_argument("--archs", default="resnet18", help="bench train --matrix: comma-separated backbones")
    be.set_defaults(func=cmd_bench)
