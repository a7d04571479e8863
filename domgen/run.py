"""The command line: ``python -m domgen.run <command>``. Subcommands -> typed config -> one driver call.

This is the only module (with ``cli_common``) that parses arguments or prints.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from domgen import cli_common as cc


def cmd_summary(args: argparse.Namespace) -> int:
    from domgen.config import DataConfig, apply_overrides
    from domgen.data.catalog import dropped_report, load_catalog, summary_table

    cfg = cc.data_config(cc.data_overrides(args) + args.set)
    catalog = load_catalog(cfg, bar=cc.cli_hooks().bar, verify=args.verify)
    what = f"synthetic benchmark at {catalog.root}" if catalog.synthetic else f"data root {catalog.root}"
    if args.json:  # stdout stays pure JSON; the data line goes to stderr
        print(f"data: {what}", file=sys.stderr)
        counts = catalog.counts()
        print(json.dumps({d: {c: int(counts.loc[d, c]) for c in catalog.classes} for d in counts.index}))
        return 0
    table = summary_table(catalog)
    cc.say(f"data: {what}")
    cc.say(table.to_string())
    for line in dropped_report(catalog):
        cc.say(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv")
    header = f"Data: {'synthetic' if catalog.synthetic else catalog.root}\n\n"
    (out / "summary.md").write_text(header + table.to_markdown() + "\n\n" + "\n".join(f"- {l}" for l in dropped_report(catalog)) + "\n")
    cc.say(f"wrote {out / 'summary.csv'} and {out / 'summary.md'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from domgen.engine.profile import RunProfile, format_profile
    from domgen.runs.train import run_train

    _amend(args)
    cfg = cc.build_config(args)
    cc.check_weights(cfg)
    hooks = cc.cli_hooks()
    if args.profile:
        hooks.profile = RunProfile()
    result = run_train(cfg, hooks, **cc.folder_options(args))
    s = result.summary
    cc.say(f"run: {result.run_dir} (best epoch {s['best_epoch']}, validation score {s['best_val_score']:.2f})")
    cc.say("test macro recall: " + "  ".join(f"{d} {v:.1f}" for d, v in s["test_macro_recall"].items()))
    if args.profile and not result.skipped:
        cc.say(format_profile(hooks.profile.report()))
        cc.say(f"wrote {result.run_dir / 'profile.json'}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``train --profile --force`` into its own folder (default runs/profile), so real runs are untouched."""
    args.profile, args.force = True, True
    return cmd_train(args)


def parse_count(text: str) -> int:
    """``8.5M`` -> 8500000; also k/K, G and plain numbers (``8500000``, ``8.5e6``)."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        return int(round(float(text[:-1] if scale != 1.0 else text) * scale))
    except ValueError:
        raise ValueError(f"expected a parameter count such as 8.5M or 8500000, got {text!r}") from None


def cmd_prune(args: argparse.Namespace) -> int:
    from domgen.runs.prune import run_prune

    if args.threshold is not None:
        args.set.append(f"prune.threshold={args.threshold}")
    from domgen.runs.registry import study_of

    _amend(args)
    cfg = cc.build_config(args)
    if study_of(cfg).experiments.get(cfg.exp).driver != "prune":
        raise ValueError(f"prune runs the study's pruning rows (driver: prune; yoon2019: U and V), not {cfg.exp}")
    if args.thresholds or args.target_params:
        return _prune_curve(args, cfg)
    cc.check_weights(cfg)
    result = run_prune(cfg, cc.cli_hooks(), **cc.folder_options(args))
    s = result.summary
    cc.say(f"run: {result.run_dir}: {s['params_before'] / 1e6:.2f}M -> {s['params'] / 1e6:.2f}M parameters, "
           f"{s['macs_before'] / 1e9:.3f} -> {s['macs'] / 1e9:.3f} GMACs at {cfg.transform.size}px")
    cc.say("channels kept: " + ", ".join(f"{k.replace('g.', '').replace('.conv1', '')} {v}" for k, v in s["channels_kept"].items()))
    cc.say("test macro recall: " + "  ".join(f"{d} {v:.1f}" for d, v in s["test_macro_recall"].items()))
    return 0


def _prune_curve(args: argparse.Namespace, cfg) -> int:
    from domgen.runs.prune_curve import DEFAULT_THRESHOLDS, run_prune_curve

    thresholds = [float(t) for t in args.thresholds.split(",") if t] if args.thresholds else list(DEFAULT_THRESHOLDS)
    target = parse_count(args.target_params) if args.target_params else None
    r = run_prune_curve(cfg, thresholds, target, refine=args.refine, hooks=cc.cli_hooks())
    cc.say(f"DCP before fine-tuning, {cfg.exp} s{cfg.seed} ({cfg.preset}); unpruned: {r.params_before / 1e6:.2f}M parameters, "
           f"{r.macs_before / 1e9:.3f} GMACs at {cfg.transform.size}px, validation macro recall {r.recall_before:.1f}")
    cc.say(f"{'threshold':>10} {'params (M)':>11} {'GMACs':>8} {'val macro recall':>17}")
    for row in r.rows:
        mark = "  <- chosen" if r.chosen is not None and row["threshold"] == r.chosen["threshold"] else ""
        cc.say(f"{row['threshold']:>10.3g} {row['params'] / 1e6:>11.3f} {row['macs'] / 1e9:>8.4f} {row['val_macro_recall']:>17.1f}{mark}")
    if r.chosen is not None:
        c = r.chosen
        cc.say(f"largest model within {target / 1e6:.3g}M parameters: threshold {c['threshold']:.4g} ({c['params'] / 1e6:.3f}M); "
               f"prune and fine-tune it with: python -m domgen.run prune --exp {cfg.exp} --preset {cfg.preset} --threshold {c['threshold']:.6g}")
    cc.say(f"wrote {r.out_dir / 'curve.csv'}, curve.json and curve.png")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from domgen.export import export_model

    r = export_model(args.run, args.format, out_dir=args.out)
    cc.say(f"wrote {r.model_path} ({r.file_bytes / 1e6:.2f} MB) and {r.preprocessing_path}")
    cc.say(f"{'pruned' if r.pruned else 'unpruned'} model: {r.params / 1e6:.3f}M parameters, {r.macs / 1e9:.4f} GMACs; "
           f"outputs match PyTorch (max |diff| {r.max_abs_diff:.2g}); CPU latency {r.latency_ms:.2f} ms per image ({r.threads} thread{'s' if r.threads != 1 else ''})")
    return 0


def cmd_loo(args: argparse.Namespace) -> int:
    from domgen.runs.loo import format_loo, loo_experiments, run_loo

    _amend(args)
    overrides = cc.data_overrides(args) + [f"out={args.out}", f"device={args.device}"] + list(args.set)
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.algorithm:  # in place of the study row's (CCSA): warm-started from A the same way
        overrides.append(f"algorithm.name={args.algorithm}")
        args.set = [*args.set, f"algorithm.name={args.algorithm}"]
    cc.check_weights(cc.build_config(args, exp=loo_experiments(args.holdout, args.study)[0]))
    results = run_loo(args.holdout, args.preset, args.seed, overrides, cc.cli_hooks(), study=args.study, **cc.folder_options(args))
    cc.say(format_loo(results))
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from domgen.runs.similarity import format_comparison, plot_comparison, run_similarity

    metrics = tuple(m.strip() for m in args.metric.split(",") if m.strip())
    c = run_similarity(Path(args.run_a), Path(args.run_b) if args.run_b else None, vs_init=args.vs_init, metrics=metrics,
                       layers=args.layers, n_probe=args.probe, seed=args.probe_seed, device=args.device, conv=args.conv)
    cc.say(format_comparison(c))
    against = "init" if args.vs_init else Path(args.run_b).name
    plot = plot_comparison(c, Path(args.plot) if args.plot else Path(args.run_a) / f"similarity-{against}.png")
    cc.say(f"wrote {plot} and {Path(args.run_a) / 'similarity.json'}")
    return 0


def cmd_sampler(args: argparse.Namespace) -> int:
    from domgen.engine.metrics import jsonable
    from domgen.runs.sampler_report import format_sampler_report, sampler_report

    report = sampler_report(cc.build_config(args), n_pairs=args.pairs, bar=cc.cli_hooks().bar)
    print(json.dumps(jsonable(report)) if args.json else format_sampler_report(report))
    return 0


def _results(args: argparse.Namespace):
    """Every row selection may read (per-epoch and final, validation and test) of the asked study and preset."""
    from domgen.results.collect import collect, select
    from domgen.studies import load_study

    df = collect(Path(args.runs), stages=("val", "final"), splits=("val", "test"))
    return select(df, include_unfinished=True, preset=args.preset, study=load_study(args.study).name)


def _exps(args: argparse.Namespace) -> list[str] | None:
    """``--exps``: the experiments reported (selection still reads every run, e.g. lodo's siblings)."""
    if not args.exps:
        return None
    from domgen.sweep.plan import parse_exps  # imports torch: only when asked

    return parse_exps(args.exps, args.study)


def _registered(args: argparse.Namespace) -> str | None:
    """Settle ``args.metric`` and ``args.selection`` from the study's protocol (``domgen.protocol``): its primary
    metric and selection unless given; another metric only with ``--exploratory``. Refuses runs frozen under
    another protocol. Returns the caption line of an exploratory metric, else None."""
    from domgen.protocol import check_frozen, exploratory_line, protocol_hash
    from domgen.studies import load_study

    study = load_study(args.study)
    p = study.protocol
    check_frozen(p, study.name, args.runs)
    primary = p.primary_metric if p is not None else DEFAULT_METRIC
    args.selection = args.selection or (p.selection if p is not None else SELECTIONS[0])
    args.metric = args.metric or primary
    if args.metric == primary:
        return None
    if not args.exploratory:
        by = f"protocol {protocol_hash(p)} in {p.source}" if p is not None else "the default, as the study has no protocol"
        raise ValueError(f"--metric {args.metric}: the pre-registered primary metric of study {study.name} is {primary} "
                         f"({by}); another metric is reported only with --exploratory, which labels it so")
    return exploratory_line(args.metric, p, primary)


def cmd_protocol(args: argparse.Namespace) -> int:
    from domgen.protocol import amendments_path, check_frozen, describe_protocol, freeze, frozen_copy, read_amendments
    from domgen.studies import load_study

    study = load_study(args.study)
    p = study.protocol
    if p is None:
        print(f"Study {study.name} ({study.path}) has no protocol: write a 'protocol:' block in it, or "
              f"{study.path.parent / study.name / 'protocol.yaml'} (experiments/README.md).")
        return 0
    print("\n".join(describe_protocol(p, study.name)))
    frozen = frozen_copy(args.runs, study.name)
    if frozen is not None:  # an edit since it was frozen: recorded with --amend, else refused naming the change
        frozen = freeze(p, study.name, args.runs, args.amend) if args.amend else frozen
        check_frozen(p, study.name, args.runs)
    if frozen is None:
        print(("Nothing to amend. " if args.amend else "")
              + f"Not frozen yet: frozen in {Path(args.runs) / '.protocol'} when the study's first run there starts.")
        return 0
    amended = read_amendments(args.runs, study.name)
    print(f"Frozen in {frozen.path} ({'last amended' if amended else 'since'} {frozen.frozen_at}); "
          f"{len(amended)} amendment(s)" + (f", logged in {amendments_path(args.runs, study.name)}:" if amended else "."))
    for a in amended:
        print(f"  {a['time']}: {a['reason']} (" + "; ".join(f"{c['key']} {c['before']} -> {c['after']}" for c in a['changes']) + ")")
    return 0


def _amend(args: argparse.Namespace) -> None:
    """``--amend REASON`` of a training command: record the study's changed protocol before any run starts."""
    if getattr(args, "amend", None):
        from domgen.protocol import freeze
        from domgen.studies import load_study

        study = load_study(args.study)
        freeze(study.protocol, study.name, args.out, args.amend)


def cmd_table(args: argparse.Namespace) -> int:
    from domgen.results.tables import plot_table, pruning_report, table2

    exploratory = _registered(args)
    if exploratory and args.format == "csv":
        print(exploratory, file=sys.stderr)  # CSV has no caption: said beside it
    df = _results(args)
    if df.empty or not ((df["stage"] == "final") & (df["split"] == "test")).any():
        raise ValueError(f"no finished run of study {args.study} with final test results under {args.runs}")
    if args.ci:
        return _table_ci(args, df)
    if args.by == "transfusion":  # the transfusion study's summary (domgen.results.transfusion)
        from domgen.results.transfusion import format_summary, summarise

        print(format_summary(summarise(df[df["finished"].astype(bool)], args.metric), args.metric))
        return 0
    if args.by == "algorithm":
        from domgen.results.by_algorithm import algorithm_table

        if args.plot:
            raise ValueError("--plot draws Table 2 by experiment; leave out --by algorithm or --plot")
        print(algorithm_table(df, fmt=args.format, metric=args.metric, include_unfinished=args.all, selection=args.selection,
                              exps=_exps(args), exploratory=exploratory))
        return 0
    exps = _exps(args)
    print(table2(df, fmt=args.format, metric=args.metric, include_unfinished=args.all, selection=args.selection, exps=exps,
                 exploratory=exploratory))
    final = df[(df["stage"] == "final") & (df["split"] == "test")]  # the pruning keys are on the final rows
    if args.format == "md" and "params" in final.columns and final["params"].notna().any():
        print("\n" + pruning_report(final))
    if args.plot:
        cc.say(f"wrote {plot_table(df, Path(args.plot), metric=args.metric, selection=args.selection, exps=exps)}")
    return 0


def _table_ci(args: argparse.Namespace, df) -> int:
    from domgen.results.bootstrap import METRICS, ci_frame, format_ci

    if args.selection != "train" or args.plot or args.by != "exp":
        raise ValueError("--ci reads the per-case predictions of final evaluation, i.e. the training-domain "
                         "selection's weights: leave out --selection, --plot and --by")
    if args.metric not in METRICS:
        raise ValueError(f"--ci --metric: one of {', '.join(METRICS)}")
    print(format_ci(ci_frame(df, args.metric, args.n_boot, exps=_exps(args)), "csv" if args.format == "csv" else "md"))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from domgen.results.compare import format_compare

    exploratory = _registered(args)
    print(format_compare(_results(args), args.a, args.b, metric=args.metric, selection=args.selection, exps=_exps(args),
                         exploratory=exploratory))
    return 0


# domgen.results.selection's registry (a test checks they agree); spelled here so --help needs no pandas
SELECTIONS = ("train", "lodo", "oracle")
DEFAULT_METRIC = "macro_recall"  # the primary metric of a study without a protocol (the paper's)


def add_results_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="runs", help="folder holding run folders (searched recursively)")
    p.add_argument("--preset", default=None, help="only runs of this preset")
    p.add_argument("--metric", default=None, help="default: the study protocol's pre-registered primary metric (`protocol`; "
                   "macro_recall without one); another (balanced_acc, mel_auc, pos_sens, pos_cost, ...) needs --exploratory")
    p.add_argument("--exploratory", action="store_true",
                   help="allow a --metric that is not the pre-registered one; the caption then says it is exploratory")
    p.add_argument("--exps", default=None, help="report only these rows of the study, in its file order: O-T, A,K,R (e.g. "
                   "the leave-one-out runs without their warm-start parent, for --selection lodo or oracle); selection "
                   "still reads every run")
    p.add_argument("--selection", default=None, choices=SELECTIONS,
                   help="default: the study protocol's (train without one). Model selection: train = training-domain validation (what the trainer chose); lodo = "
                        "leave-one-domain-out validation (needs a loo --holdout all sweep); oracle = the held-out "
                        "domain's own validation, an upper bound, not a result")
    cc.add_study_option(p)


parse_seeds = cc.parse_seeds  # kept here too: `from domgen.run import parse_seeds` reads it


def cmd_sweep(args: argparse.Namespace) -> int:
    from domgen.sweep.launch import launch
    from domgen.sweep.plan import algorithm_variants, cross_variants, plan_sweep, split_variants
    from domgen.sweep.report import format_plan, format_report, format_status, sweep_status

    _amend(args)
    seeds = parse_seeds(args.seeds)
    overrides = cc.data_overrides(args) + [f"device={args.device}"] + list(args.set)
    exps = args.exps
    if args.holdout:  # the study's leave-one-out rows (yoon2019: O-T), like `loo --holdout`
        from domgen.runs.loo import loo_experiments

        if args.exps != "all":
            raise ValueError("give --exps or --holdout, not both: --holdout names the leave-one-out rows itself")
        exps = sorted({e for h in args.holdout.split(",") for e in loo_experiments(h.strip(), args.study)})
    split_seeds = parse_seeds(args.split_seeds) if args.split_seeds is not None else None
    split_seeds = list(range(split_seeds)) if isinstance(split_seeds, int) else split_seeds
    variants = cross_variants(algorithm_variants(args.algorithms, args.hparams, args.n_hparams),
                              split_variants(args.folds, split_seeds))
    plan = plan_sweep(exps, seeds, args.preset, overrides, out=args.out, study=args.study, variants=variants)
    if args.action == "status":
        print(format_status(sweep_status(plan)))
        return 0
    slurm = cc.slurm_options(args)
    if args.dry_run:
        print(format_plan(plan))
    report = launch(plan, args.launcher, retry_failed=args.retry_failed, dry_run=args.dry_run, max_parallel=args.max_parallel, slurm=slurm)
    print(format_report(report))
    if not args.dry_run:
        print(format_status(sweep_status(plan)))
    return 0


def add_sweep_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="experiments x seeds, locally or on Slurm (submitit); `sweep status` for progress",
                        formatter_class=cc.HelpFormatter, description=DESCRIPTIONS["sweep"])
    sw.add_argument("action", nargs="?", default="run", choices=["run", "status"], help="run what is not done, or show progress")
    cc.add_data_options(sw)
    cc.add_study_option(sw)
    sw.add_argument("--exps", default="all", help="the study's rows: all, or ranges and lists in file order: A-V, F-K,U, A,K,R")
    sw.add_argument("--holdout", default=None, metavar="DOMAINS",
                    help="instead of --exps: the leave-one-out rows holding out these domains (PH2,SON), or all (yoon2019: O-T)")
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
    from domgen.engine.metrics import jsonable

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
                        **({"n_steps": args.steps} if args.steps else {}))
        lines = _side_by_side(r, [("CCSA steps/s with the full pipeline", "pipeline_steps_per_s", ".3f"),
                                  ("CCSA steps/s on device tensors", "model_only_steps_per_s", ".3f"),
                                  ("ratio", "ratio", ".2f")])
        lines.append(f"({r['precision']}{', channels_last' if r['channels_last'] else ''}{', compiled' if r['compiled'] else ''}, "
                     f"{r['arch']}, {r['batch_pairs']} pairs/step)")
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

    rows = bench_matrix(root, archs=tuple(args.archs.split(",")), compile=args.compile, workers=args.workers,
                        quick=args.quick, device=args.device, **({"n_steps": args.steps} if args.steps else {}))
    if args.json:
        print(json.dumps(jsonable(rows)))
        return 0
    print(f"{'arch':<16}{'precision':<10}{'NHWC':<6}{'compiled':<10}{'pipeline':>10}{'model only':>12}{'ratio':>7}{'peak MB':>9}")
    for r in rows:
        peak = f"{r['peak_gpu_mem_mb']:.0f}" if r["peak_gpu_mem_mb"] is not None else "-"
        print(f"{r['arch']:<16}{r['precision']:<10}{'on' if r['channels_last'] else 'off':<6}{'yes' if r['compiled'] else 'no':<10}"
              f"{r['pipeline_steps_per_s']:>10.3f}{r['model_only_steps_per_s']:>12.3f}{r['ratio']:>7.2f}{peak:>9}")
    m = rows[0]
    print(f"steps/s of CCSA, {m['batch_pairs']} pairs per step; machine: {m['device']} ({m['device_name'] or 'CPU'}), torch {m['torch']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "algorithms":
        from domgen.algorithms import describe_algorithms  # imports torch: only for this listing

        print(describe_algorithms())
        return 0
    if args.what == "regimes":
        from domgen.regimes import describe_regimes  # imports torch: only for this listing

        print(describe_regimes())
        return 0
    from domgen.studies import load_study

    EXPERIMENTS = load_study(args.study).experiments
    for name in EXPERIMENTS.names():
        e = EXPERIMENTS.get(name)
        print(f"{name}  {e.arch:<9} nsec={e.nsec:<2} {e.description}")
    return 0


DESCRIPTION = ("Domain generalization for dermoscopy: reproduces Yoon, Hamarneh & Garbi (MICCAI 2019). Start with "
               "`summary` to see what your data holds, `train --preset smoke` to check the install in seconds, and "
               "`sweep` then `table` for the paper's Table 2. `<command> --help` says what each command does.")
DESCRIPTIONS = {
    "summary": "Count the images per class in every source (the paper's Table 1) and say what was dropped and why. "
               "With --verify, decode every image to find truncated or corrupt files. Reads the data only; trains nothing.",
    "train": "Train one experiment of Yoon et al. (2019): A-E are the baselines (weighted cross-entropy), F-T weighted CCSA "
             "warm-started from A. A run lives in <out>/<exp>-s<seed>-<hash>; running the same command again reuses a "
             "finished run, refuses an unfinished one (use --resume or --restart) and refuses a folder another process "
             "is training (use --wait). Ctrl-C stops after saying how to resume.",
    "profile": "Train one experiment afresh into its own folder (default runs/profile) and report the share of wall "
               "time in data, forward/backward, optimiser, evaluation and logging/checkpointing per epoch, with a "
               "torch.profiler trace for TensorBoard. Real runs are untouched.",
    "prune": "Prune experiment K's best model with discrimination-aware channel pruning and fine-tune it "
             "(experiments U and V, Table 2's last rows). Trains K first if it is not done. With --thresholds or "
             "--target-params: the threshold-to-size curve from one channel selection, without fine-tuning.",
    "loo": "Leave one domain out (experiments O-T): the held-out source is removed from training and from model "
           "selection and evaluated like the others. Trains or reuses A, then CCSA (or --algorithm NAME). Every domain's "
           "validation and test splits are recorded after each epoch, so `table --selection lodo|oracle` can be applied "
           "afterwards; only the training domains' validation is shown while training.",
    "sampler": "Show what the experiment's sampler draws. A one-image sampler (uniform, domain_balanced, class_balanced, "
               "sqrt_frequency, effective_number): exact and empirical class and domain probabilities and the class weights "
               "that invert them. The pair sampler: its exact and empirical class probabilities, P(positive pair), the CCSA weights "
               "it implies and their expected size, and (once the warm start is trained) each weighted loss term and its "
               "gradient at the features on the first pair batches: for checking a configuration before training. Writes nothing.",
    "export": "Write a finished run's model (pruned or not) as ONNX or TorchScript for deployment, with the "
              "preprocessing it expects in preprocessing.json; checks the exported outputs against PyTorch and reports "
              "file size, single-image CPU latency, parameters and MACs.",
    "table": "Build the paper's Table 2 (mean +/- std over seeds, per domain) from the results files under --runs, or "
             "a table by algorithm (--by algorithm), under a named model selection (--selection). Reads results only.",
    "protocol": "Print a study's protocol (experiments/<study>.yaml's protocol: block): the positive class set, target "
                "sensitivity, costs of a false negative and a false positive, primary metric, model selection, seeds "
                "and folds; and whether it is frozen beside the runs (it is when the first run starts; an edit after "
                "that is refused unless --amend says why). Reads files only.",
    "compare": "Paired, seed-matched difference between two experiments (e.g. K vs A) or two algorithms (e.g. coral vs "
               "erm), with a confidence interval, under a named model selection.",
    "sweep": "Run experiments x seeds: here (one process per GPU or --max-parallel CPU processes) or on Slurm. "
             "Safe to repeat: finished runs are skipped, interrupted ones resume, failed ones wait for --retry-failed.",
    "similarity": "Per-layer representation similarity (linear CKA, SVCCA, PWCCA) of run A's best model to run B's, or "
                  "to its own initialisation (--vs-init: init.pt from --set save_init=true, else rebuilt from the seed), "
                  "on a fixed, seeded, class-stratified sample of run A's validation images from every domain. Prints a "
                  "table, plots it (PNG) and records it in RUN_A/similarity.json (what the transfusion summary reads).",
    "ablate": "A factorial ablation (--axis KEY=V1,V2 ..., or the study's ablation: block) or a random hyperparameter "
              "search (--search random --space FILE) over one row of a study: every cell x seed is a normal run, hashed, "
              "resumable and skipped when done, launched like `sweep`; then main effects, interactions, heatmaps, learning "
              "curves, the overfitting gap and the best cell with its checkpoint, written under <out>/ablations/.",
    "bench": "Measure the input pipeline against plain PIL, and CCSA training steps against the model alone.",
    "list": "List the rows of a study (experiments/<study>.yaml; yoon2019: A-V) with their backbone, nsec and what they test; "
            "`list algorithms`: every training algorithm, its default sampler and the paper it follows; `list regimes`: "
            "every fine-tuning regime (regime.name) and its paper.",
}


def _sub(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=DESCRIPTIONS[name], formatter_class=cc.HelpFormatter)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domgen.run", description=DESCRIPTION, formatter_class=cc.HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = _sub(sub, "summary", "Table 1: images per class per domain, and what was dropped")
    cc.add_data_options(s)
    s.add_argument("--json", action="store_true", help='print {"DOMAIN": {"nv": N, ...}, ...}')
    s.add_argument("--verify", action="store_true", help="decode every image fully (finds truncated JPEGs a header check misses); "
                   "with --skip-missing, broken images are dropped and counted")
    s.add_argument("--out", default="runs/summary", help="folder for summary.csv and summary.md")
    s.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                   help="a data option, e.g. data.layout=metadata_csv or data.domain_by=localization (repeatable)")
    s.set_defaults(func=cmd_summary)
    t = _sub(sub, "train", "train one experiment (A-E baselines, F-T CCSA)")
    cc.add_run_options(t)
    t.add_argument("--profile", action="store_true", help="time data, forward/backward, optimiser, evaluation, logging per epoch; write a torch.profiler trace")
    t.set_defaults(func=cmd_train)
    pf = _sub(sub, "profile", "train one experiment afresh and report where its wall time goes (see train --profile)")
    cc.add_run_options(pf)
    pf.set_defaults(func=cmd_profile, out="runs/profile")
    pr = _sub(sub, "prune", "DCP-prune experiment K's model and fine-tune it (experiments U, V)")
    cc.add_run_options(pr)
    pr.add_argument("--threshold", type=float, default=None, help="DCP stopping threshold (U: 1e-4, V: 1e-3)")
    pr.add_argument("--thresholds", default=None, metavar="T1,T2,...",
                    help="instead of U/V: parameters, MACs and validation recall at each threshold (one selection, no fine-tuning), table + plot")
    pr.add_argument("--target-params", default=None, metavar="N", help="with or without --thresholds: the threshold whose model is the largest within N parameters (e.g. 8.5M)")
    pr.add_argument("--refine", type=int, default=4, help="--target-params: bisection steps between the bracketing thresholds")
    pr.set_defaults(func=cmd_prune, exp="U")
    ex = _sub(sub, "export", "write a run's model as ONNX or TorchScript with its preprocessing, checked against PyTorch")
    ex.add_argument("run", help="a run folder (with config.yaml and best.pt; pruned.pt too for U and V)")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="ONNX (checked with onnxruntime) or TorchScript")
    ex.add_argument("--out", default=None, help="folder for the model and preprocessing.json (default: RUN/export)")
    ex.set_defaults(func=cmd_export)
    lo = _sub(sub, "loo", "leave one domain out (experiments O-T): trains or reuses A, then CCSA")
    cc.add_run_options(lo, exp=False)
    lo.add_argument("--holdout", required=True, help="DMF, D7P, MSK, PH2, SON, UDA (or folder names), or all")
    lo.add_argument("--algorithm", default=None, metavar="NAME",
                    help="train this algorithm instead of the study's (CCSA), warm-started from A the same way "
                         "(`list algorithms`); same as --set algorithm.name=NAME")
    lo.set_defaults(func=cmd_loo)
    sa = _sub(sub, "sampler", "exact and empirical class probabilities and weights of the experiment's sampler")
    cc.add_run_options(sa, folder=False)
    sa.add_argument("--pairs", type=int, default=100_000, help="pairs (or, for a one-image sampler, images) to draw for the empirical frequencies")
    sa.add_argument("--json", action="store_true", help="print the report as JSON")
    sa.set_defaults(func=cmd_sampler)
    tb = _sub(sub, "table", "the paper's Table 2 from results files (mean +/- std over seeds)")
    add_results_options(tb)
    tb.add_argument("--format", default="md", choices=["md", "latex", "csv"], help="Markdown, LaTeX (booktabs) or CSV")
    tb.add_argument("--plot", default=None, metavar="FILE.png", help="also plot per-domain recall by experiment")
    tb.add_argument("--all", action="store_true", help="include unfinished runs")
    tb.add_argument("--ci", action="store_true", help="instead: each run's per-domain value with a bootstrap interval over "
                    "test patients (groups resampled within each domain), from the runs' test_predictions.npz")
    tb.add_argument("--n-boot", type=int, default=2000, help="--ci: bootstrap resamples")
    tb.add_argument("--by", default="exp", choices=["exp", "algorithm", "transfusion"],
                    help="rows: the study's experiments (Table 2), or algorithms with domains as columns (DomainBed's table), "
                         "or transfusion: per row in- and out-of-domain recall, convergence epochs and CKA to init per layer")
    tb.set_defaults(func=cmd_table)
    co = _sub(sub, "compare", "paired, seed-matched difference between two experiments")
    co.add_argument("a", help="experiment letter, e.g. K, or an algorithm, e.g. coral")
    co.add_argument("b", help="experiment letter or algorithm to compare against, e.g. A or erm")
    add_results_options(co)
    co.set_defaults(func=cmd_compare)
    add_sweep_parser(sub)
    pc = _sub(sub, "protocol", "the study's pre-registered error profile in plain words, and whether it is frozen")
    cc.add_study_option(pc)
    pc.add_argument("--runs", default="runs", help="folder holding the runs (their frozen copy is <runs>/.protocol/<study>.yaml)")
    pc.add_argument("--amend", default=None, metavar="REASON",
                    help="accept the study file's edited protocol for the runs there: log the reason and the changes with "
                         "the time, and make it the frozen copy")
    pc.set_defaults(func=cmd_protocol)
    si = _sub(sub, "similarity", "per-layer CKA/SVCCA/PWCCA of two runs, or of a run against its initialisation")
    si.add_argument("run_a", metavar="RUN_A", help="a run folder (its best.pt)")
    si.add_argument("run_b", metavar="RUN_B", nargs="?", default=None, help="a second run folder, trained on the same data")
    si.add_argument("--vs-init", action="store_true", help="compare RUN_A with its own initial weights")
    si.add_argument("--layers", default="all", help="all (ResNets conv1, layer1-4; CBR layer1-N; features) or a comma list")
    si.add_argument("--metric", default="cka", help="cka, svcca, pwcca, or a comma list (cka,svcca)")
    si.add_argument("--probe", type=int, default=512, help="probe images (validation split, class-stratified)")
    si.add_argument("--probe-seed", type=int, default=0, help="seed of the probe sample (and of the row subsample of big layers)")
    si.add_argument("--conv", default="positions", choices=["positions", "pool"],
                    help="conv maps: each position a sample (as SVCCA/PWCCA papers), or averaged over positions")
    si.add_argument("--device", default="auto", help="auto | cpu | cuda")
    si.add_argument("--plot", default=None, metavar="FILE.png", help="the plot (default RUN_A/similarity-<against>.png)")
    si.set_defaults(func=cmd_similarity)
    from domgen.cli_ablate import add_ablate_parser  # the ablate subcommand lives in its own module

    add_ablate_parser(sub, DESCRIPTIONS["ablate"])
    be = _sub(sub, "bench", "benchmarks: the input pipeline vs PIL, CCSA training steps vs model only")
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
    ls = _sub(sub, "list", "the rows of a study (default: yoon2019, experiments A-V), the algorithms or the regimes")
    ls.add_argument("what", nargs="?", default="experiments", choices=["experiments", "algorithms", "regimes"],
                    help="experiments: the study's rows; algorithms: every registered training algorithm and its paper; "
                         "regimes: every fine-tuning regime and its paper")
    cc.add_study_option(ls)
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    """The one error boundary: expected failures print one line (exit 2, Ctrl-C 130); bugs a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    cc.deterministic_override(args)
    try:
        return args.func(args)
    except BrokenPipeError:  # `... | head` closed the pipe: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 0
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get("DOMGEN_DEBUG"):
            raise
        return cc.report_error(err, argv)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler's stop) ends like Ctrl-C: checkpoint named, exit 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(main())
