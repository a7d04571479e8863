"""The GPU path without a GPU: what ``precision`` and ``channels_last`` resolve to on each device, that the
training step runs under the autocast it names, and that the config refuses what it cannot run.

CI has no GPU, so the CUDA branch is checked where that is honest: the autocast context built for a CUDA
device (disabled here, but its device and dtype are what a GPU would run) and the resolution rules. The
same context on the CPU, where bf16 autocast works, shows the step really runs in the dtype it names."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from domgen.algorithms import ALGORITHMS, make_algorithm
from domgen.config import LossConfig, RunConfig
from domgen.config_check import validate
from domgen.engine.loop import autocast, prepare_model, resolve_precision, train_epoch
from domgen.errors import ConfigError
from tests.test_algorithm_contract import Toy, batches, toy_pool

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu_and_explicit_choices_stand():
    assert resolve_precision("auto", CUDA) == "bf16" and resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CUDA) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... disabling autocast" on this machine
        ctx = autocast(CUDA)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(CUDA, "fp32"), torch.autocast)


@pytest.mark.parametrize("precision, dtype", [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_training_step_runs_in_the_precision_it_names(precision, dtype):
    torch.manual_seed(0)
    model = Toy()
    seen = []
    model.h.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    algorithm = make_algorithm(ALGORITHMS.get("erm").Hparams(), LossConfig(), CPU).build(toy_pool())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_epoch(model, batches(algorithm, toy_pool(), 0, n=2), algorithm, optimizer, CPU, precision)
    assert seen == [dtype, dtype] and torch.isfinite(torch.tensor(out["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights


def test_channels_last_follows_the_setting_and_auto_leaves_cpu_models_alone():
    conv = lambda m: m[0].weight  # noqa: E731
    nhwc = prepare_model(nn.Sequential(nn.Conv2d(3, 8, 3)), CPU, "on")
    assert conv(nhwc).is_contiguous(memory_format=torch.channels_last) and not conv(nhwc).is_contiguous()
    for setting in ("auto", "off"):
        assert conv(prepare_model(nn.Sequential(nn.Conv2d(3, 8, 3)), CPU, setting)).is_contiguous()


def test_config_refuses_unknown_precision_and_memory_format():
    with pytest.raises(ConfigError, match=r"precision='fp16' \(auto, bf16 or fp32\).*channels_last='yes' \(auto, on or off\)"):
        validate(RunConfig(precision="fp16", channels_last="yes"))
