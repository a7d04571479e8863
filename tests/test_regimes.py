"""Fine-tuning regimes (domgen.regimes) on the contract test's toy model, whose blocks are, bottom-up,
layer1 (conv), layer2 (conv), fc (linear), bn (BatchNorm1d), then the head: which parameters train when,
at which rates, the L2-SP penalty and the Auto-RGN / Auto-SNR rates against hand computations, LP's frozen
statistics, LP-FT's head, ``ft`` bit for bit today's training, and every regime x {erm, ccsa} through two
steps, a weights-only checkpoint and a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domgen.algorithms import ALGORITHMS, make_algorithm
from domgen.config import LossConfig, RunConfig, apply_overrides, config_hash, from_dict, to_dict
from domgen.config_check import validate
from domgen.engine.checkpoint import rng_state, set_rng_state
from domgen.engine.loop import train_epoch
from domgen.errors import ConfigError
from domgen.regimes import REGIMES, make_regime
from domgen.regimes.lora import peft_available
from tests.test_algorithm_contract import CPU, IMAGES, LABELS, Toy, batches, same, through_checkpoint, toy_pool

BLOCKS = ["layer1", "layer2", "fc", "bn", "head"]
EPOCHS = 12
LR = 1e-2


def toy_validation(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th batch of a stand-in validation stream (4 toy images drawn by k): a function of k alone, as the
    trainer's ``ValidationStream`` is."""
    idx = np.random.default_rng(k).choice(len(LABELS), 4, replace=False)
    return IMAGES[idx], torch.as_tensor(LABELS[idx])


def setup(regime: str, algorithm: str = "erm", lr: float = LR, **hp):
    """The trainer's wiring in miniature: model, regime attached (and handed validation batches), algorithm
    attached, AdamW on the regime's groups."""
    torch.manual_seed(0)
    model = Toy()
    reg = make_regime(REGIMES.get(regime).Hparams(**hp))
    reg.attach(model)
    reg.use_validation(toy_validation)
    alg = make_algorithm(ALGORITHMS.get(algorithm).Hparams(), LossConfig(), CPU).build(toy_pool())
    alg.attach(model)
    optimizer = torch.optim.AdamW(reg.param_groups(model, alg.param_groups(model), lr), lr=lr, weight_decay=1e-3)
    return model, optimizer, alg, reg


def run_epoch(model, optimizer, alg, reg, epoch: int, n: int | None = 2) -> dict:
    alg.begin_epoch(epoch, EPOCHS)
    if reg is not None:
        reg.begin_epoch(epoch, EPOCHS, model)
    return train_epoch(model, batches(alg, toy_pool(), epoch, n), alg, optimizer, CPU, regime=reg)


def trainable_blocks(model) -> set[str]:
    names = {n.split(".")[1] if n.startswith("g.") else "head" for n, p in model.named_parameters() if p.requires_grad}
    return names


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- which parameters train, and at which rates --------------------------------------------------------
def test_toy_blocks_are_the_layers_bottom_up_then_the_head():
    _, _, _, reg = setup("llrd")
    assert [b.name for b in reg.blocks] == BLOCKS


def test_gradual_unfreezing_trains_the_head_then_one_more_block_every_epochs():
    model, _, _, reg = setup("gradual_unfreeze", every=2, factor=2.0)
    expected = {0: ["head"], 1: ["head"], 2: ["head", "bn"], 3: ["head", "bn"], 4: ["head", "bn", "fc"],
                6: ["head", "bn", "fc", "layer2"], 8: BLOCKS, 11: BLOCKS}
    for epoch, names in expected.items():
        reg.begin_epoch(epoch, EPOCHS, model)
        assert trainable_blocks(model) == set(names), epoch


def test_gradual_unfreezing_leaves_frozen_blocks_and_their_statistics_alone():
    model, optimizer, alg, reg = setup("gradual_unfreeze", every=2)
    before = snapshot(model)
    run_epoch(model, optimizer, alg, reg, 2)  # head and bn train; bn's running statistics update
    after = model.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == key.startswith(("h.", "g.bn.")), key
    assert model.g.layer1.training is False and model.g.bn.training is True


@pytest.mark.parametrize("regime, hp, mults", [
    ("llrd", {"decay": 0.5}, [1, 0.5, 0.25, 0.125, 0.0625]),
    ("gradual_unfreeze", {"factor": 4.0}, [1, 0.25, 0.0625, 0.25 ** 3, 0.25 ** 4]),
])
def test_block_groups_and_their_rates_head_first(regime, hp, mults):
    model, optimizer, _, _ = setup(regime, "dann", **hp)  # DANN: the discriminator is a group of its own
    groups = optimizer.param_groups
    assert [g.get("unit") for g in groups] == BLOCKS[::-1] + [None]
    assert [g["lr"] for g in groups[:5]] == pytest.approx([LR * m for m in mults], rel=1e-12)
    assert groups[5]["lr"] == LR and {id(p) for p in groups[5]["params"]} == {id(p) for p in _nets(optimizer, model)}
    assert [len(g["params"]) for g in groups[:5]] == [2, 2, 2, 2, 2]  # weight and bias of each
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    optimizer.step()
    scheduler.step()  # the schedule scales every group and keeps the ratios
    assert [g["lr"] for g in groups[:5]] == pytest.approx([0.1 * LR * m for m in mults], rel=1e-12)


def _nets(optimizer, model):
    mine = {id(p) for p in model.parameters()}
    return [p for g in optimizer.param_groups for p in g["params"] if id(p) not in mine]


def test_bitfit_trains_biases_and_the_head_only():
    model, optimizer, alg, reg = setup("bitfit")
    run_epoch(model, optimizer, alg, reg, 0)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"g.layer1.bias", "g.layer2.bias", "g.fc.bias", "g.bn.bias", "h.weight", "h.bias"}


# ---- L2-SP ---------------------------------------------------------------------------------------------
def test_l2sp_penalty_equals_the_hand_computation_and_replaces_weight_decay():
    model, optimizer, _, reg = setup("l2sp", alpha=0.3, beta=0.02)
    w0 = {n: p.detach().numpy().astype(np.float64).copy() for n, p in model.named_parameters()}
    shift = {n: 0.01 * (i + 1) for i, (n, _) in enumerate(model.g.named_parameters())}
    with torch.no_grad():
        for n, p in model.g.named_parameters():
            p.add_(shift[n])
    sp = sum(shift[n] ** 2 * w0["g." + n].size for n in shift)  # ||w - w0||^2: each entry moved by shift[n]
    head = (w0["h.weight"] ** 2).sum() + (w0["h.bias"] ** 2).sum()
    penalty = reg.penalty(model)
    assert penalty.item() == pytest.approx(0.3 / 2 * sp + 0.02 / 2 * head, rel=1e-5)
    penalty.backward()  # d/dw: alpha (w - w0) on the backbone, beta w on the head
    assert np.allclose(model.g.fc.weight.grad.numpy(), 0.3 * shift["fc.weight"], rtol=1e-4)
    assert np.allclose(model.h.weight.grad.numpy(), 0.02 * w0["h.weight"], rtol=1e-5)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)


def test_l2sp_refuses_a_checkpoint_trained_towards_other_weights():
    _, _, _, reg = setup("l2sp")
    state = through_checkpoint(reg.state_dict())
    reg.load_state_dict(state)  # the same w0: fine
    with torch.no_grad():
        reg.anchor[0].add_(1.0)
    with pytest.raises(ValueError, match="different initial weights"):
        reg.load_state_dict(state)


# ---- Auto-RGN / Auto-SNR -------------------------------------------------------------------------------
def _constructed_step(regime: str):
    """SGD (lr 1, no momentum) on the regime's groups after a constructed gradient: the update of each
    tensor is -rate x gradient, so the rates can be read back."""
    torch.manual_seed(0)
    model = Toy()
    reg = make_regime(REGIMES.get(regime).Hparams())
    reg.attach(model)
    with torch.no_grad():
        model.h.bias.zero_()  # a zero tensor: its RGN is undefined, so it trains at the full rate
    optimizer = torch.optim.SGD(reg.param_groups(model, [{"params": list(model.parameters())}], 1.0), lr=1.0)
    gen = torch.Generator().manual_seed(1)
    grads = {n: torch.randn(p.shape, generator=gen) * (i + 1) for i, (n, p) in enumerate(model.named_parameters())}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    reg.step(optimizer)
    rates = {}
    for n, p in model.named_parameters():
        g = grads[n].flatten()
        step = (before[n] - p.detach()).flatten()
        rates[n] = float((step @ g) / (g @ g))  # the least-squares rate of -rate x g
        assert torch.allclose(step, rates[n] * g, atol=1e-6), n
    assert all(group["lr"] == 1.0 for group in optimizer.param_groups)  # restored after the step
    return model, before, grads, rates


def test_auto_rgn_rates_are_relative_gradient_norms_over_the_largest():
    _, before, grads, rates = _constructed_step("auto_rgn")
    zero = {n for n in grads if not before[n].any()}
    assert zero == {"g.bn.bias", "h.bias"}  # BatchNorm's shift starts at 0; the head's bias was zeroed
    rgn = {n: np.linalg.norm(grads[n].numpy()) / np.linalg.norm(before[n].numpy()) for n in grads if n not in zero}
    top = max(rgn.values())
    for n, r in rgn.items():
        assert rates[n] == pytest.approx(r / top, rel=1e-5), n
    assert all(rates[n] == pytest.approx(1.0) for n in zero)


def test_auto_snr_rates_are_signal_to_noise_over_the_largest():
    _, _, grads, rates = _constructed_step("auto_snr")
    snr = {}
    for n, g in grads.items():
        g = g.numpy().astype(np.float64)
        snr[n] = (g * g / (g.var(axis=0, ddof=1, keepdims=True) + 1e-8)).mean()
    top = max(snr.values())
    for n, s in snr.items():
        assert rates[n] == pytest.approx(s / top, rel=1e-4), n


# ---- LP and LP-FT --------------------------------------------------------------------------------------
def test_linear_probing_keeps_the_backbone_and_its_batchnorm_statistics():
    model, optimizer, alg, reg = setup("lp")
    g0, h0 = snapshot(model.g), snapshot(model.h)
    run_epoch(model, optimizer, alg, reg, 0)
    assert model.g.training is False and model.h.training is True
    assert all(torch.equal(g0[k], v) for k, v in model.g.state_dict().items())  # running_mean/var, counts too
    assert not torch.equal(h0["weight"], model.h.weight)


def test_lp_ft_fine_tunes_from_the_probe_head():
    model, optimizer, alg, reg = setup("lp_ft", lp_epochs=1)
    g0, h0 = snapshot(model.g), snapshot(model.h)
    run_epoch(model, optimizer, alg, reg, 0)  # the probe
    probe = snapshot(model.h)
    assert all(torch.equal(g0[k], v) for k, v in model.g.state_dict().items())
    assert not torch.equal(probe["weight"], h0["weight"])
    reg.begin_epoch(1, EPOCHS, model)  # fine-tuning starts: everything trains, from the probe's head
    assert trainable_blocks(model) == set(BLOCKS)
    assert all(torch.equal(probe[k], v) for k, v in model.h.state_dict().items())
    run_epoch(model, optimizer, alg, reg, 1)
    assert model.g.training is True
    assert not torch.equal(g0["fc.weight"], model.g.fc.weight) and not torch.equal(g0["bn.running_mean"], model.g.bn.running_mean)


# ---- ft is today's training, bit for bit ---------------------------------------------------------------
def test_ft_is_todays_training_bit_for_bit():
    model, optimizer, alg, reg = setup("ft")
    torch.manual_seed(0)
    ref_model = Toy()
    ref_alg = make_algorithm(ALGORITHMS.get("erm").Hparams(), LossConfig(), CPU).build(toy_pool())
    ref_opt = torch.optim.AdamW(ref_alg.param_groups(ref_model), lr=LR, weight_decay=1e-3)
    assert len(optimizer.param_groups) == 1 and "unit" not in optimizer.param_groups[0]
    for epoch in range(3):
        ours = run_epoch(model, optimizer, alg, reg, epoch, n=None)
        ref_alg.begin_epoch(epoch, EPOCHS)
        theirs = train_epoch(ref_model, batches(ref_alg, toy_pool(), epoch), ref_alg, ref_opt, CPU)
        assert ours == theirs
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))


# ---- every regime with ERM and CCSA: two steps, state, resume --------------------------------------------
USABLE = [r for r in REGIMES.names() if r != "lora"]  # LoRA adapts ViTs, not the toy: its own test below
SHORT = {"lp_ft": {"lp_epochs": 1}, "gradual_unfreeze": {"every": 1}}  # the resume crosses a switch
CASES = [(r, a) for r in USABLE for a in ("erm", "ccsa")]


@pytest.mark.parametrize("regime, algorithm", CASES)
def test_two_steps_are_finite_and_move_the_model(regime, algorithm):
    model, optimizer, alg, reg = setup(regime, algorithm, **SHORT.get(regime, {}))
    before = snapshot(model)
    out = run_epoch(model, optimizer, alg, reg, 0)
    assert np.isfinite(out["loss"]) and out["loss"] > 0 and all(np.isfinite(v) for v in out.values())
    assert not torch.equal(before["h.weight"], model.h.weight)
    assert ("regime_penalty" in out) == (regime == "l2sp")


@pytest.mark.parametrize("regime, algorithm", CASES)
def test_resume_equals_uninterrupted(regime, algorithm):
    hp = SHORT.get(regime, {})
    model, optimizer, alg, reg = setup(regime, algorithm, **hp)
    run_epoch(model, optimizer, alg, reg, 0, n=None)
    saved = through_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "algorithm": alg.state_dict(), "regime": reg.state_dict(), "rng": rng_state()})
    straight = run_epoch(model, optimizer, alg, reg, 1, n=None)

    model2, optimizer2, alg2, reg2 = setup(regime, algorithm, **hp)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    alg2.load_state_dict(saved["algorithm"])
    reg2.load_state_dict(saved["regime"])
    assert same(through_checkpoint(reg2.state_dict()), saved["regime"])
    set_rng_state(saved["rng"])
    resumed = run_epoch(model2, optimizer2, alg2, reg2, 1, n=None)
    assert resumed == straight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


# ---- configuration -------------------------------------------------------------------------------------
def test_regime_section_switches_class_and_round_trips():
    cfg = apply_overrides(RunConfig(), ["regime.lp_epochs=5", "regime.name=lp_ft"])  # the name applies first
    assert cfg.regime.name == "lp_ft" and cfg.regime.lp_epochs == 5
    assert from_dict(to_dict(cfg)) == cfg
    assert config_hash(cfg) != config_hash(RunConfig())
    assert config_hash(apply_overrides(RunConfig(), ["regime.name=ft"])) == config_hash(RunConfig())
    with pytest.raises(ConfigError, match="regime 'ft' has no hyperparameter 'lp_epochs'"):
        apply_overrides(RunConfig(), ["regime.lp_epochs=5"])
    with pytest.raises(ConfigError, match="regime.decay"):
        validate(apply_overrides(RunConfig(), ["regime.name=llrd", "regime.decay=0"]))


@pytest.mark.skipif(peft_available(), reason="peft is installed")
def test_lora_without_peft_is_refused_with_the_install_command():
    with pytest.raises(ConfigError, match="pip install peft"):
        validate(apply_overrides(RunConfig(), ["regime.name=lora"]))
    with pytest.raises(ConfigError, match="pip install peft"):
        make_regime(REGIMES.get("lora").Hparams()).attach(Toy())


@pytest.mark.skipif(not peft_available(), reason="peft is not installed")
def test_lora_trains_only_the_rank_r_adapters_and_the_head_and_starts_from_the_model():
    from domgen.models import build_model

    torch.manual_seed(0)
    model = build_model("vit_tiny", "none", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    base = {k: v.detach().clone() for k, v in model.g.state_dict().items()}
    regime = make_regime(REGIMES.get("lora").Hparams(rank=4))
    regime.attach(model)
    regime.begin_epoch(0, 1, model)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    depth, dim = len(model.g.blocks), model.h.in_features  # ViT-Tiny: 12 blocks of width 192
    # per block, qkv (192 -> 576) gains A [4, 192] and B [576, 4]; the head is 192 x 3 + 3
    assert sum(trainable.values()) == depth * 4 * (dim + 3 * dim) + dim * 3 + 3
    assert all("lora_" in n or n.startswith("h.") for n in trainable)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)  # B starts at zero: the adapted model is the model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    opt.step()
    after = model.g.state_dict()
    renamed = {k: k.replace(".qkv.", ".qkv.base_layer.") if ".qkv." in k else k for k in base}  # peft wraps qkv
    assert all(torch.equal(after[renamed[k]], v) for k, v in base.items())  # every pretrained weight stays


# ---- end to end at the smoke preset ----------------------------------------------------------------------
def test_a_smoke_run_with_lp_ft_records_its_regime_and_keeps_it_in_last_pt(smoke_cache, tmp_path):
    from domgen.engine.checkpoint import load_checkpoint
    from domgen.engine.logging import read_results
    from domgen.runs.registry import resolve_config
    from domgen.runs.train import run_train

    cfg = resolve_config("A", "smoke", 0, [f"data.cache_dir={smoke_cache}", "data.workers=0", "threads=1",
                                           f"out={tmp_path}", "regime.name=lp_ft", "regime.lp_epochs=1"])
    result = run_train(cfg)
    rows = read_results(result.run_dir)
    assert rows and all(r["regime"] == "lp_ft" and r["regime_lp_epochs"] == 1 for r in rows)
    last = load_checkpoint(result.run_dir / "last.pt", CPU)
    assert last["epoch"] == 2 and last["regime"] == {}
    # epoch 1 probed, epoch 2 fine-tuned: AdamW counted twice the steps for the head as for the backbone
    names = [k for k in last["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    steps = {names[i]: int(st["step"]) for i, st in last["optimizer"]["state"].items()}
    assert len(steps) == len(names) and {steps["h.weight"], steps["h.bias"]} == {2 * steps["g.conv1.weight"]}
    assert {v for k, v in steps.items() if k.startswith("g.")} == {steps["g.conv1.weight"]}


def test_list_regimes_output_is_quoted_verbatim_in_the_readme(capsys):
    from tests.test_readme import QUOTED
    from domgen import run

    assert run.main(["list", "regimes"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == QUOTED["regimes"]


@pytest.mark.parametrize("arch, names", [
    ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("timm:densenet121", ["features.conv0", "features.denseblock1", "features.transition1", "features.denseblock2",
                          "features.transition2", "features.denseblock3", "features.transition3", "features.denseblock4", "head"]),
    ("timm:vit_tiny_patch16_224", ["stem"] + [f"blocks.{i}" for i in range(12)] + ["head"]),
])
def test_real_backbones_split_into_their_named_blocks(arch, names):
    from domgen.models import build_model
    from domgen.regimes import model_blocks

    model = build_model(arch, "none", 7)
    blocks = model_blocks(model)
    assert [b.name for b in blocks] == names
    # the BatchNorm after DenseNet's first conv, and the final norm, join their neighbours
    assert sum(len(b.params) for b in blocks) == len(list(model.parameters()))
