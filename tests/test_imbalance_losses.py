"""The imbalance losses and class weights, each against a hand computation on constructed logits (and
against torchvision / timm where they compute the same thing); the config keys they add leave every
existing run hash alone; the algorithm hands the criterion the pool's counts and the epoch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domgen.algorithms import ALGORITHMS, ERM, make_algorithm
from domgen.algorithms.ccsa import CCSAHparams
from domgen.config import _HASHED_WHEN_SET, AlgorithmConfig, LossConfig, RunConfig, apply_overrides, config_hash
from domgen.data.samplers import TrainPool
from domgen.errors import ConfigError
from domgen.losses import LOSSES, DeferredReweighting, build_loss, class_weights, effective_number_weights
from domgen.losses.ldam import ldam_margins
from domgen.runs.registry import resolve_config

LN = math.log
W = torch.tensor([1.0, 2.0, 3.0])
# row 0: softmax (2, 1, 1)/4, label 0 -> p = 1/2; row 1: softmax (1, 6, 2)/9, label 2 -> p = 2/9
LOGITS = torch.tensor([[LN(2), 0.0, 0.0], [0.0, LN(6), LN(2)]])
Y = torch.tensor([0, 2])


def reduce(per, w_y, reduction):
    """The two reductions by hand: sum w l / sum w, or mean(w l)."""
    return sum(a * b for a, b in zip(w_y, per)) / (sum(w_y) if reduction == "weighted_mean" else len(per))


@pytest.mark.parametrize("reduction", ["weighted_mean", "mean"])
def test_focal_with_gamma_0_is_the_cross_entropy(reduction):
    focal, ce = LOSSES.get("focal")(reduction, gamma=0.0), LOSSES.get("ce")(reduction)
    logits, y = torch.randn(7, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3, 0, 1, 1])
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert torch.allclose(focal(logits, y), ce(logits, y), atol=1e-6)
    assert torch.allclose(focal(logits, y, w), ce(logits, y, w), atol=1e-6)


@pytest.mark.parametrize("reduction", ["weighted_mean", "mean"])
def test_focal_with_gamma_2_is_the_hand_formula(reduction):
    a = (1 / 2) ** 2 * LN(2)  # (1 - 1/2)^2 * -log(1/2)
    b = (7 / 9) ** 2 * LN(9 / 2)  # (1 - 2/9)^2 * -log(2/9)
    focal = LOSSES.get("focal")(reduction, gamma=2.0)
    assert float(focal(LOGITS, Y)) == pytest.approx((a + b) / 2, rel=1e-6)
    assert float(focal(LOGITS, Y, W)) == pytest.approx(reduce([a, b], [1.0, 3.0], reduction), rel=1e-6)


def test_binary_softmax_focal_is_torchvisions_sigmoid_focal_loss():
    # With K = 2 and logits (0, t) the softmax probability of class 1 is sigmoid(t): the softmax focal loss
    # is the binary sigmoid one, and torchvision's alpha (alpha on class 1, 1 - alpha on class 0) is the
    # class weights [1 - alpha, alpha] under the "mean" reduction. For K > 2 they differ (softmax couples
    # the classes); the sigmoid form is compared through ASL below.
    from torchvision.ops import sigmoid_focal_loss

    t = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0, 1.5])
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    logits = torch.stack([torch.zeros_like(t), t], dim=1)
    alpha = 0.25
    tv = sigmoid_focal_loss(t, y.float(), alpha=alpha, gamma=2.0, reduction="mean")
    mine = LOSSES.get("focal")("mean", gamma=2.0)(logits, y, torch.tensor([1 - alpha, alpha]))
    assert torch.allclose(mine, tv, atol=1e-6)
    tv1 = sigmoid_focal_loss(t, y.float(), alpha=-1, gamma=2.0, reduction="mean")
    assert torch.allclose(LOSSES.get("focal")("mean", gamma=2.0)(logits, y), tv1, atol=1e-6)


def logit(p):
    return LN(p / (1 - p))


def test_asymmetric_loss_by_hand_with_its_probability_margin():
    # one example, label 0, sigmoid probabilities (0.8, 0.5, 0.02); gamma_pos 1, gamma_neg 4, clip 0.05:
    # positive -(1 - 0.8)^1 log 0.8; negative p = 0.5 -> p_m = 0.45: -(0.45)^4 log 0.55;
    # negative p = 0.02 < clip -> p_m = 0: contributes nothing
    z = torch.tensor([[logit(0.8), logit(0.5), logit(0.02)]])
    asl = LOSSES.get("asymmetric")("weighted_mean", gamma_pos=1.0, gamma_neg=4.0, clip=0.05)
    hand = -0.2 * LN(0.8) - 0.45**4 * LN(0.55)
    assert float(asl(z, torch.tensor([0]))) == pytest.approx(hand, rel=1e-5)
    # without the margin the third class counts: -(0.02)^4 log 0.98, and p = 0.5 is not shifted
    asl0 = LOSSES.get("asymmetric")("weighted_mean", gamma_pos=1.0, gamma_neg=4.0, clip=0.0)
    hand0 = -0.2 * LN(0.8) - 0.5**4 * LN(0.5) - 0.02**4 * LN(0.98)
    assert float(asl0(z, torch.tensor([0]))) == pytest.approx(hand0, rel=1e-5)
    # two examples, weighted: example 2 is label 2 with probabilities (0.3, 0.6, 0.9) at the defaults (0, 4, 0.05)
    z2 = torch.tensor([[logit(0.8), logit(0.5), logit(0.02)], [logit(0.3), logit(0.6), logit(0.9)]])
    d = LOSSES.get("asymmetric")("weighted_mean")
    a = -LN(0.8) - 0.45**4 * LN(0.55)
    b = -LN(0.9) - 0.25**4 * LN(0.75) - 0.55**4 * LN(0.45)
    assert float(d(z2, torch.tensor([0, 2]), W)) == pytest.approx((1 * a + 3 * b) / 4, rel=1e-5)


def test_asymmetric_with_equal_gammas_and_no_margin_is_the_sigmoid_focal_loss_summed_over_classes():
    from torchvision.ops import sigmoid_focal_loss

    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)) * 3
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    tv = sigmoid_focal_loss(z, F.one_hot(y, 4).float(), alpha=-1, gamma=2.0, reduction="none").sum(1).mean()
    asl = LOSSES.get("asymmetric")("weighted_mean", gamma_pos=2.0, gamma_neg=2.0, clip=0.0)
    assert torch.allclose(asl(z, y), tv, atol=1e-5)


def test_asymmetric_equals_timms_multilabel_asl_on_one_hot_targets():
    timm_asl = pytest.importorskip("timm.loss").AsymmetricLossMultiLabel
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)) * 2
    y = torch.tensor([0, 1, 2, 2, 1])
    # "sum" over batch and classes is the original ASL reduction and in every timm version; we average the batch
    theirs = timm_asl(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="sum")(z, F.one_hot(y, 3).float()) / 5
    ours = LOSSES.get("asymmetric")("weighted_mean", gamma_pos=1.0, gamma_neg=4.0, clip=0.05)(z, y)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_label_smoothing_is_torchs_and_weights_the_whole_example():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    ls = LOSSES.get("label_smoothing")("weighted_mean", smoothing=0.2)
    assert torch.allclose(ls(logits, y), F.cross_entropy(logits, y, label_smoothing=0.2), atol=1e-6)
    same = torch.full((3,), 2.5)  # equal weights: torch's weight= agrees
    assert torch.allclose(ls(logits, y, same), F.cross_entropy(logits, y, weight=same, label_smoothing=0.2), atol=1e-6)
    # unequal weights: w[y_b] times the example's smoothed loss (1 - e) CE + e/K sum_k -log p_k, by hand
    logp = torch.log_softmax(logits, 1)
    per = -(0.8 * logp[torch.arange(6), y] + 0.2 / 3 * logp.sum(1))
    w = W[y]
    assert torch.allclose(ls(logits, y, W), (w * per).sum() / w.sum(), atol=1e-6)
    assert LOSSES.get("label_smoothing")("mean")(logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6)  # default smoothing 0.1


def test_ldam_margins_follow_the_fourth_root_of_the_counts():
    # n^(-1/4): 16 -> 1/2, 1 -> 1, 81 -> 1/3; scaled so the largest is max_m; an empty class gets 0
    np.testing.assert_allclose(ldam_margins([16, 1, 81, 0], max_m=0.5), [0.25, 0.5, 0.5 / 3, 0.0])
    np.testing.assert_allclose(ldam_margins([16, 256], max_m=0.4), [0.4, 0.2])


def test_ldam_loss_by_hand():
    ldam = LOSSES.get("ldam")("weighted_mean", max_m=0.5, scale=30.0)
    with pytest.raises(RuntimeError, match="class counts"):
        ldam(LOGITS, Y)
    ldam.fit_counts(np.array([16, 1, 81]))  # margins 0.25, 0.5, 1/6
    # row 0, label 0: logits (ln 2 - 0.25, 0, 0) * 30; row 1, label 2: (0, ln 6, ln 2 - 1/6) * 30
    r0 = 30 * np.array([LN(2) - 0.25, 0.0, 0.0])
    r1 = 30 * np.array([0.0, LN(6), LN(2) - 1 / 6])
    a = np.logaddexp.reduce(r0) - r0[0]
    b = np.logaddexp.reduce(r1) - r1[2]
    assert float(ldam(LOGITS, Y)) == pytest.approx((a + b) / 2, rel=1e-5)
    assert float(ldam(LOGITS, Y, W)) == pytest.approx((a + 3 * b) / 4, rel=1e-5)


def test_deferred_reweighting_switches_the_weights_on_at_drw_epoch():
    drw = build_loss(LossConfig(name="focal", drw_epoch=2))
    assert isinstance(drw, DeferredReweighting) and drw.reduction == "weighted_mean"
    plain, weighted = LOSSES.get("focal")()(LOGITS, Y), LOSSES.get("focal")()(LOGITS, Y, W)
    assert not torch.allclose(plain, weighted)
    for epoch, expected in [(0, plain), (1, plain), (2, weighted), (5, weighted)]:
        drw.begin_epoch(epoch, 6)
        assert torch.equal(drw(LOGITS, Y, W), expected), epoch
    assert not isinstance(build_loss(LossConfig(name="focal")), DeferredReweighting)  # drw_epoch 0: always weighted


def pool() -> TrainPool:
    # counts 8, 3, 1 over two domains
    labels = np.array([0] * 8 + [1] * 3 + [2])
    return TrainPool.of(labels, ["HAM"] * 6 + ["DMF"] * 6, num_classes=3, seed=0, primary="HAM")


def test_the_algorithm_hands_ldam_its_counts_and_drw_its_epoch():
    cfg = LossConfig(name="ldam", class_weights="effective", beta=0.9, drw_epoch=3)
    erm = make_algorithm(AlgorithmConfig(), cfg).build(pool())
    np.testing.assert_allclose(erm.criterion.loss.margins.numpy(), ldam_margins([8, 3, 1]), rtol=1e-6)
    # under the uniform sampler the effective weights are (1 - beta) / (1 - beta^n), max-normalised
    cb = np.array([(1 - 0.9) / (1 - 0.9**n) for n in (8, 3, 1)])
    np.testing.assert_allclose(erm.class_w.numpy(), cb / cb.max(), rtol=1e-6)
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(5))
    y = torch.as_tensor(pool().labels)
    inner = erm.criterion.loss
    erm.begin_epoch(2, 10)
    assert torch.equal(erm.criterion(logits, y, erm.class_w), inner(logits, y))
    erm.begin_epoch(3, 10)
    assert torch.equal(erm.criterion(logits, y, erm.class_w), inner(logits, y, erm.class_w))


def test_ccsa_classifies_both_streams_with_the_run_loss_and_its_effective_weights():
    cfg = LossConfig(name="ldam", class_weights="effective", beta=0.99, drw_epoch=1)
    ccsa = make_algorithm(CCSAHparams(), cfg).build(pool())
    assert ccsa.pair_loss.cls_loss is ccsa.criterion and ccsa.criterion.loss.margins is not None
    probs = ccsa.sampler.exact_probabilities()
    for w, p in [(ccsa.class_w1, probs.p1), (ccsa.class_w2, probs.p2)]:
        np.testing.assert_allclose(w.numpy(), effective_number_weights(p, [8, 3, 1], 0.99, "max"), rtol=1e-6)
    ccsa.begin_epoch(0, 2)
    assert not ccsa.criterion.reweighting
    ccsa.begin_epoch(1, 2)
    assert ccsa.criterion.reweighting


def test_effective_number_weights_by_hand_and_their_limits():
    n = np.array([100, 10, 1])
    p = n / n.sum()  # the uniform sampler
    cb = np.array([(1 - 0.9) / (1 - 0.9**k) for k in n])  # Cui et al. Eq. 6
    np.testing.assert_allclose(effective_number_weights(p, n, 0.9, "max"), cb / cb.max(), rtol=1e-12)
    mean = effective_number_weights(p, n, 0.9, "mean")
    np.testing.assert_allclose(mean, cb / (p @ cb), rtol=1e-12)
    assert p @ mean == pytest.approx(1.0)
    # beta = 0: every class has effective number 1, so the pool needs no correction (uniform weights)
    np.testing.assert_allclose(effective_number_weights(p, n, 0.0, "max"), [1, 1, 1])
    # beta -> 1: E_n -> n, the inverse frequencies (the default weights)
    inverse = class_weights(LossConfig(), p).numpy()
    np.testing.assert_allclose(effective_number_weights(p, n, 1 - 1e-9, "max"), [0.01, 0.1, 1.0], rtol=1e-6)
    np.testing.assert_allclose(inverse, [0.01, 0.1, 1.0], rtol=1e-6)
    # under a class-balanced sampler (p = 1/3) the weights are n / E_n: they undo part of its balancing
    q = n * cb
    np.testing.assert_allclose(effective_number_weights(np.full(3, 1 / 3), n, 0.9, "max"), q / q.max(), rtol=1e-12)
    # a class the sampler never draws takes the largest weight (max) or 0 (mean), as the inverse weights do
    np.testing.assert_allclose(effective_number_weights([0.5, 0.5, 0.0], [5, 5, 0], 0.9, "max"), [1, 1, 1])
    np.testing.assert_allclose(effective_number_weights([0.5, 0.5, 0.0], [5, 5, 0], 0.9, "mean"), [1, 1, 0])


def test_inverse_stays_the_default_and_effective_needs_counts():
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(class_weights(LossConfig(), p).numpy(), [1 / 7, 0.5, 1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="counts"):
        class_weights(LossConfig(class_weights="effective"), p)


NEW_KEYS = ("class_weights", "beta", "drw_epoch", "gamma", "gamma_pos", "gamma_neg", "clip", "smoothing", "max_m", "scale")


def test_every_new_loss_key_is_hashed_only_when_set():
    defaults = LossConfig()
    for f in dataclasses.fields(LossConfig):
        if f.name in ("name", "weighted", "weight_norm", "reduction"):
            continue
        assert f.name in NEW_KEYS and _HASHED_WHEN_SET[f"loss.{f.name}"] == getattr(defaults, f.name), f.name
    # run-folder hashes as computed before these keys existed (dumped on the branch's base commit)
    assert config_hash(RunConfig(), "x") == "8237b11ae1"
    assert config_hash(resolve_config("K", "paper"), "r") == "b11002b02f"
    ccsa = apply_overrides(RunConfig(), ["algorithm.name=ccsa", "loss.weighted=false", "loss.weight_norm=mean"])
    assert config_hash(ccsa, "x") == "6a106e4779"
    changed = {"class_weights": "effective", "beta": 0.99, "drw_epoch": 3, "gamma": 1.5, "gamma_pos": 1.0,
               "gamma_neg": 2.0, "clip": 0.1, "smoothing": 0.2, "max_m": 0.3, "scale": 10.0}
    hashes = {config_hash(apply_overrides(RunConfig(), [f"loss.{k}={v}"]), "x") for k, v in changed.items()}
    assert len(hashes) == len(changed) and "8237b11ae1" not in hashes


def test_build_loss_passes_each_loss_its_own_keys():
    cfg = apply_overrides(LossConfig(), ["gamma=1.5", "gamma_pos=1", "gamma_neg=3", "clip=0.1", "smoothing=0.3",
                                         "max_m=0.4", "scale=16"])
    assert build_loss(dataclasses.replace(cfg, name="focal")).gamma == 1.5
    asl = build_loss(dataclasses.replace(cfg, name="asymmetric"))
    assert (asl.gamma_pos, asl.gamma_neg, asl.clip) == (1.0, 3.0, 0.1)
    assert build_loss(dataclasses.replace(cfg, name="label_smoothing")).smoothing == 0.3
    ldam = build_loss(dataclasses.replace(cfg, name="ldam"))
    assert (ldam.max_m, ldam.scale) == (0.4, 16.0)


@pytest.mark.parametrize("bad", ["loss.class_weights=sqrt", "loss.beta=1", "loss.beta=-0.1", "loss.drw_epoch=-1",
                                 "loss.gamma=-1", "loss.gamma_neg=-2", "loss.clip=1", "loss.smoothing=1.0",
                                 "loss.max_m=0", "loss.scale=-30"])
def test_bad_loss_keys_are_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        resolve_config("A", "smoke", 0, [bad])


def test_every_new_loss_trains_with_erm_through_the_config():
    cfg = resolve_config("A", "smoke", 0, ["loss.name=asymmetric", "loss.class_weights=effective", "loss.beta=0.99"])
    algo = make_algorithm(cfg.algorithm, cfg.loss).build(pool())
    assert isinstance(algo, ERM) and algo.criterion.clip == 0.05
    loss = algo.criterion(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0]), algo.class_w)
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("name, options", [("focal", {"gamma": 0.5}), ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5}),
                                           ("asymmetric", {"gamma_pos": 0.5, "gamma_neg": 0.5, "clip": 0.0})])
def test_fractional_focusing_keeps_gradients_finite_at_saturated_logits(name, options):
    # p = 1 exactly (1 - p = 0) at logits 200 apart: d/dp (1 - p)^0.5 is infinite there, times a zero
    z = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0], [-100.0, 100.0, 3.0]], requires_grad=True)
    LOSSES.get(name)("weighted_mean", **options)(z, torch.tensor([0, 1, 1])).backward()
    assert torch.isfinite(z.grad).all()


def test_the_run_record_names_the_loss_hyperparameters():
    rec = make_algorithm(AlgorithmConfig(), LossConfig(name="focal", gamma=1.5, class_weights="effective", beta=0.99,
                                                        drw_epoch=4)).describe()
    assert (rec["loss"], rec["loss_gamma"], rec["loss_class_weights"], rec["loss_beta"], rec["loss_drw_epoch"]) == (
        "focal", 1.5, "effective", 0.99, 4)
    plain = make_algorithm(AlgorithmConfig(), LossConfig()).describe()
    assert {k for k in plain if k.startswith("loss_")} == {"loss_class_weights"} and plain["loss_class_weights"] == "inverse"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_runs_ldam_with_deferred_effective_weights(name):
    # the hooks every algorithm inherits: the pool's counts reach LDAM at build, the epoch reaches DRW
    # (an algorithm overriding begin_epoch must call super()), and two steps on each side of the switch train
    from domgen.engine.loop import train_epoch
    from tests.test_algorithm_contract import CPU, batches, fresh, toy_pool

    model, optimizer, algorithm = fresh(name, LossConfig(name="ldam", class_weights="effective", beta=0.9, drw_epoch=1))
    assert algorithm.criterion.loss.margins is not None
    for epoch in (0, 1):
        algorithm.begin_epoch(epoch, 2)
        assert algorithm.criterion.reweighting == (epoch == 1)
        out = train_epoch(model, batches(algorithm, toy_pool(), epoch, n=2), algorithm, optimizer, CPU)
        assert np.isfinite(out["loss"]) and out["loss"] > 0
