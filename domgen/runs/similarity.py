"""Driver of ``python -m domgen.run similarity``: per-layer representation similarity of two trained runs,
or of a run against its own initialisation (Raghu et al., "Transfusion", NeurIPS 2019, Figs. 2-4), with
the metrics of :mod:`domgen.analysis.similarity` (linear CKA, SVCCA, PWCCA).

- Models: each run's ``best.pt`` (the weights its final evaluation used). ``--vs-init``: the run's
  ``init.pt`` (written by ``--set save_init=true``); without one, a run that did not warm-start has its
  initial weights rebuilt the way the trainer built them (``seed_everything(seed)`` then ``build_model``:
  random init is fixed by the seed, ``meanvar`` too; ``imagenet`` reloads the weights), and the result
  says ``rebuilt``. A warm-started run needs ``init.pt`` (its start is its parent's best epoch).
- Probe set (fixed and seeded, the same images for both sides): a class-stratified sample of the
  validation split of every domain of run A's data (in-domain and unseen domains alike), ``n`` images:
  ``n // K`` per class (all of a class with fewer), the rest filled from the leftover images in the same
  seeded order. Preprocessed as run A's evaluation (its transform sizes; each model its own input
  normalisation).
- Layers: ``all`` = the layers both models name in :func:`domgen.analysis.similarity.default_layers`
  (ResNets conv1, layer1..4; CBR models layer1..N; ``features``, the output of ``g``), or a comma-separated
  list of those names or of submodules (``g.layer2.0``). Conv maps: positions as samples when both sides
  have the same spatial size, else pooled (each layer's mode is reported). One layer's activations are held
  at a time (two forward passes per layer), so memory is two layers' activations on the probe set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from domgen.analysis.similarity import MAX_SAMPLES, METRICS, collect_activations, default_layers, similarity
from domgen.atomic import write_text_atomic
from domgen.config import RunConfig, load_yaml
from domgen.engine.checkpoint import load_checkpoint, seed_everything
from domgen.engine.trainer import BEST, INIT, pick_device
from domgen.errors import DomgenError
from domgen.seeds import derive_seed

SIMILARITY_JSON = "similarity.json"


class SimilarityError(DomgenError, ValueError):
    """A run folder cannot be compared (no checkpoint, a pruned model, different data)."""


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    cfg: RunConfig
    classes: tuple[str, ...]
    data: str  # the data identity the run recorded


def read_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SimilarityError(f"{run_dir} is not a run folder (no config.yaml)")
    raw = yaml.safe_load(path.read_text())
    return RunInfo(run_dir, load_yaml(path), tuple(raw.get("classes") or ()), str((raw.get("resolved") or {}).get("data", "")))


def load_model(run: RunInfo, which: str = "best") -> tuple[torch.nn.Module, str]:
    """Run's model from ``best.pt`` (``which="best"``) or its initial weights (``"init"``), on the CPU, and
    where they came from (a file name or ``rebuilt from seed N``)."""
    from domgen.models import build_model

    if (run.run_dir / "pruned.pt").exists():
        raise SimilarityError(f"{run.run_dir} holds a pruned model: its layers differ from the backbone's; compare unpruned runs")
    arch, k = run.cfg.model.arch, len(run.classes)
    name = BEST if which == "best" else INIT
    if (run.run_dir / name).is_file():
        model = build_model(arch, "none", k)
        model.load_state_dict(load_checkpoint(run.run_dir / name)["model"])
        return model.eval(), name
    if which == "best":
        raise SimilarityError(f"{run.run_dir} has no {BEST}: the run has not finished an epoch")
    if run.cfg.warm_start:
        raise SimilarityError(f"{run.run_dir} warm-started from {run.cfg.warm_start} and has no {INIT}: train it with "
                              "--set save_init=true (a new folder is not made: save_init is not hashed; use --force)")
    seed_everything(run.cfg.seed)  # exactly what the trainer does before building the model
    return build_model(arch, run.cfg.model.weights, k).eval(), f"rebuilt from seed {run.cfg.seed}"


def probe_positions(labels: np.ndarray, candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the manifest positions ``candidates``, stratified by ``labels``: ``n // K`` per class
    present (all of a smaller class), the rest from the leftovers; sorted."""
    rng = np.random.default_rng(derive_seed("similarity-probe", seed))
    order = candidates[rng.permutation(len(candidates))]
    classes = np.unique(labels[order])
    quota = n // max(len(classes), 1)
    taken = np.concatenate([order[labels[order] == c][:quota] for c in classes]) if len(classes) else order[:0]
    rest = order[~np.isin(order, taken)][: max(n - len(taken), 0)]
    return np.sort(np.concatenate([taken, rest]))


@dataclass
class Comparison:
    """The per-layer result: ``values[metric][layer]``; ``conv[layer]``: positions | pool | - (not a conv map)."""

    run_a: str
    against: str  # "init" or run B's folder
    model_b: str  # which weights side B used (best.pt, init.pt, rebuilt from seed N)
    metrics: tuple[str, ...]
    probe: dict[str, Any]
    layers: list[str] = field(default_factory=list)
    conv: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def _resolve_layers(model_a, model_b, layers: str) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    da, db = default_layers(model_a), default_layers(model_b)
    names = [n for n in da if n in db] if layers == "all" else [n.strip() for n in layers.split(",") if n.strip()]
    try:
        return [(n, da[n] if n in da else model_a.get_submodule(n), db[n] if n in db else model_b.get_submodule(n)) for n in names]
    except AttributeError as err:
        raise SimilarityError(f"--layers {layers}: {err}; known: {', '.join(da)} or submodule names (g.layer2.0)") from None


def _probe(run: RunInfo, n: int, seed: int, device: torch.device, archs: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict]:
    """Run A's probe images, once per input normalisation the models need: arch -> x [n, 3, s, s] (CPU)."""
    from domgen.data.run_data import prepare_data
    from domgen.engine.inputs import Inputs
    from domgen.models import input_normalization

    data = prepare_data(run.cfg.data)
    if run.data and data.identity != run.data:
        raise SimilarityError(f"{run.run_dir} was trained on {run.data}, but its data section now finds {data.identity}")
    pos = probe_positions(data.labels, data.positions("val"), n, seed)
    m = data.manifest
    xs = {}
    for arch in dict.fromkeys(archs):
        inputs = Inputs(m["path"].tolist(), data.labels, run.cfg.transform, run.cfg.data, device, norm=input_normalization(arch))
        xs[arch] = torch.cat([x.float().cpu() for x, _ in inputs.eval_batches(pos, 64)])
    counts = m.iloc[pos].groupby(["domain"]).size()
    probe = {"images": int(len(pos)), "split": "val", "seed": seed, "size": run.cfg.transform.size,
             "stratified_by": "class", "per_domain": {str(d): int(c) for d, c in counts.items()}}
    return xs, probe


def run_similarity(run_a: Path, run_b: Path | None = None, vs_init: bool = False, metrics: tuple[str, ...] = ("cka",),
                   layers: str = "all", n_probe: int = 512, seed: int = 0, device: str = "auto", conv: str = "positions",
                   max_samples: int = MAX_SAMPLES, write: bool = True) -> Comparison:
    """Per-layer similarity of run A's best model to run B's (``run_b``) or to its own initialisation
    (``vs_init``); with ``write``, recorded in A's ``similarity.json`` (:func:`record`)."""
    if (run_b is None) == (not vs_init):
        raise SimilarityError("give a second run folder or --vs-init (not both)")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise SimilarityError(f"--metric {','.join(unknown)}: expected some of {', '.join(METRICS)}")
    a = read_run(run_a)
    b = a if vs_init else read_run(run_b)
    if b.data != a.data or b.classes != a.classes:
        raise SimilarityError(f"{a.run_dir} and {b.run_dir} were trained on different data or classes ({a.data} vs {b.data})")
    dev = pick_device(device)
    model_a, _ = load_model(a)
    model_b, source_b = load_model(b, "init" if vs_init else "best")
    model_a, model_b = model_a.to(dev), model_b.to(dev)
    archs = (a.cfg.model.arch, b.cfg.model.arch)
    xs, probe = _probe(a, n_probe, seed, dev, archs)
    result = Comparison(str(a.run_dir), "init" if vs_init else str(b.run_dir), source_b, tuple(metrics), probe)
    for name, ma, mb in _resolve_layers(model_a, model_b, layers):
        acts_a = collect_activations(model_a, xs[archs[0]], {name: ma})[name].to(dev)
        acts_b = collect_activations(model_b, xs[archs[1]], {name: mb})[name].to(dev)
        mode = conv if acts_a.dim() == acts_b.dim() == 4 and acts_a.shape[2:] == acts_b.shape[2:] else "pool"
        result.layers.append(name)
        result.conv[name] = mode if acts_a.dim() == 4 else "-"
        for metric in metrics:
            value = similarity(acts_a, acts_b, metric, conv=mode, max_samples=max_samples, seed=seed)
            result.values.setdefault(metric, {})[name] = value
        del acts_a, acts_b
    if write:
        record(a.run_dir, result)
    return result


def comparison_key(c: Comparison, metric: str) -> str:
    return f"{'init' if c.against == 'init' else Path(c.against).name}|{metric}|n{c.probe['images']}|seed{c.probe['seed']}"


def record(run_dir: Path, c: Comparison) -> Path:
    """Merge ``c`` into ``run_dir/similarity.json`` (atomic): one entry per (against, metric, probe), a
    repeated comparison replacing its entry. Entry: against, model_b, metric, probe, layers {name: value},
    conv {name: mode}. The summary (``domgen.results.transfusion``) reads the ``against: init`` ones."""
    path = Path(run_dir) / SIMILARITY_JSON
    doc = json.loads(path.read_text()) if path.is_file() else {"comparisons": {}}
    for metric in c.metrics:
        doc["comparisons"][comparison_key(c, metric)] = {
            "against": c.against if c.against == "init" else Path(c.against).name, "model_b": c.model_b,
            "metric": metric, "probe": c.probe, "layers": c.values.get(metric, {}), "conv": c.conv}
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def format_comparison(c: Comparison) -> str:
    """The per-layer table, bottom-up, one column per metric."""
    against = "its initialisation" if c.against == "init" else Path(c.against).name
    lines = [f"{Path(c.run_a).name} ({BEST}) vs {against} ({c.model_b})",
             f"{'layer':<12} {'conv':<10}" + "".join(f"{m:>8}" for m in c.metrics)]
    for name in c.layers:
        lines.append(f"{name:<12} {c.conv[name]:<10}" + "".join(f"{c.values[m][name]:>8.3f}" for m in c.metrics))
    p = c.probe
    lines.append(f"probe: {p['images']} validation images (class-stratified, seed {p['seed']}, {p['size']} px) from "
                 + ", ".join(f"{d} {n}" for d, n in p["per_domain"].items()))
    return "\n".join(lines)


def plot_comparison(c: Comparison, path: Path) -> Path:
    """Per-layer similarity, one line per metric, bottom-up along x (the paper's Figs. 2-4 layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.5 + 0.8 * len(c.layers), 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for metric in c.metrics:
        ax.plot(range(len(c.layers)), [c.values[metric][n] for n in c.layers], marker="o", label=metric.upper())
    ax.set_xticks(range(len(c.layers)), c.layers, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("similarity")
    against = "init" if c.against == "init" else Path(c.against).name
    ax.set_title(f"{Path(c.run_a).name} vs {against}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
