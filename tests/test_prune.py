"""Channel pruning on ResNet-18 (CPU, 32 x 32 images): DCP selection on constructed cases, physical
removal with exact hand-computed parameter and MAC counts, save/load round trip, importance baselines."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from domgen.config import PruneConfig
from domgen.seeds import derive_seed
from domgen.models import build_model
from domgen.prune import (
    AuxHead,
    HeadFit,
    apply_selection,
    count_params_macs,
    fit_aux_heads,
    load_pruned,
    prunable_units,
    prune_by_importance,
    prune_model,
    save_pruned,
    select_channels_dcp,
    stratified_sample,
    sweep_channels_dcp,
)
from domgen.prune.heads import stage_outputs

R18_PARAMS_7 = 11_180_103  # 11,176,512 backbone + 512 * 7 + 7 head
R18_PARAMS_1000 = 11_689_512  # torchvision's published count
# (unit, block input channels, inner channels, block output channels, spatial size of the inner maps at 32 x 32)
R18_UNITS = [
    ("g.layer1.0.conv1", 64, 64, 64, 8 * 8),
    ("g.layer1.1.conv1", 64, 64, 64, 8 * 8),
    ("g.layer2.0.conv1", 64, 128, 128, 4 * 4),
    ("g.layer2.1.conv1", 128, 128, 128, 4 * 4),
    ("g.layer3.0.conv1", 128, 256, 256, 2 * 2),
    ("g.layer3.1.conv1", 256, 256, 256, 2 * 2),
    ("g.layer4.0.conv1", 256, 512, 512, 1 * 1),
    ("g.layer4.1.conv1", 512, 512, 512, 1 * 1),
]
FIRST = "g.layer1.0.conv1"
X_SHAPE = (3, 32, 32)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids OpenMP contention (10x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet18", "none").eval()


def _batches(n: int = 2, size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *X_SHAPE, generator=g), torch.randint(0, 7, (size,), generator=g)) for _ in range(n)]


def _expected_params(kept_counts: dict[str, int]) -> int:
    """Each dropped inner channel removes a conv1 filter (9 * c_in), its BN weight and bias (2) and a
    conv2 input slice (9 * c_out)."""
    drop = sum((mid - kept_counts[name]) * (9 * (c_in + c_out) + 2) for name, c_in, mid, c_out, _ in R18_UNITS)
    return R18_PARAMS_7 - drop


def test_units_of_resnet18_and_resnet50():
    assert [u.name for u in prunable_units(_model())] == [u[0] for u in R18_UNITS]
    units50 = prunable_units(build_model("resnet50", "none"))
    assert len(units50) == 2 * 16  # 16 Bottlenecks, conv1->conv2 and conv2->conv3 in each
    assert units50[1].name == "g.layer1.0.conv2" and units50[1].consumer.kernel_size == (1, 1)


def test_count_params_macs_of_unpruned_and_pruned_resnet18():
    assert count_params_macs(build_model("resnet18", "none", num_classes=1000), (3, 224, 224)) == (
        R18_PARAMS_1000,
        1_822_177_768,  # torchvision's 1.81 G conv+fc MACs, plus BN (2 / element), ReLU and pooling elements
    )
    model = _model()
    params0, macs0 = count_params_macs(model, X_SHAPE)
    assert params0 == R18_PARAMS_7
    apply_selection(model, {"g.layer2.0.conv1": list(range(100))}, torch.randn(1, *X_SHAPE))
    params1, macs1 = count_params_macs(model, (1, *X_SHAPE))
    # 28 channels of layer2.0 (4 x 4 maps): conv1 9*64 + conv2 9*128 MACs, BN 2 and ReLU 1 per position
    assert params0 - params1 == 28 * (9 * (64 + 128) + 2)
    assert macs0 - macs1 == 28 * 16 * (9 * (64 + 128) + 3)


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory):
    """One DCP run (lambda = 1) on a random ResNet-18, then physical removal and a save."""
    model, data = _model(), _batches()
    kept = select_channels_dcp(model, data, PruneConfig(threshold=1e-2, disc_weight=1.0, batches=2))
    probe = torch.randn(5, *X_SHAPE)
    with torch.no_grad():
        masked_out = model(probe)
    masked = copy.deepcopy(model)
    apply_selection(model, kept, probe[:1])
    path = tmp_path_factory.mktemp("pruned") / "r18.pt"
    save_pruned(model, path, meta={"threshold": 1e-2})
    return {"kept": kept, "model": model, "masked": masked, "masked_out": masked_out, "probe": probe, "path": path}


def test_dcp_pruned_model_is_smaller_by_the_hand_count(dcp_run):
    kept, model = dcp_run["kept"], dcp_run["model"]
    counts = {name: len(idx) for name, idx in kept.items()}
    assert list(counts) == [u[0] for u in R18_UNITS]
    for name, _, mid, _, _ in R18_UNITS:
        assert 1 <= counts[name] < mid and len(set(kept[name])) == counts[name]
        block = model.get_submodule(name.rsplit(".", 1)[0])
        assert (block.conv1.out_channels, block.bn1.num_features, block.conv2.in_channels) == (counts[name],) * 3
    assert count_params_macs(model, X_SHAPE)[0] == _expected_params(counts) < R18_PARAMS_7


def test_physical_removal_keeps_refitted_weights_and_outputs(dcp_run):
    model, masked, kept = dcp_run["model"], dcp_run["masked"], dcp_run["kept"]
    with torch.no_grad():
        out = model(dcp_run["probe"])
    assert out.shape == (5, 7)
    torch.testing.assert_close(out, dcp_run["masked_out"], atol=1e-4, rtol=1e-4)
    for name in (FIRST, "g.layer4.1.conv1"):
        block = name.rsplit(".", 1)[0]
        w_masked = masked.get_submodule(block).conv2.weight
        keep = sorted(kept[name])
        dropped = [i for i in range(w_masked.shape[1]) if i not in keep]
        assert w_masked[:, dropped].abs().max() == 0  # DCP zeroed the unselected channels' weights
        torch.testing.assert_close(model.get_submodule(block).conv2.weight, w_masked[:, keep])


def test_save_load_round_trip(dcp_run):
    fresh_params = count_params_macs(build_model("resnet18", "none"), X_SHAPE)[0]
    loaded = load_pruned("resnet18", dcp_run["path"]).eval()
    assert fresh_params == R18_PARAMS_7
    assert count_params_macs(loaded, X_SHAPE)[0] == count_params_macs(dcp_run["model"], X_SHAPE)[0] < fresh_params
    with torch.no_grad():
        assert torch.equal(loaded(dcp_run["probe"]), dcp_run["model"](dcp_run["probe"]))
    raw = torch.load(dcp_run["path"], weights_only=True)  # no pickled classes in the file
    assert raw["meta"] == {"threshold": 1e-2}
    assert not list(dcp_run["path"].parent.glob(".*.tmp"))  # the temp file was renamed away
    with pytest.raises(ValueError, match="resnet34"):
        load_pruned("resnet34", dcp_run["path"])


def test_smaller_threshold_never_keeps_fewer_channels():
    data = _batches(seed=1)
    runs = {}
    for eps in (3e-2, 1e-2, 3e-3):
        runs[eps] = select_channels_dcp(_model(1), data, PruneConfig(threshold=eps, disc_weight=0.0, batches=2))
    totals = [sum(len(v) for v in runs[eps].values()) for eps in (3e-2, 1e-2, 3e-3)]
    assert totals[0] <= totals[1] <= totals[2] and totals[0] < totals[2]
    for name, *_ in R18_UNITS:
        assert len(runs[3e-2][name]) <= len(runs[1e-2][name]) <= len(runs[3e-3][name]), name
    # The first block sees the same inputs in every run, so its greedy order is shared: prefixes.
    short, long_ = runs[3e-2][FIRST], runs[3e-3][FIRST]
    assert long_[: len(short)] == short


def _signal_in_channel(model, j: int, keep_weights: bool):
    """layer1.0 where conv2 reads only inner channel j (other conv2 input weights zero, or all zero)
    and channel j's activations are the strongest (BN scale of the others divided by 10)."""
    block = model.g.layer1[0]
    with torch.no_grad():
        others = [i for i in range(64) if i != j]
        block.conv2.weight[:, others] = 0
        if not keep_weights:
            block.conv2.weight[:, j] = 0
        block.bn1.weight[others] *= 0.1
        block.bn1.bias[others] *= 0.1
        block.bn1.weight[j], block.bn1.bias[j] = 3.0, 1.0
    return block


def test_dcp_picks_the_channel_carrying_the_reconstruction_signal():
    model, j = _model(2), 37
    block = _signal_in_channel(model, j, keep_weights=True)
    w_j = block.conv2.weight[:, j].detach().clone()
    kept = select_channels_dcp(model, _batches(seed=2), PruneConfig(threshold=1e-3, disc_weight=0.0), only=[FIRST])
    assert list(kept) == [FIRST]
    # j reconstructs the output exactly, so the next channel gains nothing and the search stops.
    assert kept[FIRST][0] == j and len(kept[FIRST]) == 2
    torch.testing.assert_close(block.conv2.weight[:, j], w_j, atol=1e-5, rtol=1e-4)  # least squares re-found it
    assert block.conv2.weight[:, kept[FIRST][1]].abs().max() < 1e-4
    dropped = [i for i in range(64) if i not in kept[FIRST]]
    assert block.conv2.weight[:, dropped].abs().max() == 0
    assert model.g.layer1[1].conv2.weight.abs().min() > 0  # units outside ``only`` are untouched


def test_greedy_refits_before_ranking_so_a_duplicate_channel_is_not_picked():
    """Channel b is an exact copy of channel a (same conv1 filter and BN), and the output reads a and c.
    a and b score the same at first (with this seed they outrank c; the tie goes to the lower index, a);
    once a is fitted, b explains nothing more, so the gradient of the re-fitted objective ranks c next.
    Ranking by the initial correlations (no re-fit between picks) would take b second."""
    model, a, b, c = _model(1), 10, 20, 30
    block = model.g.layer1[0]
    with torch.no_grad():
        block.conv1.weight[b] = block.conv1.weight[a]
        block.conv2.weight[:, [i for i in range(64) if i not in (a, c)]] = 0
        block.bn1.weight[[i for i in range(64) if i not in (a, b, c)]] *= 0.1
        block.bn1.bias[[a, b, c]] = 1.0
        block.bn1.weight[[a, b]], block.bn1.weight[c] = 3.0, 1.0
    losses = []
    kept = select_channels_dcp(
        model, _batches(seed=1), PruneConfig(threshold=1e-3, disc_weight=0.0), only=[FIRST],
        progress=lambda name, n, total, loss: losses.append((name, n, total, loss)),
    )
    assert kept[FIRST][:2] == [a, c] and len(kept[FIRST]) == 3
    assert [(n, total) for _, n, total, _ in losses] == [(1, 64), (2, 64), (3, 64)]
    assert losses[0][3] > 0 and abs(losses[1][3]) < 1e-6 * losses[0][3]  # a and c reconstruct exactly


def _conv_io(model, conv, data):
    """Unfolded inputs [rows, C_in*9] and outputs [rows, C_out] of a 3x3 conv over the data."""
    ins, outs = [], []

    def keep(module, inputs, output):
        ins.append(inputs[0])
        outs.append(output)

    handle = conv.register_forward_hook(keep)
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    patches = torch.nn.functional.unfold(torch.cat(ins), 3, padding=1).transpose(1, 2).flatten(0, 1)
    return patches.double(), torch.cat(outs).flatten(2).transpose(1, 2).flatten(0, 1).double()


def test_refit_is_least_squares_on_inputs_from_the_pruned_model():
    """The incremental Cholesky re-fit of layer1.1's conv2 equals a direct least-squares solve on its
    inputs in the model *after* layer1.0 was pruned, against the unpruned model's outputs."""
    second = "g.layer1.1.conv1"
    model, data = _model(6), _batches(n=2, size=8, seed=6)
    baseline = copy.deepcopy(model)
    kept = select_channels_dcp(model, data, PruneConfig(threshold=2e-2, disc_weight=0.0), only=[FIRST, second])
    assert len(kept[FIRST]) < 64 and 64 * 8 * 2 > 9 * len(kept[second])  # pruned; more rows than unknowns
    cols = torch.tensor([9 * ch + k for ch in kept[second] for k in range(9)])
    _, target = _conv_io(baseline, baseline.g.layer1[1].conv2, data)
    pruned_in, _ = _conv_io(model, model.g.layer1[1].conv2, data)
    unpruned_in, _ = _conv_io(baseline, baseline.g.layer1[1].conv2, data)
    fit = torch.linalg.lstsq(pruned_in[:, cols], target).solution.T.float()  # [C_out, 9 * kept]
    wrong = torch.linalg.lstsq(unpruned_in[:, cols], target).solution.T.float()
    w = model.g.layer1[1].conv2.weight.flatten(1)[:, cols]
    torch.testing.assert_close(w, fit, atol=1e-4, rtol=1e-3)
    assert (w - wrong).abs().max() > 1e-2


def test_discrimination_term_alone_selects_by_the_loss_gradient():
    """With conv2 all zero the target is zero: L_M is flat, so only the cross-entropy term can rank
    channels. Its gradient is largest on the strongest channel j; re-fitting W on it gives W = 0 again,
    L does not move and the search stops at one channel. Without the term (lambda = 0) nothing ranks
    channels and the tie goes to channel 0."""
    j = 21
    with_ce = _model(3)
    _signal_in_channel(with_ce, j, keep_weights=False)
    without = copy.deepcopy(with_ce)
    data = _batches(seed=3)
    kept = select_channels_dcp(with_ce, data, PruneConfig(threshold=1e-3, disc_weight=1.0), only=[FIRST])
    assert kept == {FIRST: [j]}
    kept0 = select_channels_dcp(without, data, PruneConfig(threshold=1e-3, disc_weight=0.0), only=[FIRST])
    assert kept0 == {FIRST: [0]}


def test_bottleneck_units_prune_both_inner_widths():
    torch.manual_seed(7)
    model = build_model("resnet50", "none").eval()
    names = ["g.layer1.0.conv1", "g.layer1.0.conv2"]
    params0 = count_params_macs(model, X_SHAPE)[0]
    kept = select_channels_dcp(model, _batches(seed=7), PruneConfig(threshold=2e-2, disc_weight=0.0), only=names)
    k1, k2 = len(kept[names[0]]), len(kept[names[1]])
    probe = torch.randn(3, *X_SHAPE)
    with torch.no_grad():
        masked_out = model(probe)
        apply_selection(model, kept, probe[:1])
        torch.testing.assert_close(model(probe), masked_out, atol=1e-4, rtol=1e-4)
    block = model.g.layer1[0]
    assert (block.conv2.in_channels, block.conv2.out_channels, block.conv3.in_channels) == (k1, k2, k2)
    # conv1 64->k (1x1) + bn1, conv2 k1->k2 (3x3) + bn2, conv3 k2->256 (1x1); before: k1 = k2 = 64
    def inner(a, b):
        return 64 * a + 2 * a + 9 * a * b + 2 * b + 256 * b

    assert count_params_macs(model, X_SHAPE)[0] == params0 - inner(64, 64) + inner(k1, k2)
    assert k1 < 64 and k2 < 64


@pytest.mark.parametrize("method", ["magnitude", "taylor", "bn"])
def test_importance_baselines_cut_each_unit_by_the_ratio(method):
    model = _model(4)
    with torch.no_grad():  # make channels 0..15 of layer1.0 the least important under every criterion
        model.g.layer1[0].conv1.weight[:16] *= 1e-3
        model.g.layer1[0].bn1.weight[:16] *= 1e-3
        model.g.layer1[0].bn1.bias[16:] = 1.0  # the others always active: no dead ReLU ties for taylor
    w_before = model.g.layer1[0].conv1.weight[16:].detach().clone()
    counts = prune_by_importance(model, method, 0.25, torch.randn(1, *X_SHAPE), batches=_batches(seed=4))
    assert counts == {name: mid * 3 // 4 for name, _, mid, _, _ in R18_UNITS}  # 48, 96, 192, 384
    torch.testing.assert_close(model.g.layer1[0].conv1.weight, w_before)  # exactly channels 16..63 survive
    assert count_params_macs(model, X_SHAPE)[0] == _expected_params(counts)
    assert model.g.layer1[0].conv1.weight.grad is None  # taylor's gradients are not left behind


def test_prune_model_dispatches_on_the_config_and_rejects_unknown_names():
    model = _model(5)
    counts = prune_model(model, PruneConfig(method="magnitude", ratio=0.5), _batches(), torch.randn(1, *X_SHAPE))
    assert counts == {name: mid // 2 for name, _, mid, _, _ in R18_UNITS}
    with pytest.raises(KeyError, match="magnitude"):
        prune_by_importance(_model(), "magnitud", 0.3, torch.randn(1, *X_SHAPE))
    with pytest.raises(ValueError, match="subset"):
        apply_selection(_model(), {FIRST: [64]}, torch.randn(1, *X_SHAPE))


# ---- calibration sample, auxiliary heads, threshold sweep (issue 10, section 4) -----------------------


def test_calibration_sample_matches_the_pool_mix_where_manifest_order_would_not():
    """A pool listed domain by domain (600 D7P, then 300 HAM, then 100 PH2, classes in blocks): its first
    64 items are all D7P. The stratified sample of 64 has each (domain, class) stratum's share of the
    pool, rounded by largest remainders: 64 * [0.36, 0.24, 0.24, 0.06, 0.06, 0.04] = 23.04, 15.36,
    15.36, 3.84, 3.84, 2.56 -> floors 23+15+15+3+3+2 = 61, the 3 largest remainders (0.84, 0.84, 0.56)
    get one more: 23, 15, 15, 4, 4, 3."""
    domains = np.array(["D7P"] * 600 + ["HAM"] * 300 + ["PH2"] * 100)
    classes = np.array(["nv"] * 360 + ["mel"] * 240 + ["nv"] * 240 + ["mel"] * 60 + ["nv"] * 60 + ["mel"] * 40)
    strata = np.char.add(np.char.add(domains, "/"), classes)
    assert set(domains[:64]) == {"D7P"}
    sample = stratified_sample(strata, 64, seed=derive_seed(0, "prune-calibration"))
    assert len(sample) == len(set(sample.tolist())) == 64
    got = Counter(strata[sample].tolist())
    assert got == {"D7P/nv": 23, "D7P/mel": 15, "HAM/nv": 15, "HAM/mel": 4, "PH2/nv": 4, "PH2/mel": 3}
    assert Counter(domains[sample].tolist()) == {"D7P": 38, "HAM": 19, "PH2": 7}  # pool: 60/30/10 %
    assert not np.array_equal(np.sort(sample[:32]), np.arange(32))  # shuffled, not manifest order
    again = stratified_sample(strata, 64, seed=derive_seed(0, "prune-calibration"))
    assert np.array_equal(sample, again)
    assert not np.array_equal(sample, stratified_sample(strata, 64, seed=derive_seed(1, "prune-calibration")))
    assert sorted(stratified_sample(strata, 5000, seed=0).tolist()) == list(range(1000))  # n >= pool: all of it


def _learnable_batches(n: int = 2, size: int = 8, seed: int = 0):
    """Labels 0/1 carried by the images' brightness: stage features can predict them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.arange(size) % 2
        x = torch.randn(size, *X_SHAPE, generator=g) + 2.0 * (2 * y - 1).float()[:, None, None, None]
        out.append((x, y))
    return out


def test_aux_heads_are_fitted_on_the_calibration_data_with_the_model_frozen():
    model, data = _model(8), _learnable_batches()
    before = copy.deepcopy(model.state_dict())
    fit = fit_aux_heads(model, data, steps=60, lr=1e-2, seed=3)
    assert list(fit.heads) == ["g.layer1", "g.layer2", "g.layer3"]  # the last stage uses the model's logits
    assert [h.fc.in_features for h in fit.heads.values()] == [64, 128, 256]
    for stage, head in fit.heads.items():
        # BatchNorm statistics: the mean over the calibration batches of the stage's output.
        with torch.no_grad():
            feats = torch.cat([stage_outputs(model, [stage], x)[stage] for x, _ in data])
        torch.testing.assert_close(head.bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
        # Randomly initialised heads score like guessing among 7 classes (ln 7 = 1.95); fitted, they read
        # the brightness off the features and the two classes are separated.
        assert fit.loss_before[stage] > 1.0 and fit.loss_after[stage] < 0.01
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    unfitted = fit_aux_heads(model, data, steps=0, lr=1e-2, seed=3)
    assert unfitted.loss_after == unfitted.loss_before == fit.loss_before
    again = fit_aux_heads(model, data, steps=60, lr=1e-2, seed=3)
    assert torch.equal(again.heads["g.layer2"].fc.weight, fit.heads["g.layer2"].fc.weight)  # seeded


def test_stage_head_and_final_logits_pick_different_channels():
    """layer1.0 with conv2 = 0 (the target is zero, so L_M is flat and only L_S ranks channels at W = 0).
    Inner channel j is a constant 3 (BN scale 0, shift 3): large, but the same in every image; channel c
    varies (BN scale 30), and each batch's labels are 1 for the half of its images where c is most active.
    The stage head is set by hand to read one output channel with tiny weights of opposite sign for
    classes 0 and 1, so its logits are near uniform and dL/d(feature) is +eps for y = 1 and -eps for
    y = 0: over a balanced batch the constant channel's gradient cancels and c, the channel that
    separates the labels, ranks first. The final logits see the constant channel's large shift through
    three more stages and rank j first. (Gradient ratios with this seed: 6x and 9x.)"""
    j, c = 21, 40
    model = _model(3)
    block = model.g.layer1[0]
    with torch.no_grad():
        block.conv2.weight.zero_()
        others = [i for i in range(64) if i not in (j, c)]
        block.bn1.weight[others] *= 0.1
        block.bn1.bias[others] *= 0.1
        block.bn1.weight[j], block.bn1.bias[j] = 0.0, 3.0
        block.bn1.weight[c], block.bn1.bias[c] = 30.0, 0.0
        x = torch.randn(16, *X_SHAPE, generator=torch.Generator().manual_seed(3))
        act = torch.relu(block.bn1(block.conv1(stage_outputs(model, ["g.maxpool"], x)["g.maxpool"])))[:, c].sum((1, 2))
    y = torch.cat([(act[i : i + 8] > act[i : i + 8].median()).long() for i in (0, 8)])
    assert y.tolist().count(1) == 8 and y[:8].sum() == 4
    data = [(x[:8], y[:8]), (x[8:], y[8:])]
    head = AuxHead(64, 7).eval()
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[0, 5], head.fc.weight[1, 5] = -1e-3, 1e-3
    heads = HeadFit({"g.layer1": head})
    picks = {}
    for mode in ("aux", "final"):
        cfg = PruneConfig(threshold=1e-3, disc_weight=1.0, disc_head=mode, batches=2)
        picks[mode] = select_channels_dcp(copy.deepcopy(model), data, cfg, only=[FIRST], heads=heads)[FIRST]
    assert picks == {"aux": [c], "final": [j]}
    with pytest.raises(ValueError, match="disc_head"):
        select_channels_dcp(_model(), data, PruneConfig(disc_head="stage"), only=[FIRST])


SWEEP_UNITS = [FIRST, "g.layer1.1.conv1", "g.layer2.0.conv1", "g.layer3.0.conv1"]


@pytest.fixture(scope="module")
def sweep_run():
    """One sweep over three thresholds with DCP's default (aux heads, lambda = 0.5), on four units."""
    data = _batches(n=2, size=8, seed=9)
    cfg = PruneConfig(threshold=0.0, aux_steps=10, batches=2)
    heads = fit_aux_heads(_model(9), data, cfg.aux_steps, cfg.aux_lr, seed=0)
    thresholds = [3e-2, 1e-2, 3e-3]
    branches = sweep_channels_dcp(_model(9), data, cfg, thresholds, only=SWEEP_UNITS, heads=heads)
    return {"data": data, "cfg": cfg, "heads": heads, "thresholds": thresholds, "branches": branches}


def test_one_sweep_equals_separate_runs_at_each_threshold(sweep_run):
    branches, cfg = sweep_run["branches"], sweep_run["cfg"]
    assert sorted(branches, reverse=True) == sweep_run["thresholds"]
    assert len({id(b.model) for b in branches.values()}) == 3  # the paths parted: the shortcut is not trivial
    for eps in sweep_run["thresholds"]:
        alone = _model(9)
        kept = select_channels_dcp(alone, sweep_run["data"], replace(cfg, threshold=eps), only=SWEEP_UNITS,
                                   heads=sweep_run["heads"])
        assert kept == branches[eps].kept, eps
        for name, module in alone.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                assert torch.equal(module.weight, branches[eps].model.get_submodule(name).weight), (eps, name)


def test_sweep_curve_is_monotone_smaller_threshold_keeps_more(sweep_run):
    branches = sweep_run["branches"]
    params = []
    for eps in sweep_run["thresholds"]:  # largest threshold first
        model = copy.deepcopy(branches[eps].model)
        apply_selection(model, branches[eps].kept, torch.randn(1, *X_SHAPE))
        params.append(count_params_macs(model, X_SHAPE)[0])
    assert params[0] < params[1] < params[2] < R18_PARAMS_7
    # The first unit's inputs never change: its selections are prefixes of one greedy order.
    short, mid, long_ = (branches[eps].kept[FIRST] for eps in sweep_run["thresholds"])
    assert long_[: len(mid)] == mid and mid[: len(short)] == short and len(short) < len(long_)
