"""``sweep``: experiments x seeds (x algorithms, hyperparameter trials, folds), here or on Slurm."""

from __future__ import annotations

import argparse

from domgen import cli_common as cc

parse_seeds = cc.parse_seeds


def cmd_sweep(args: argparse.Namespace) -> int:
    from domgen.sweep.launch import launch
    from domgen.studies import load_study
    from domgen.sweep.plan import (algorithm_variants, cross_variants, holdout_variants, parse_exps, plan_sweep,
                                   split_variants)
    from domgen.sweep.report import format_plan, format_report, format_status, other_runs_line, sweep_status

    cc.amend_protocol(args)
    seeds = parse_seeds(args.seeds)
    overrides = cc.data_overrides(args) + [f"device={args.device}"] + list(args.set)
    exps, held = args.exps, [()]
    if args.holdout and args.exps == "all":  # the study's leave-one-out rows (yoon2019: O-T), like `loo --holdout`
        from domgen.runs.loo import loo_experiments

        exps = sorted({e for h in args.holdout.split(",") for e in loo_experiments(h.strip(), args.study)})
    elif args.holdout:  # the given rows, once per held-out domain (data the study has no such rows for)
        from domgen.runs.registry import resolve_config

        first = parse_exps(args.exps, load_study(args.study))[0]
        held = holdout_variants(args.holdout, resolve_config(first, args.preset, 0, overrides, args.study).data)
    split_seeds = cc.seed_list(args.split_seeds) if args.split_seeds is not None else None
    variants = cross_variants(algorithm_variants(args.algorithms, args.hparams, args.n_hparams), held,
                              split_variants(args.folds, split_seeds))
    plan = plan_sweep(exps, seeds, args.preset, overrides, out=args.out, study=args.study, variants=variants)
    if args.action == "status":
        jobs = sweep_status(plan)
        print(format_status(jobs) + (other_runs_line(jobs, args.out) or ""))
        return 0
    slurm = cc.slurm_options(args)
    if args.dry_run:
        print(format_plan(plan))
    report = launch(plan, args.launcher, retry_failed=args.retry_failed, dry_run=args.dry_run, max_parallel=args.max_parallel, slurm=slurm)
    print(format_report(report))
    if not args.dry_run:
        print(format_status(sweep_status(plan)))
    return 0


def add_sweep_parser(sub, description: str) -> None:
    sw = sub.add_parser("sweep", help="experiments x seeds, locally or on Slurm (submitit); `sweep status` for progress",
                        formatter_class=cc.HelpFormatter, description=description)
    sw.add_argument("action", nargs="?", default="run", choices=["run", "status"], help="run what is not done, or show progress")
    cc.add_data_options(sw)
    cc.add_study_option(sw)
    sw.add_argument("--exps", default="all", help="the study's rows: all, or ranges and lists in file order: A-V, F-K,U, A,K,R")
    sw.add_argument("--holdout", default=None, metavar="DOMAINS",
                    help="alone: the study's leave-one-out rows holding out these domains (PH2,SON), or all (yoon2019: "
                         "O-T); with --exps: each of those rows once per held-out domain (data.holdout=D), for data "
                         "without such rows, e.g. --exps E --holdout all on a DomainBed folder (all: every domain but "
                         "the primary)")
    sw.add_argument("--algorithms", default=None, metavar="A,B,...",
                    help="train each row with each of these algorithms (`list algorithms`) instead of the row's own, e.g. erm,coral,ccsa")
    sw.add_argument("--hparams", default="default", choices=["default", "random"],
                    help="random: a DomainBed-style search, --n-hparams trials per algorithm (trial 0 = the defaults) over "
                         "the algorithm's and the regime's (regime.*) searched hyperparameters, each its own hashed, "
                         "resumable run; `table --selection` picks among them")
    sw.add_argument("--n-hparams", type=int, default=8, help="--hparams random: trials per algorithm")
    sw.add_argument("--seeds", default="5", help="a count (5 = seeds 0-4), a list (0,3,7), a range (2-4) or one seed (2,)")
    sw.add_argument("--folds", type=int, default=0, metavar="K",
                    help="train on each fold of a stratified group K-fold split (data.folds/data.fold) x seeds; 0 = the study's split")
    sw.add_argument("--split-seeds", default=None, metavar="SEEDS",
                    help="repeat on these data splits (data.split_seed), like --seeds: 0,1 or 2 (= 0-1); default: the config's own")
    sw.add_argument("--preset", default="paper", help="paper (needs ImageNet weights), quick or smoke")
    sw.add_argument("--amend", default=None, metavar="REASON",
                    help="the study's protocol was edited after runs exist: record why (logged with the time in "
                         "<out>/.protocol/) instead of refusing; see `protocol`")
    sw.add_argument("--out", default="runs", help="folder that holds the run folders")
    sw.add_argument("--device", default="auto", help="auto | cpu | cuda")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field in every run (repeatable)")
    cc.add_deterministic_option(sw)
    cc.add_launch_options(sw)
    sw.set_defaults(func=cmd_sweep)
