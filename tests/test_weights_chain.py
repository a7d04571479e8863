"""--weights reaches the root of a warm-start chain (A for F-T, A through K for U/V), so the same
computation has one hash and a different one another; loo's --weights trains A from them."""

from __future__ import annotations

import torch
import yaml

from conftest import TINY_SCALE
from domgen import run
from domgen.config import config_hash
from domgen.runs.registry import resolve_config
from domgen.runs.train import parent_config


def test_weights_pass_down_the_chain_to_its_root():
    k = resolve_config("K", "paper", 0, ["model.weights=none"])
    a = resolve_config("A", "paper", 0, ["model.weights=none"])
    assert parent_config(k).model.weights == "none"
    assert config_hash(parent_config(k), "d") == config_hash(a, "d")  # the run A --weights none would make
    assert config_hash(parent_config(k), "d") != config_hash(resolve_config("A", "paper", 0), "d")
    u = resolve_config("U", "paper", 0, ["model.weights=/w/r18.pth"])
    assert parent_config(u).exp == "K" and parent_config(parent_config(u)).exp == "A"
    assert parent_config(parent_config(u)).model.weights == "/w/r18.pth"
    # without --weights nothing changes: the parent keeps the preset's weights
    assert parent_config(resolve_config("K", "paper", 0)).model.weights == "imagenet"
    assert parent_config(resolve_config("K", "quick", 0)).model == resolve_config("A", "quick", 0).model
    # this process's settings that are not the run's identity go down the chain too (a parent trained inside
    # its child's command gets the child's thread budget, not an automatic one that rounds differently)
    k1 = resolve_config("K", "quick", 0, ["threads=1", "deterministic=true"])
    assert (parent_config(k1).threads, parent_config(k1).deterministic) == (1, True)
    assert config_hash(parent_config(k1), "d") == config_hash(resolve_config("A", "quick", 0), "d")


def test_weights_equal_to_the_presets_make_the_same_run():
    """quick starts from random weights: `train --exp K --preset quick --weights none` is the default run."""
    args = run.parser().parse_args(["train", "--exp", "K", "--preset", "quick", "--weights", "none"])
    plain = run.parser().parse_args(["train", "--exp", "K", "--preset", "quick"])
    from domgen.cli_common import build_config

    with_w, without = build_config(args), build_config(plain)
    assert with_w == without and config_hash(with_w, "d") == config_hash(without, "d")
    assert config_hash(parent_config(with_w), "d") == config_hash(parent_config(without), "d")


def test_loo_weights_initialise_the_baseline_it_trains(tiny_cache, tmp_path):
    """`loo --weights FILE` used to be parsed and dropped for A; now A's config names the file and its
    folder is the one `train --exp A --weights FILE` makes. (On 1/20 of the synthetic benchmark, tiny_cache.)"""
    from domgen.models import build_model

    torch.manual_seed(3)
    weights = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", "none").state_dict(), weights)
    out = tmp_path / "runs"
    argv = ["loo", "--holdout", "PH2", "--preset", "smoke", "--weights", str(weights), "--cache-dir", str(tiny_cache),
            "--scale", str(TINY_SCALE), "--workers", "0", "--out", str(out), "--device", "cpu", "--set", "threads=1"]
    assert run.main(argv) == 0
    configs = {p.parent.name.split("-")[0]: yaml.safe_load(p.read_text()) for p in out.glob("*/config.yaml")}
    assert sorted(configs) == ["A", "R"]
    assert configs["A"]["model"]["weights"] == configs["R"]["model"]["weights"] == str(weights)
    a_dir = next(out.glob("A-*"))
    expected = resolve_config("A", "smoke", 0, [f"model.weights={weights}", f"data.synthetic_scale={TINY_SCALE}"])
    assert a_dir.name == f"A-s0-{config_hash(expected, configs['A']['resolved']['data'])}"
