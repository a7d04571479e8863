"""Leave-one-domain-out (experiments O-T): the held-out domain is removed from training and from model
selection, and still evaluated. ``run_loo(["PH2"], ...)`` runs experiment R end to end (A, then CCSA)."""

from __future__ import annotations

from domgen.data.catalog import load_catalog
from domgen.data.labels import domain_code, domain_order, table_columns
from domgen.engine.trainer import Hooks
from domgen.runs.registry import resolve_config
from domgen.studies import DEFAULT_STUDY, load_study
from domgen.runs.train import RunResult, run_train


def loo_experiments(holdout: str, study: str = DEFAULT_STUDY) -> list[str]:
    """"PH2" -> ["R"]; "all" -> ["O", ..., "T"]: the study's rows that hold out one domain alone."""
    LOO_EXPERIMENT = load_study(study).loo
    if holdout.lower() == "all":
        return [LOO_EXPERIMENT[d] for d in domain_order(LOO_EXPERIMENT)]
    code = domain_code(holdout)
    if code not in LOO_EXPERIMENT:
        raise ValueError(f"--holdout {holdout}: no leave-one-out experiment holds out {code} (choose from {', '.join(LOO_EXPERIMENT)} or all)")
    return [LOO_EXPERIMENT[code]]


def run_loo(holdout: str, preset: str, seed: int, overrides: list[str], hooks: Hooks = Hooks(), force: bool = False, resume: bool = False,
            restart: bool = False, wait: bool = False, study: str = DEFAULT_STUDY) -> list[RunResult]:
    cfgs = [resolve_config(exp, preset, seed, overrides, study=study) for exp in loo_experiments(holdout, study)]
    catalog = load_catalog(cfgs[0].data, bar=hooks.bar)  # the experiments differ only in what they hold out
    hooks.log(f"data: {catalog.describe()}")
    return [run_train(cfg, hooks, resume=resume, force=force, catalog=catalog, restart=restart, wait=wait) for cfg in cfgs]


def _method(summary: dict) -> str:
    """The algorithm a run trained (``loo --algorithm``), with its weight averaging when there is one."""
    name = str(summary.get("algorithm", "?"))
    average = summary.get("average")
    return f"{name}+{average}" if average and average != "none" else name


def format_loo(results: list[RunResult]) -> str:
    """Macro recall per domain (Table 2 order), the held-out domain starred, one line per experiment."""
    # Table 2's columns, then any other domain the runs were tested on (a toy source, a domain_by value);
    # a DomainBed folder's domains alone
    columns = table_columns({d for r in results for d in r.summary["test_macro_recall"]})
    width = max([9] + [len(_method(r.summary)) for r in results])
    header = f"exp  {'algorithm':<{width}} held-out " + " ".join(f"{d:>6}" for d in columns) + "    avg"
    lines = [header]
    for r in results:
        s, held = r.summary, set(r.summary["holdout"])
        test = s["test_macro_recall"]
        cells = [f"{test[d]:5.1f}{'*' if d in held else ' '}" if d in test and test[d] is not None else "     -" for d in columns]
        vals = [v for v in test.values() if v is not None]
        avg = sum(vals) / len(vals) if vals else float("nan")
        lines.append(f"{s['exp']:<4} {_method(s):<{width}} {','.join(s['holdout']):<8} " + " ".join(cells) + f" {avg:6.1f}")
    lines.append("macro-average recall x100 on each domain's test split; * = held out of training and model selection")
    return "\n".join(lines)
