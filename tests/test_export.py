"""``export``: a run's model as TorchScript or ONNX, checked against PyTorch, with its preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from domgen.config import save_yaml
from domgen.data.labels import CLASSES
from domgen.engine.checkpoint import save_checkpoint
from domgen.runs.registry import resolve_config
from domgen.export import export_model, load_run_model
from domgen.models import build_model
from domgen.prune import apply_selection, count_params_macs, save_pruned
from domgen.run import main

SIZE = (3, 28, 28)  # the smoke preset's input


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_folder(path, pruned: bool):
    """A run folder as training leaves it: config.yaml and best.pt (and pruned.pt for a pruned run)."""
    path.mkdir()
    save_yaml(resolve_config("U" if pruned else "A", "smoke", 0), path / "config.yaml")
    torch.manual_seed(0)
    model = build_model("resnet18", "none").eval()
    if pruned:
        kept = {"g.layer1.0.conv1": list(range(10)), "g.layer4.1.conv1": list(range(0, 512, 4))}
        apply_selection(model, kept, torch.zeros(1, *SIZE))
        save_pruned(model, path / "pruned.pt")
    save_checkpoint(path / "best.pt", {"model": model.state_dict()})
    return model


def _probe(n: int) -> torch.Tensor:
    return torch.randn((n, *SIZE), generator=torch.Generator().manual_seed(42))


def test_torchscript_export_of_a_pruned_run_round_trips(tmp_path):
    model = _run_folder(tmp_path / "U-s0-abc", pruned=True)
    report = export_model(tmp_path / "U-s0-abc", "torchscript", latency_runs=3)
    assert report.pruned and report.model_path == tmp_path / "U-s0-abc" / "export" / "model.pt"
    # 54 inner channels of layer1.0 (9 * (64 + 64) + 2 each) and 384 of layer4.1 (9 * (512 + 512) + 2) gone.
    assert report.params == 11_180_103 - 54 * 1154 - 384 * 9218 == count_params_macs(model, SIZE)[0]
    assert report.max_abs_diff < 1e-4 and report.latency_ms > 0
    assert report.file_bytes == report.model_path.stat().st_size > 4 * report.params  # float32 weights inside
    loaded = torch.jit.load(str(report.model_path))
    x = _probe(3)  # another batch size than the check's
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    pre = json.loads(report.preprocessing_path.read_text())
    assert pre["input_size"] == [3, 28, 28] and pre["resize"] == [40, 40] and pre["center_crop"] == [28, 28]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    assert pre["class_names"] == list(CLASSES) and pre["exp"] == "U"


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    model = _run_folder(tmp_path / "A-s0-abc", pruned=False)
    report = export_model(tmp_path / "A-s0-abc", "onnx", out_dir=tmp_path / "deploy", latency_runs=3)
    assert not report.pruned and report.model_path == tmp_path / "deploy" / "model.onnx"
    assert report.params == 11_180_103 and report.max_abs_diff < 1e-4
    assert report.file_bytes > 4 * report.params  # the weights are in the file, not beside it
    session = ort.InferenceSession(str(report.model_path), providers=["CPUExecutionProvider"])
    x = _probe(5)  # the batch axis is dynamic
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)
    assert json.loads((tmp_path / "deploy" / "preprocessing.json").read_text())["input_size"] == [3, 28, 28]


def test_bad_run_paths_give_clear_errors(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_run_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a trained domgen run: it has no config.yaml or best.pt"):
        load_run_model(tmp_path / "empty")
    assert main(["export", str(tmp_path / "nope"), "--format", "torchscript"]) == 2
    assert f"error: {tmp_path / 'nope'}: no such run folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="onnx"):
        export_model(tmp_path / "empty", "tflite")


def test_export_cli_reports_size_latency_params_and_macs(tmp_path, capsys):
    model = _run_folder(tmp_path / "U-s0-abc", pruned=True)
    assert main(["export", str(tmp_path / "U-s0-abc"), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    out = capsys.readouterr().out
    params, macs = count_params_macs(model, SIZE)
    size_mb = (tmp_path / "ts" / "model.pt").stat().st_size / 1e6
    assert f"({size_mb:.2f} MB)" in out and str(tmp_path / "ts" / "preprocessing.json") in out
    assert f"pruned model: {params / 1e6:.3f}M parameters, {macs / 1e9:.4f} GMACs" in out
    assert "outputs match PyTorch" in out and "ms per image (1 thread)" in out
