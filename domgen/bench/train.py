"""Training steps per second of an algorithm (weighted CCSA, the paper's, by default) with the full input
pipeline vs on tensors already on the device.

The ceiling of a training run is the model alone: the step on batches that already sit on the device.
``bench_train`` measures both on the same model, optimizer and loss, so the ratio says how much the
input pipeline (memmap gather, transfer, batched augmentation) costs. It runs as training does
(``precision`` and ``channels_last`` default to ``auto``: bf16 autocast and channels_last on CUDA, fp32
elsewhere); the target on a GPU is a ratio >= 0.9. ``bench_matrix`` repeats it for every precision x
memory format (and, with ``compile``, under ``torch.compile``) and each architecture, with the peak GPU
memory of each (``torch.cuda.max_memory_allocated``; None on a CPU).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from domgen.bench.contention import busy_processes, conditions
from domgen.bench.pipeline import IMAGE_SIZE, _machine, make_synthetic_tree
from domgen.algorithms import ALGORITHMS, make_algorithm
from domgen.config import DataConfig, TransformConfig
from domgen.data.samplers import TrainPool
from domgen.engine.inputs import Inputs
from domgen.engine.loop import prepare_model, resolve_channels_last, resolve_precision, train_epoch
from domgen.engine.trainer import pick_device
from domgen.models import build_model
from domgen.threads import thread_budget

QUICK = {"n_images": 48, "sizes": (130, 60, 45, 13), "batch_size": 8, "n_steps": 3}
DOMAINS = np.array(["HAM", "DMF", "MSK", "PH2"])


def _pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random labels over the 7 classes and a primary plus three secondary domains (the primary has
    every class, so the sampler's fallback is always defined)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(7), rng.integers(0, 7, n - 7)])
    domains = np.where(np.arange(n) < n // 2, "HAM", DOMAINS[1:][rng.integers(0, 3, n)])
    return labels, domains


def _steps_per_s(model, batches, algorithm, optimizer, device, n_steps: int, precision: str = "auto") -> float:
    it = iter(batches)
    train_epoch(model, itertools.islice(it, 2), algorithm, optimizer, device, precision)  # warm-up: allocator, cudnn, compile
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    train_epoch(model, itertools.islice(it, n_steps), algorithm, optimizer, device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n_steps / (time.perf_counter() - t0)


def _both(model, inputs, algorithm, optimizer, dev, batch_size: int, n_steps: int, precision: str = "auto") -> dict:
    """Steps/s through the full input path and on resident tensors, under the current load, and the
    peak device memory over both (CUDA only)."""
    epochs = (algorithm.batches(e, batch_size) for e in itertools.count())
    draws = list(itertools.islice(itertools.chain.from_iterable(epochs), n_steps + 2))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    piped = _steps_per_s(model, inputs.batches(draws, seed=0), algorithm, optimizer, dev, n_steps, precision)
    resident = itertools.repeat(next(inputs.batches(draws[:1], seed=0)))  # one batch, already on the device
    model_only = _steps_per_s(model, resident, algorithm, optimizer, dev, n_steps, precision)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return {"pipeline_steps_per_s": piped, "model_only_steps_per_s": model_only, "ratio": piped / model_only,
            "peak_gpu_mem_mb": peak}


def bench_train(root: Path, n_images: int = 1024, batch_size: int = 32, sizes=(650, 300, 224, 64), n_steps: int = 30,
                arch: str = "resnet18", workers: int = 2, device: str = "auto", quick: bool = False,
                contention: int = 0, algorithm: str = "ccsa", precision: str = "auto", channels_last: str = "auto",
                compile: bool = False) -> dict:
    """Steps/s of ``algorithm`` at its defaults (batches of ``batch_size`` sampled units: CCSA's pairs) with
    the cached pipeline and on device tensors; ``contention > 0`` measures both again beside that many busy
    processes (under ``"contended"``)."""
    if quick:
        n_images, sizes, batch_size, n_steps = QUICK["n_images"], QUICK["sizes"], QUICK["batch_size"], QUICK["n_steps"]
    dev = pick_device(device)
    budget = thread_budget(True, workers)
    if dev.type == "cpu":  # the same rule as training
        torch.set_num_threads(budget.torch)
    root = Path(root)
    paths = make_synthetic_tree(root, n_images, IMAGE_SIZE)
    labels, domains = _pool(n_images)
    model = prepare_model(build_model(arch, "none"), dev, channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    pool = TrainPool.of(labels, domains, num_classes=7, seed=0, primary="HAM")
    method = make_algorithm(ALGORITHMS.get(algorithm).Hparams(), device=dev).build(pool)
    if compile:  # in place, so forward_both's call of the backbone runs compiled and state_dict keys stay
        model.g.compile()
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=root, prefix="cache_") as cache:
        t0 = time.perf_counter()
        inputs = Inputs(paths, labels, TransformConfig(*sizes), DataConfig(cache_dir=cache, workers=workers), dev,
                        domains=pool.domain_index(domains))
        build_s = time.perf_counter() - t0
        for name, n_busy in conditions(contention).items():
            with busy_processes(n_busy):
                out[name] = _both(model, inputs, method, optimizer, dev, batch_size, n_steps, precision)
            out[name]["busy_processes"] = n_busy
    return {
        **out.pop("idle"), **out,
        "cache_build_s": build_s,
        "arch": arch,
        "algorithm": algorithm,
        "batch_pairs": batch_size,  # sampled units per step (the key predates other algorithms than CCSA)
        "batch_unit": {1: "images", 2: "pairs"}.get(method.images_per_sample, "samples"),
        "sizes": list(sizes),
        "n_steps": n_steps,
        "workers": workers,
        "precision": resolve_precision(precision, dev),
        "channels_last": resolve_channels_last(channels_last, dev),
        "compiled": compile,
        **_machine(dev), "usable_cores": budget.cores,
    }


def bench_matrix(root: Path, archs=("resnet18",), precisions=("bf16", "fp32"), channels_last=("on", "off"),
                 compile: bool = False, **kw) -> list[dict]:
    """``bench_train`` for every architecture x precision x memory format (x compiled, when ``compile``):
    one row each, in that order. On a GPU this is the table the README asks for (steps/s, ratio and peak
    memory per architecture at batch 32); on a CPU bf16 runs through CPU autocast."""
    rows = []
    for arch, prec, cl, comp in itertools.product(archs, precisions, channels_last, (False, True) if compile else (False,)):
        rows.append(bench_train(root, arch=arch, precision=prec, channels_last=cl, compile=comp, **kw))
    return rows
