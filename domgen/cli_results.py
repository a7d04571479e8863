"""The commands that read results: ``table``, ``compare`` and ``protocol`` (the study's pre-registered
error profile, which decides the metric and the selection the other two report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from domgen import cli_common as cc
from domgen.errors import ConfigError


def _results(args: argparse.Namespace):
    """Every row selection may read (per-epoch and final, validation and test) of the asked study and preset."""
    from domgen.results.collect import collect, select
    from domgen.studies import load_study

    if not Path(args.runs).is_dir():  # a mistyped --runs, not "no finished runs" of whatever was asked
        raise ConfigError(f"--runs {args.runs}: no such folder (the runs are where train/loo/sweep wrote them: --out, default runs)")
    df = collect(Path(args.runs), stages=("val", "final"), splits=("val", "test"))
    df = select(df, include_unfinished=True, preset=args.preset, study=load_study(args.study).name)
    if args.seeds is not None:  # e.g. the seeds a sweep under way has finished
        df = df[df["seed"].astype(int).isin(cc.seed_list(args.seeds))]
    return df


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
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="only these training seeds, as sweep takes them: a count (2 = seeds 0-1), a list (0,3), a range "
                        "(1-2) or one seed (1,); e.g. the seeds a sweep under way has finished")
    p.add_argument("--selection", default=None, choices=SELECTIONS,
                   help="default: the study protocol's (train without one). Model selection: train = training-domain validation (what the trainer chose); lodo = "
                        "leave-one-domain-out validation (needs a loo --holdout all sweep); oracle = the held-out "
                        "domain's own validation, an upper bound, not a result")
    cc.add_study_option(p)


def add_results_parsers(sub, descriptions: dict[str, str]) -> None:
    """``table``, ``compare`` and ``protocol``."""
    tb = _sub(sub, "table", "the paper's Table 2 from results files (mean +/- std over seeds)", descriptions["table"])
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
    co = _sub(sub, "compare", "paired, seed-matched difference between two experiments", descriptions["compare"])
    co.add_argument("a", help="experiment letter, e.g. K, or an algorithm, e.g. coral")
    co.add_argument("b", help="experiment letter or algorithm to compare against, e.g. A or erm")
    add_results_options(co)
    co.set_defaults(func=cmd_compare)
    pc = _sub(sub, "protocol", "the study's pre-registered error profile in plain words, and whether it is frozen", descriptions["protocol"])
    cc.add_study_option(pc)
    pc.add_argument("--runs", default="runs", help="folder holding the runs (their frozen copy is <runs>/.protocol/<study>.yaml)")
    pc.add_argument("--amend", default=None, metavar="REASON",
                    help="accept the study file's edited protocol for the runs there: log the reason and the changes with "
                         "the time, and make it the frozen copy")
    pc.set_defaults(func=cmd_protocol)


def _sub(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, formatter_class=cc.HelpFormatter)
