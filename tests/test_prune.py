"""Channel pruning on ResNet-18 (CPU, 32 x 32 images): DCP selection on constructed cases, physical
removal with exact hand-computed parameter and MAC counts, save/load round trip, importance baselines."""

from __future__ import annotations

import copy

import pytest
import torch

from domgen.config import PruneConfig
from domgen.models import build_model
from domgen.prune import (
    apply_selection,
    count_params_macs,
    load_pruned,
    prunable_units,
    prune_by_importance,
    prune_model,
    save_pruned,
    select_channels_dcp,
)

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
