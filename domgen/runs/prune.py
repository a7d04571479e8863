"""Driver for experiments U and V: DCP pruning of experiment K's best model, then CCSA fine-tuning.

Yoon et al. 2019 prune their best model (K: ResNet-18, weighted CCSA, nsec = a) with discrimination-
aware channel pruning (Zhuang et al. 2018): threshold 1e-4 keeps recall at 8.5M parameters (U), 1e-3
goes to 7.5M (V). DCP calibrates on a seeded sample of the training pool stratified by domain and
class, with its auxiliary stage heads fitted there first (``prepare_selection``). The pruned architecture is saved as ``pruned.pt`` (torch-pruning's state-dict helpers)
so a resumed or re-evaluated run rebuilds it; parameters, MACs and channels kept per block go into every
result line.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from domgen.config import RunConfig, save_yaml
from domgen.engine.checkpoint import load_checkpoint
from domgen.engine.trainer import BEST, Hooks, Trainer
from domgen.data.run_data import RunData
from domgen.runs.train import RunResult, finish_run, open_run, parent_config, run_context, run_train
from domgen.models import build_model
from domgen.prune import count_params_macs, fit_aux_heads, load_pruned, prune_model, save_pruned, stratified_sample
from domgen.seeds import derive_seed

PRUNED = "pruned.pt"


def calibration_positions(data: RunData, n: int, seed: int) -> np.ndarray:
    """Manifest positions of a seeded sample of ``n`` pool images, stratified by (domain, class)
    (``domgen.prune.calibration``); the pool's manifest order would show only the first sources."""
    strata = data.manifest["domain"].to_numpy()[data.pool].astype(str) + "/" + data.labels[data.pool].astype(str)
    return data.pool[stratified_sample(strata, n, seed)]


def unit_progress(hooks: Hooks, tag: str):
    """A DCP progress callback that logs one line as each layer's channel selection starts (a selection
    runs for minutes on a CPU with nothing else to show)."""
    seen: list[str] = []

    def progress(unit: str, kept: int, total: int, loss: float) -> None:
        if not seen or seen[-1] != unit:
            seen.append(unit)
            hooks.log(f"{tag} DCP: selecting the channels of {unit} ({total} inputs; layer {len(seen)})")

    return progress


def prepare_selection(cfg: RunConfig, probe: Trainer, data: RunData, model, hooks: Hooks):
    """The calibration batches (``prune.batches`` of the stratified sample, eval-transformed, on the
    device) and, for ``prune.disc_head=aux``, DCP's auxiliary heads fitted on them."""
    bs = cfg.optim.batch_size
    order = calibration_positions(data, cfg.prune.batches * bs, derive_seed(cfg.seed, "prune-calibration"))
    batches = list(itertools.islice(probe.inputs.eval_batches(order, bs), cfg.prune.batches))
    mix = data.manifest["domain"].iloc[order].value_counts()
    hooks.log(f"[{cfg.exp} s{cfg.seed}] calibration sample: " + ", ".join(f"{d} {c}" for d, c in mix.items()))
    heads = None
    if cfg.prune.method == "dcp" and cfg.prune.disc_weight and cfg.prune.disc_head == "aux":
        heads = fit_aux_heads(model, batches, cfg.prune.aux_steps, cfg.prune.aux_lr, derive_seed(cfg.seed, "prune-aux-heads"))
        fits = ", ".join(f"{s.removeprefix('g.')} {heads.loss_before[s]:.3f} -> {heads.loss_after[s]:.3f}" for s in heads.heads)
        hooks.log(f"[{cfg.exp} s{cfg.seed}] auxiliary heads fitted ({cfg.prune.aux_steps} steps), calibration cross-entropy: {fits}")
    return batches, heads


def _pruned_model(cfg: RunConfig, data: RunData, run_dir, hooks: Hooks, parent_state) -> tuple[torch.nn.Module, dict]:
    """Load ``pruned.pt`` when a previous attempt got that far, else prune K's best model now."""
    path = run_dir / PRUNED
    if path.exists():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return load_pruned(cfg.model.arch, path), payload["meta"]
    model = build_model(cfg.model.arch, "none")
    model.load_state_dict(parent_state)
    probe = Trainer(cfg, data, run_dir, {}, hooks, model=model)  # only for its inputs and device
    size = (3, cfg.transform.size, cfg.transform.size)
    params0, macs0 = count_params_macs(model, size)
    example = torch.zeros((1, *size), device=probe.device)
    batches, heads = prepare_selection(cfg, probe, data, model, hooks)
    kept = prune_model(model, cfg.prune, batches, example, progress=unit_progress(hooks, f"[{cfg.exp} s{cfg.seed}]"),
                       heads=heads, seed=derive_seed(cfg.seed, "prune-aux-heads"))
    params, macs = count_params_macs(model, size)
    meta = {"params_before": params0, "macs_before": macs0, "params": params, "macs": macs, "channels_kept": kept,
            "prune_method": cfg.prune.method, "prune_threshold": cfg.prune.threshold,
            "prune_disc_head": cfg.prune.disc_head if cfg.prune.method == "dcp" else None}
    save_pruned(model.cpu(), path, meta=meta)
    hooks.log(f"[{cfg.exp} s{cfg.seed}] pruned: {params0 / 1e6:.2f}M -> {params / 1e6:.2f}M params, {macs0 / 1e9:.3f} -> {macs / 1e9:.3f} GMACs")
    return model, meta


def run_prune(cfg: RunConfig, hooks: Hooks = Hooks(), resume: bool = False, force: bool = False,
              restart: bool = False, wait: bool = False) -> RunResult:
    with open_run(cfg, hooks, resume, force, restart=restart, wait=wait) as (data, run_dir, finished):
        if finished is not None:
            return finished
        parent = run_train(parent_config(cfg), hooks, resume=resume, catalog=data.catalog, wait=True)
        parent_state = load_checkpoint(parent.run_dir / BEST)["model"]
        model, meta = _pruned_model(cfg, data, run_dir, hooks, parent_state)
        context = run_context(cfg, data, run_dir) | meta
        save_yaml(cfg, run_dir / "config.yaml", extra={"resolved": context})
        # A fresh optimizer over the pruned model's parameters (torch-pruning replaced the old ones).
        return finish_run(Trainer(cfg, data, run_dir, context, hooks, model=model), resume)
