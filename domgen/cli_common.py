"""Shared pieces of the command line: options every subcommand takes, hooks that print, config building.

Only ``domgen.run`` and this module print or parse arguments. Importing this module and building the
parser import neither torch nor tqdm nor pandas (``tests/test_cli_help.py`` checks it), so ``list`` and
every ``--help`` answer at once; a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
import traceback
from typing import TYPE_CHECKING

from domgen.config import DataConfig, apply_overrides
from domgen.config_check import normalise_data, validate_data
from domgen.errors import ConfigError, DomgenError, RunFolderError, RunInterrupted
from domgen.studies import DEFAULT_STUDY

if TYPE_CHECKING:
    from domgen.config import RunConfig
    from domgen.engine.trainer import Hooks


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default at the end of its help, unless the help already says it or there is none
    (a flag that is off, an option whose absence means "see the help")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] or action.default is argparse.SUPPRESS
        if nothing or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="folder with one sub-folder per source (default: $DOMGEN_DATA, else synthetic)")
    g.add_argument("--scale", type=float, default=None, help="size of the synthetic benchmark (1.0 = about 2-3k images)")
    g.add_argument("--skip-missing", action="store_true", help="drop and count listed-but-missing images instead of failing")
    g.add_argument("--cache-dir", default=None, help="where synthetic data, manifests and image caches go (default: $DOMGEN_CACHE or ~/.cache/domgen)")
    g.add_argument("--workers", type=int, default=None, help="processes decoding the image cache (and DataLoader workers when data.cached=false)")


def add_run_options(p: argparse.ArgumentParser, exp: bool = True, folder: bool = True) -> None:
    add_data_options(p)
    add_study_option(p)
    if exp:
        p.add_argument("--exp", default="A", help="a row of the study (yoon2019: A-V; see `python -m domgen.run list`)")
    p.add_argument("--preset", default="paper",
                   help="a preset of experiments/presets.yaml (or of the study's own presets:): paper (the paper's exactly; GPU hours; needs ImageNet weights, downloaded once or "
                        "given with --weights), quick (CPU, minutes), smoke (seconds, for checks)")
    p.add_argument("--seed", type=int, default=0, help="training seed (data splits have their own, data.split_seed)")
    p.add_argument("--weights", default=None, help="imagenet | none | PATH to a local state dict | timm:MODEL.TAG (a timm pretrained tag) | meanvar[:PATH] | transfer:K[:PATH] (Raghu et al. 2019, domgen/models/init.py) (default: the preset's); "
                   "for an experiment warm-started from A (F-V), the weights A starts from")
    p.add_argument("--out", default="runs", help="folder that holds run folders")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. optim.lr=3e-4 (repeatable)")
    add_deterministic_option(p)
    if not folder:
        return
    g = p.add_argument_group("an existing run folder (nothing is ever deleted)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    g.add_argument("--restart", action="store_true", help="move an unfinished run aside (<name>.abandoned-<time>) and start over")
    g.add_argument("--force", action="store_true", help="redo a run that is already done (the old one is moved aside)")
    g.add_argument("--wait", action="store_true", help="if another process owns the run folder, wait for it instead of stopping")
    g.add_argument("--amend", default=None, metavar="REASON",
                   help="the study's protocol was edited after runs exist in --out: record why (logged with the time in "
                        "<out>/.protocol/) instead of refusing; see `protocol`")


def add_deterministic_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic, no autotuning): "
                        "operations without one warn; slower; same as --set deterministic=true, which does not change the run's hash")


def deterministic_override(args: argparse.Namespace) -> None:
    """``--deterministic`` becomes ``--set deterministic=true``, so every path that reads ``--set`` (train,
    loo, sweep and the jobs a sweep launches) sees it."""
    if getattr(args, "deterministic", False) and hasattr(args, "set"):
        args.set = [*args.set, "deterministic=true"]


def add_study_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default=DEFAULT_STUDY, metavar="FILE|NAME",
                   help="the study whose rows --exp names: a YAML file, or a name found in $DOMGEN_EXPERIMENTS or the "
                        "repository's experiments/ folder")


def data_overrides(args: argparse.Namespace) -> list[str]:
    """Translate the data flags into ``--set`` overrides, so the config stays the one source of truth."""
    out = []
    if args.data_root:
        out.append(f"data.root={args.data_root}")
    if args.scale is not None:
        out.append(f"data.synthetic_scale={args.scale}")
    if args.skip_missing:
        out.append("data.skip_missing=true")
    if args.cache_dir:
        out.append(f"data.cache_dir={args.cache_dir}")
    if args.workers is not None:
        out.append(f"data.workers={args.workers}")
    return out


def data_config(overrides: list[str]) -> DataConfig:
    """A DataConfig from ``data.*`` overrides alone (``summary``), normalised and validated like a run's."""
    stray = [o for o in overrides if not o.startswith("data.")]
    if stray:
        raise ConfigError(f"summary takes data.* settings only; got {', '.join(stray)}")
    return validate_data(normalise_data(apply_overrides(DataConfig(), [o.split("data.", 1)[1] for o in overrides])))


def build_config(args: argparse.Namespace, exp: str | None = None) -> RunConfig:
    overrides = data_overrides(args) + [f"out={args.out}", f"device={args.device}"]
    if getattr(args, "weights", None):
        overrides.append(f"model.weights={args.weights}")
    overrides += list(args.set)
    from domgen.runs.registry import resolve_config  # reads the study file: only when a command runs

    return resolve_config(exp or args.exp, args.preset, args.seed, overrides, study=args.study)


def say(line: str = "") -> None:
    from tqdm import tqdm  # written through tqdm so that a progress bar on screen is not broken

    tqdm.write(line, file=sys.stdout)


def cli_hooks() -> Hooks:
    from tqdm import tqdm

    from domgen.engine.trainer import Hooks  # imports torch: only for a command that trains

    return Hooks(log=say, progress=lambda it, **kw: tqdm(it, dynamic_ncols=True, **kw), bar=lambda **kw: tqdm(dynamic_ncols=True, **kw))


def folder_options(args: argparse.Namespace) -> dict:
    """What to do with an existing run folder: the driver keywords of --resume/--restart/--force/--wait."""
    return {"resume": args.resume, "restart": args.restart, "force": args.force, "wait": args.wait}


# ---- the error boundary --------------------------------------------------------------------------
EXPECTED = (DomgenError, OSError, KeyError, ValueError)  # a mistake in the command, the data or the machine
_OS_HINTS = {
    errno.EACCES: "check its permissions, or choose another --out / --cache-dir",
    errno.EPERM: "check its permissions, or choose another --out / --cache-dir",
    errno.EROFS: "the file system is read-only: choose another --out / --cache-dir",
    errno.ENOSPC: "the disk is full: free space or choose another --out / --cache-dir",
    errno.ENOTDIR: "part of that path is a file, not a folder: choose another --out / --cache-dir",
    errno.EEXIST: "a file is in the way: choose another --out / --cache-dir",
    errno.ENOENT: "check the path (and --data-root / DOMGEN_DATA)",
    errno.EISDIR: "that is a folder where a file was expected",
}


def command_line(argv: list[str], add: str | None = None, drop: tuple[str, ...] = ()) -> str:
    """The command that was run, as a person would retype it, with ``add`` appended."""
    words = [w for w in argv if w not in drop]
    if add and add not in words:
        words.append(add)
    return "python -m domgen.run " + shlex.join(words)


def error_message(err: BaseException, argv: list[str]) -> tuple[str, int]:
    """(what to print, exit code) for an exception that reached the command line."""
    if isinstance(err, RunInterrupted):
        return f"interrupted after epoch {err.epoch}: resume with {command_line(argv, '--resume', ('--restart', '--force'))}", 130
    if isinstance(err, KeyboardInterrupt):
        return "interrupted: nothing was lost; run the same command again (with --resume if a run had started)", 130
    if isinstance(err, RunFolderError) and err.retry_flag:
        return f"error: {err}\n  that is: {command_line(argv, err.retry_flag, ('--restart', '--force'))}", 2
    if isinstance(err, OSError) and not isinstance(err, DomgenError) and err.errno is not None:
        where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "")
        hint = _OS_HINTS.get(err.errno, "check the path and the disk")
        return f"error: {err.strerror}: {where or '?'} ({hint})", 2
    if isinstance(err, EXPECTED) or type(err).__name__ == "OutOfMemoryError":
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        return "error: " + (text or type(err).__name__), 2
    return "", 1


def report_error(err: BaseException, argv: list[str]) -> int:
    """Print one line for an expected failure; for a bug, the traceback and a request for a report."""
    message, code = error_message(err, argv)
    if message:
        print(message, file=sys.stderr)
        if code == 2:
            print("(set DOMGEN_DEBUG=1 for the traceback)", file=sys.stderr)
        return code
    traceback.print_exception(err)
    print(f"\nThis is a bug in domgen, not a mistake in your command ({type(err).__name__}). Please report it with the "
          "command line and the traceback above.", file=sys.stderr)
    return 1


def check_weights(cfg: RunConfig) -> None:
    """Build the model once with its pretrained weights, so missing ImageNet weights (offline, not cached)
    or a bad --weights file fail here, in one line, before any run folder exists."""
    if cfg.model.weights == "none":
        return
    from domgen.models import build_model

    build_model(cfg.model.arch, cfg.model.weights)


# ---- sweeps and ablations ------------------------------------------------------------------------
def parse_seeds(text: str) -> int | list[int]:
    """``5`` -> a count (seeds 0-4); ``0,3,7``, ``2-4`` or ``2,`` (one seed) -> those seeds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: a count (5 = seeds 0-4), a list (0,3,7), a range (2-4) or one seed (2,)") from None
    return list(dict.fromkeys(seeds))


def seed_list(text: str) -> list[int]:
    """:func:`parse_seeds` with a count spelt out: ``3`` -> [0, 1, 2]."""
    seeds = parse_seeds(text)
    return list(range(seeds)) if isinstance(seeds, int) else seeds


def slurm_options(args: argparse.Namespace):
    from domgen.sweep.launch import SlurmOptions

    return SlurmOptions(partition=args.partition, time_min=args.time_min, gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb,
                        array_parallelism=args.array_parallelism, extra=dict(kv.split("=", 1) for kv in args.slurm_extra))


def add_launch_options(sw: argparse.ArgumentParser) -> None:
    """How a planned set of runs is launched (``sweep`` and ``ablate``)."""
    sw.add_argument("--launcher", default="local", choices=["local", "slurm"], help="this machine, or a Slurm cluster through submitit")
    sw.add_argument("--dry-run", action="store_true", help="print the plan (runs, dependencies, GPU-hours); submit nothing")
    sw.add_argument("--retry-failed", action="store_true", help="also relaunch runs that failed with an error")
    sw.add_argument("--max-parallel", type=int, default=None, help="local: runs at once (default: one per GPU, else 1)")
    sw.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    sw.add_argument("--gpus", type=int, default=1, help="Slurm: GPUs per job")
    sw.add_argument("--cpus", type=int, default=8, help="Slurm: CPU cores per job")
    sw.add_argument("--mem-gb", type=int, default=32, help="Slurm: memory per job")
    sw.add_argument("--time-min", type=int, default=720, help="Slurm: time limit per job; a job that runs out is requeued and resumes")
    sw.add_argument("--array-parallelism", type=int, default=64, help="Slurm: most jobs of one array running at once")
    sw.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE", help="any other sbatch option")


def amend_protocol(args: argparse.Namespace) -> None:
    """``--amend REASON`` of a training command: record the study's changed protocol before any run starts."""
    if getattr(args, "amend", None):
        from domgen.protocol import freeze
        from domgen.studies import load_study

        study = load_study(args.study)
        freeze(study.protocol, study.name, args.out, args.amend)
