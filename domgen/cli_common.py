"""Shared pieces of the command line: options every subcommand takes, hooks that print, config building.

Only ``domgen.run`` and this module print or parse arguments.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from domgen.config import RunConfig
from domgen.engine.trainer import Hooks
from domgen.experiments.registry import PRESETS, resolve_config


def add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="folder with one sub-folder per source (default: $DOMGEN_DATA, else synthetic)")
    g.add_argument("--scale", type=float, default=None, help="size of the synthetic benchmark (1.0 = about 2-3k images)")
    g.add_argument("--skip-missing", action="store_true", help="drop and count listed-but-missing images instead of failing")
    g.add_argument("--cache-dir", default=None, help="where synthetic data, manifests and image caches go (default: $DOMGEN_CACHE or ~/.cache/domgen)")
    g.add_argument("--workers", type=int, default=None, help="processes decoding the image cache (and DataLoader workers when data.cached=false)")


def add_run_options(p: argparse.ArgumentParser, exp: bool = True) -> None:
    add_data_options(p)
    if exp:
        p.add_argument("--exp", default="A", help="experiment letter A-V (see `python -m domgen.run list`)")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="sizes: paper (exact), quick (CPU, minutes), smoke (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="imagenet | none | PATH to a local state dict (default: the preset's)")
    p.add_argument("--out", default="runs", help="folder that holds run folders")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="redo a run that is already done")


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


def build_config(args: argparse.Namespace, exp: str | None = None) -> RunConfig:
    overrides = data_overrides(args) + [f"out={args.out}", f"device={args.device}"]
    if getattr(args, "weights", None):
        overrides.append(f"model.weights={args.weights}")
    overrides += list(args.set)
    return resolve_config(exp or args.exp, args.preset, args.seed, overrides)


def say(line: str = "") -> None:
    tqdm.write(line, file=sys.stdout)


def cli_hooks() -> Hooks:
    return Hooks(log=say, progress=lambda it, **kw: tqdm(it, dynamic_ncols=True, **kw), bar=lambda **kw: tqdm(dynamic_ncols=True, **kw))
