"""The ``ablate`` subcommand: parse, plan (:mod:`domgen.sweep.ablate`), launch like ``sweep``, then report
(:mod:`domgen.results.ablation`). Argument parsing and printing only; no torch at import (``--help``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from domgen import cli_common as cc


def add_ablate_parser(sub, description: str) -> None:
    ab = sub.add_parser("ablate", help="factorial ablation or random search over one row: cells x seeds, then effects",
                        formatter_class=cc.HelpFormatter, description=description)
    ab.add_argument("action", nargs="?", default="run", choices=["run", "status", "report"],
                    help="run what is not done then report; status: progress; report: the analysis of what is done")
    cc.add_data_options(ab)
    cc.add_study_option(ab)
    ab.add_argument("--exp", default=None, help="the row ablated (default: the study's ablation: block's, else its first row)")
    ab.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                    help="an axis of the grid, e.g. optim.lr=1e-3,1e-4 (repeatable; default: the study's ablation: axes)")
    ab.add_argument("--search", default=None, choices=["random"], help="instead of a grid: a random search over --space")
    ab.add_argument("--space", default=None, metavar="FILE.yaml",
                    help="search space: config key -> {log_uniform|uniform|int: [lo, hi]} or {choice: [...]}")
    ab.add_argument("--n-trials", type=int, default=20, help="--search: trials (trial i is the same whatever the count)")
    ab.add_argument("--search-seed", type=int, default=0, help="--search: seed of the trials' draws")
    ab.add_argument("--metric", default=None, help="the pre-registered metric (default: the study's ablation: metric, else macro_recall)")
    ab.add_argument("--seeds", default=None, help="a count (5 = seeds 0-4), a list (0,3,7) or a range (default: the study's, else 5)")
    ab.add_argument("--preset", default="paper", help="paper, quick or smoke (or the study's own presets)")
    ab.add_argument("--out", default="runs", help="folder that holds the run folders; reports go to <out>/ablations/")
    ab.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ab.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field in every run (repeatable)")
    cc.add_launch_options(ab)
    ab.set_defaults(func=cmd_ablate)


def _cells(args: argparse.Namespace, spec):
    from domgen.errors import ConfigError
    from domgen.sweep.grid import grid_cells, load_space, parse_axis, search_cells

    if args.search:
        if not args.space:
            raise ConfigError("--search random needs --space FILE.yaml (see experiments/spaces/)")
        if args.axis:
            raise ConfigError("give --axis (a grid) or --search (a random search), not both")
        return search_cells(load_space(args.space), args.n_trials, args.search_seed), "search"
    if args.axis:
        return grid_cells([parse_axis(a) for a in args.axis]), "grid"
    if spec is None:
        raise ConfigError(f"no axes: give --axis KEY=V1,V2 (repeatable) or an ablation: block in study {args.study}")
    return grid_cells(spec.axes), "grid"


def cmd_ablate(args: argparse.Namespace) -> int:
    from domgen.studies import load_study
    from domgen.sweep.ablate import plan_ablation, write_cells
    from domgen.sweep.launch import launch
    from domgen.sweep.report import format_plan, format_report, format_status, sweep_status

    study = load_study(args.study)
    spec = study.ablation
    cells, kind = _cells(args, spec)
    exp = args.exp or (spec.exp if spec else study.experiments.names()[0])
    seeds = cc.parse_seeds(args.seeds or (spec.seeds if spec else "5"))
    metric = args.metric or (spec.metric if spec else "macro_recall")
    overrides = cc.data_overrides(args) + [f"device={args.device}"] + list(args.set)
    ab = plan_ablation(cells, exp, seeds, args.preset, overrides, args.out, study,
                       meta={"metric": metric, "kind": kind, "search_seed": args.search_seed if kind == "search" else None})
    cells_file = write_cells(ab)
    cc.say(f"{kind} of {study.name} row {exp}: {len(cells)} cells x {len(ab.runs[cells[0]])} seeds = "
           f"{sum(len(r) for r in ab.runs.values())} runs; cells in {cells_file}")
    if args.action == "status":
        print(format_status(sweep_status(ab.plan)))
        return 0
    if args.action == "run":
        if args.dry_run:
            print(format_plan(ab.plan))
        report = launch(ab.plan, args.launcher, retry_failed=args.retry_failed, dry_run=args.dry_run,
                        max_parallel=args.max_parallel, slurm=cc.slurm_options(args))
        print(format_report(report))
        if args.dry_run or args.launcher == "slurm":
            cc.say("when the runs are done: python -m domgen.run ablate report with the same options")
            return 0
    return _report(ab, cells_file, metric)


def _report(ab, cells_file: Path, metric: str) -> int:
    from domgen.results.ablation import analyse
    from domgen.results.ablation_report import write_report
    from domgen.results.collect import collect
    from domgen.sweep.ablate import read_cells

    doc = read_cells(cells_file)
    df = collect(ab.plan.out, stages=("train", "val", "final"), splits=("train", "val", "test"))
    res = analyse(doc, df, metric)
    mine = df[df["run_dir"].map(lambda p: Path(p).name).isin(set(res.long["run"]))] if len(res.long) else df.iloc[:0]
    synthetic = bool(len(mine)) and bool(mine["synthetic"].fillna(False).astype(bool).all())
    paths = write_report(res, doc, ab.folder, synthetic)
    from domgen.results.ablation_report import format_summary

    print(format_summary(res, doc, synthetic))
    cc.say(f"wrote {len(paths)} files to {ab.folder}: " + ", ".join(p.name for p in paths))
    return 0
