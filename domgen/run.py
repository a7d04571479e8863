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
# each of these modules holds its commands and their options (no torch at import: `--help` stays fast)
from domgen.cli_ablate import add_ablate_parser
from domgen.cli_bench import add_bench_parser
from domgen.cli_results import DEFAULT_METRIC, SELECTIONS, add_results_parsers  # noqa: F401  (tests read run.SELECTIONS)
from domgen.cli_sweep import add_sweep_parser, parse_seeds  # noqa: F401  (`from domgen.run import parse_seeds`)


def cmd_summary(args: argparse.Namespace) -> int:
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

    cc.amend_protocol(args)
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

    cc.amend_protocol(args)
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

    cc.amend_protocol(args)
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
    from domgen.engine.logging import jsonable
    from domgen.runs.sampler_report import format_sampler_report, sampler_report

    report = sampler_report(cc.build_config(args), n_pairs=args.pairs, bar=cc.cli_hooks().bar)
    print(json.dumps(jsonable(report)) if args.json else format_sampler_report(report))
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


def _add_summary(sub) -> None:
    """``summary``: Table 1 of the data."""
    s = _sub(sub, "summary", "Table 1: images per class per domain, and what was dropped")
    cc.add_data_options(s)
    s.add_argument("--json", action="store_true", help='print {"DOMAIN": {"nv": N, ...}, ...}')
    s.add_argument("--verify", action="store_true", help="decode every image fully (finds truncated JPEGs a header check misses); "
                   "with --skip-missing, broken images are dropped and counted")
    s.add_argument("--out", default="runs/summary", help="folder for summary.csv and summary.md")
    s.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                   help="a data option, e.g. data.layout=metadata_csv or data.domain_by=localization (repeatable)")
    s.set_defaults(func=cmd_summary)


def _add_training(sub) -> None:
    """The commands that train: ``train``, ``profile``, ``prune``."""
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


def _add_export(sub) -> None:
    """``export``: a run's model as ONNX or TorchScript."""
    ex = _sub(sub, "export", "write a run's model as ONNX or TorchScript with its preprocessing, checked against PyTorch")
    ex.add_argument("run", help="a run folder (with config.yaml and best.pt; pruned.pt too for U and V)")
    ex.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="ONNX (checked with onnxruntime) or TorchScript")
    ex.add_argument("--out", default=None, help="folder for the model and preprocessing.json (default: RUN/export)")
    ex.set_defaults(func=cmd_export)


def _add_loo(sub) -> None:
    """``loo`` (leave one domain out) and ``sampler`` (its pair sampler's report)."""
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


def _add_similarity(sub) -> None:
    """``similarity``: CKA/SVCCA/PWCCA of two runs."""
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


def _add_list(sub) -> None:
    """``list``: a study's rows, the algorithms, the regimes."""
    ls = _sub(sub, "list", "the rows of a study (default: yoon2019, experiments A-V), the algorithms or the regimes")
    ls.add_argument("what", nargs="?", default="experiments", choices=["experiments", "algorithms", "regimes"],
                    help="experiments: the study's rows; algorithms: every registered training algorithm and its paper; "
                         "regimes: every fine-tuning regime and its paper")
    cc.add_study_option(ls)
    ls.set_defaults(func=cmd_list)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domgen.run", description=DESCRIPTION, formatter_class=cc.HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    # the order of `--help`
    for add in (_add_summary, _add_training, _add_export, _add_loo):
        add(sub)
    add_results_parsers(sub, DESCRIPTIONS)
    add_sweep_parser(sub, DESCRIPTIONS["sweep"])
    _add_similarity(sub)
    add_ablate_parser(sub, DESCRIPTIONS["ablate"])
    add_bench_parser(sub, DESCRIPTIONS["bench"])
    _add_list(sub)
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
