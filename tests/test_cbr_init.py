"""CBR backbones (Raghu et al. 2019, appendix) and the Mean-Var / partial-transfer initialisations."""

from __future__ import annotations

import pytest
import torch

from domgen.data.transforms import IMAGENET
from domgen.errors import ConfigError
from domgen.models import WeightsUnavailable, build_model, input_normalization
from domgen.models.init import model_blocks, parse_init

# Hand counts of the appendix's layer lists: conv k*k*c_in*c_out (no bias) + BN 2*c (gamma, beta).
HAND_COUNT = {
    # 49*(3*32 + 32*64 + 64*128 + 128*256 + 256*512) = 8_534_624;  BN 2*(32+64+128+256+512) = 1_984
    "cbr_large_t": (8_536_608, 512),
    # 49*(3*64 + 64*128 + 128*256 + 256*512) = 8_438_976;  BN 2*(64+128+256+512) = 1_920
    "cbr_large_w": (8_440_896, 512),
    # 49*(3*32 + 32*64 + 64*128 + 128*256) = 2_112_096;  BN 2*(32+64+128+256) = 960
    "cbr_small": (2_113_056, 256),
    # 25*(3*64 + 64*128 + 128*256 + 256*512) = 4_305_600;  BN 1_920
    "cbr_tiny": (4_307_520, 512),
}


@pytest.mark.parametrize("arch", sorted(HAND_COUNT))
def test_cbr_parameter_count_is_the_hand_count_of_its_layer_list(arch):
    count, dim = HAND_COUNT[arch]
    model = build_model(arch, "none", num_classes=5)
    assert sum(p.numel() for p in model.g.parameters()) == count
    logits, z = model.forward_both(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, dim) == (2, model.h.in_features) and logits.shape == (2, 5)
    assert input_normalization(arch) == IMAGENET


def test_cbr_counts_in_the_papers_convention_match_its_table_1():
    """Table 1 of the paper (as recalled, the PDF was not at hand to re-check) lists 8,532,480 / 8,432,128 /
    2,108,672 parameters for CBR-LargeT / LargeW / Small: exactly the conv kernels above the first layer plus
    a bias-free 5-way head (Retina's five DR grades), so these counts pin down layers 2..N of our lists.
    CBR-Tiny's listed 1,076,480 fits 5x5 filters with 32..256 channels, not the appendix's 64..512 that the
    module follows, as every public reimplementation found does (see domgen/models/cbr.py): the check
    below leaves CBR-Tiny out rather than follow a recalled count against the written layer list."""
    table1 = {"cbr_large_t": 8_532_480, "cbr_large_w": 8_432_128, "cbr_small": 2_108_672}
    for arch, listed in table1.items():
        g = build_model(arch, "none").g
        convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
        assert sum(c.weight.numel() for c in convs[1:]) + 5 * g.num_features == listed, arch


def test_cbr_large_t_spatial_sizes_follow_same_convs_and_3x3_stride_2_pools_rounding_up():
    g = build_model("cbr_large_t", "none").g
    shapes = []
    hooks = [getattr(g, n).register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for n in g.block_names]
    g(torch.randn(1, 3, 63, 63))
    for h in hooks:
        h.remove()
    # conv keeps the size; pool (3x3, stride 2, pad 1): floor((s + 2 - 3) / 2) + 1 = ceil(s / 2), so
    # 63 -> 32 -> 16 -> 8 -> 4; no pool after the last conv
    assert shapes == [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 4, 4)]


def test_cbr_has_no_imagenet_weights():
    with pytest.raises(WeightsUnavailable, match="no ImageNet weights.*cbr_small"):
        build_model("cbr_small", "imagenet")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A stand-in for pretrained ResNet-18 weights: every tensor with its own mean and std, saved as a file."""
    torch.manual_seed(123)
    g = build_model("resnet18", "none").g
    with torch.no_grad():
        for i, p in enumerate(g.parameters()):
            p.normal_(0.1 * (i % 5) - 0.2, 0.05 * (1 + i % 4))
        for name, b in g.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("pretrained") / "r18.pth"
    torch.save(g.state_dict(), path)
    return path, {k: v.clone() for k, v in g.state_dict().items()}


def test_meanvar_matches_each_tensors_moments_but_not_its_values(source):
    path, src = source
    torch.manual_seed(0)
    g = build_model("resnet18", f"meanvar:{path}").g
    for name, p in g.named_parameters():
        s, n = src[name].double(), p.numel()
        m_hat, s_hat = p.double().mean(), p.double().std(unbiased=False)
        sd = s.std(unbiased=False)
        assert abs(m_hat - s.mean()) < 6 * sd / n**0.5, name  # sampling error of a mean: sd / sqrt(n)
        assert abs(s_hat - sd) < 6 * sd / (2 * n) ** 0.5, name  # of a normal sample's sd: sd / sqrt(2n)
        assert (p != src[name]).all(), name
    fresh = dict(g.named_buffers())  # running statistics are the fresh ones, not the source's
    assert torch.equal(fresh["bn1.running_mean"], torch.zeros(64)) and torch.equal(fresh["bn1.running_var"], torch.ones(64))


def test_meanvar_is_fixed_by_the_seed(source):
    path, _ = source

    def draw(seed):
        torch.manual_seed(seed)
        return build_model("resnet18", f"meanvar:{path}", num_classes=3).state_dict()

    a, b, c = draw(4), draw(4), draw(5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["g.layer3.0.conv1.weight"], c["g.layer3.0.conv1.weight"])


@pytest.mark.parametrize("k", [0, 2, 5])
def test_transfer_copies_exactly_the_lowest_k_blocks(source, k):
    path, src = source
    torch.manual_seed(7)
    random = build_model("resnet18", "none").g.state_dict()
    torch.manual_seed(7)
    g = build_model("resnet18", f"transfer:{k}:{path}").g
    names = [n for n, _ in model_blocks(g)]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    copied = tuple(p for _, prefixes in model_blocks(g)[:k] for p in prefixes)
    for key, value in g.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(copied):
            assert torch.equal(value, src[key]), key
        else:  # the rest is the run's plain random init, which differs from the source
            assert torch.equal(value, random[key]) and not torch.equal(value, src[key]), key


def test_transfer_on_a_cbr_model_counts_its_conv_blocks(tmp_path):
    torch.manual_seed(1)
    src = build_model("cbr_small", "none").g.state_dict()
    torch.save(src, tmp_path / "cbr.pth")
    g = build_model("cbr_small", f"transfer:2:{tmp_path / 'cbr.pth'}").g
    assert torch.equal(g.layer2[0].weight, src["layer2.0.weight"])
    assert not torch.equal(g.layer3[0].weight, src["layer3.0.weight"])


def test_init_specs_parse_and_fail_loudly():
    assert parse_init("meanvar") == parse_init("meanvar:imagenet")
    spec = parse_init("transfer:3:/some/file.pth")
    assert (spec.kind, spec.blocks, spec.source) == ("transfer", 3, "/some/file.pth")
    assert parse_init("transfer:2").source == "imagenet"
    with pytest.raises(ConfigError, match="whole number"):
        parse_init("transfer:two")
    with pytest.raises(ConfigError, match="5 blocks"):
        build_model("resnet18", "transfer:6:/nonexistent.pth")
