"""Export a run's model for deployment: ONNX or TorchScript, with its preprocessing written beside it.

Yoon et al. (2019) prune for mobile diagnosis; this is the step from a run folder to a file a phone or
a server loads. ``export_model(run_dir, fmt)`` takes a run's ``best.pt`` (in the pruned architecture
when the run has a ``pruned.pt``, as U and V do), writes ``model.onnx`` or ``model.pt`` and
``preprocessing.json`` (what an image must go through first: resize, centre crop, scale, mean/std,
RGB NCHW, and the class names in output order), then checks the exported file against PyTorch on a
batch (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and measures single-image CPU latency.
Nothing here prints; ``domgen.run export`` does.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from domgen.atomic import atomic_path, write_text_atomic
from domgen.config import RunConfig, load_yaml
from domgen.data.labels import CLASSES
from domgen.engine.checkpoint import load_checkpoint
from domgen.models import build_model, input_normalization
from domgen.prune import count_params_macs, load_pruned

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
PRUNED, BEST = "pruned.pt", "best.pt"  # the names domgen.runs.prune and the trainer write


class ExportMismatch(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


@dataclass
class ExportReport:
    model_path: Path
    preprocessing_path: Path
    format: str
    pruned: bool
    file_bytes: int
    params: int
    macs: int
    max_abs_diff: float  # exported vs PyTorch logits on the check batch
    latency_ms: float  # median single-image CPU forward of the exported model
    threads: int


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, RunConfig, bool]:
    """(model in eval mode on CPU with the run's best weights, the run's config, whether it is pruned)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (a run folder is e.g. runs/K-s0-<hash>)")
    missing = [name for name in ("config.yaml", BEST) if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a trained domgen run: it has no {' or '.join(missing)}")
    cfg = load_yaml(run_dir / "config.yaml")
    pruned = (run_dir / PRUNED).is_file()
    model = load_pruned(cfg.model.arch, run_dir / PRUNED) if pruned else build_model(cfg.model.arch, "none", len(run_classes(run_dir)))
    model.load_state_dict(load_checkpoint(run_dir / BEST)["model"])
    return model.eval(), cfg, pruned


def run_classes(run_dir: Path) -> list[str]:
    """The run's label space as its config.yaml records it (``classes``); runs from before that key
    trained on the seven dermoscopy classes."""
    recorded = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("classes")
    return list(recorded) if recorded else list(CLASSES)


def preprocessing(cfg: RunConfig, classes: list[str] | None = None) -> dict[str, Any]:
    """The evaluation transform of ``domgen.data.transforms.reference_eval_transform`` as data."""
    t, norm = cfg.transform, input_normalization(cfg.model.arch)
    return {
        "input_size": [3, t.size, t.size],
        "layout": "NCHW, RGB, float32",
        "steps": [f"resize to {t.resize}x{t.resize} (bilinear, antialiased)", f"centre crop {t.size}x{t.size}",
                  "divide by 255", "subtract mean, divide by std (per channel)"],
        "resize": [t.resize, t.resize],
        "center_crop": [t.size, t.size],
        "mean": list(norm.mean),  # the backbone's own (ImageNet's for the ResNets)
        "std": list(norm.std),
        "class_names": list(classes or CLASSES),
        "output": "logits [N, num_classes]; softmax gives probabilities",
        "arch": cfg.model.arch,
        "exp": cfg.exp,
        "seed": cfg.seed,
        "preset": cfg.preset,
    }


def export_model(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None, check_batch: int = 4,
                 latency_runs: int = 30, atol: float = 1e-4, rtol: float = 1e-3) -> ExportReport:
    """Write ``<out_dir>/model.onnx|model.pt`` and ``preprocessing.json`` (default ``out_dir``:
    ``<run>/export``), check the file against PyTorch on ``check_batch`` seeded random images
    (``ExportMismatch`` beyond ``atol``/``rtol``) and time ``latency_runs`` single-image forwards."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {sorted(FORMATS)}, got {fmt!r}")
    model, cfg, pruned = load_run_model(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    path = out_dir / FORMATS[fmt]
    size = (3, cfg.transform.size, cfg.transform.size)
    batch = torch.randn((check_batch, *size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch).numpy()
    run = _export_onnx(model, batch, path) if fmt == "onnx" else _export_torchscript(model, batch, path)
    got = run(batch.numpy())
    diff = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, atol=atol, rtol=rtol):
        raise ExportMismatch(f"{path}: outputs differ from PyTorch by up to {diff:.3g} (atol {atol}, rtol {rtol})")
    pre = out_dir / "preprocessing.json"
    write_text_atomic(pre, json.dumps(preprocessing(cfg, run_classes(run_dir)), indent=1))
    params, macs = count_params_macs(model, size)
    return ExportReport(path, pre, fmt, pruned, path.stat().st_size, params, macs, diff,
                        _latency_ms(run, batch[:1].numpy(), latency_runs), torch.get_num_threads())


def _export_torchscript(model: nn.Module, batch: torch.Tensor, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    # torch.jit is deprecated in favour of torch.export, but TorchScript is still what LibTorch and
    # PyTorch Mobile load; its FutureWarnings say nothing about this file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, batch[:1])
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    return run


def _export_onnx(model: nn.Module, batch: torch.Tensor, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort  # only ONNX export needs it

    # torch's current exporter (torch.export + onnxscript); weights inside the one file, batch dynamic.
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (batch[:1],), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True,
                          external_data=False, verbose=False, report=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same CPU threads as the PyTorch side
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"image": x.astype(np.float32)})[0]

    return run


def _latency_ms(run: Callable[[np.ndarray], np.ndarray], image: np.ndarray, n: int) -> float:
    """Median wall time of one forward on one image, after three warm-up calls."""
    for _ in range(3):
        run(image)
    times = []
    for _ in range(max(1, n)):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)
