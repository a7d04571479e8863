"""How each experiment's algorithm is wired: the baselines' class weights, CCSA's weights and sampler, the
hyperparameters each algorithm declares and how the config validates them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from domgen.algorithms import ALGORITHMS, CCSA, ERM, CCSAHparams, make_algorithm, random_hparams
from domgen.config import AlgorithmConfig, LossConfig, RunConfig, apply_overrides, from_dict, to_dict
from domgen.data.samplers import TrainPool
from domgen.errors import ConfigError
from domgen.runs.registry import EXPERIMENTS, resolve_config


@pytest.mark.parametrize("exp", list("ABCDE"))
def test_baselines_are_erm_with_weighted_cross_entropy_by_default(exp):
    cfg = resolve_config(exp, "quick")
    assert cfg.algorithm == AlgorithmConfig(name="erm", sampler="uniform")
    assert cfg.loss == LossConfig(name="ce", weighted=True, weight_norm="max", reduction="auto")
    assert "weighted cross-entropy" in EXPERIMENTS.get(exp).description


def test_table2_weighting_switches_map_to_the_loss_and_the_algorithm():
    # Table 2's Cl / Al columns: L unweighted classification, M unweighted alignment, N both.
    flags = {e: (resolve_config(e).loss.weighted, resolve_config(e).algorithm.weighted_align) for e in "KLMN"}
    assert flags == {"K": (True, True), "L": (False, True), "M": (True, False), "N": (False, False)}
    assert all(resolve_config(e).algorithm.name == "ccsa" for e in "FGHIJKLMNOPQRSTUV")


def erm_pool() -> TrainPool:
    # 6 of class 0, 2 of class 1, none of class 2 -> p = (3/4, 1/4, 0)
    return TrainPool.of(np.array([0] * 6 + [1] * 2), np.array(["HAM"] * 8), num_classes=3)


def test_erm_weights_are_the_pools_inverse_class_frequencies():
    algo = make_algorithm(AlgorithmConfig()).build(erm_pool())
    assert isinstance(algo, ERM) and algo.hparams.sampler == "uniform"
    np.testing.assert_allclose(algo.class_w.numpy(), [1 / 3, 1, 1])  # max-normalised 1/p, absent class 1
    # A batch (class 0, class 1) with logits (ln 2, 0, 0), (0, 0, 0): CE_0 = ln 2, CE_1 = ln 3; weighted
    # mean (1/3 ln 2 + ln 3) / (4/3).
    model = torch.nn.Identity()
    x = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    from domgen.algorithms import Batch

    step = algo.loss(model, Batch(x, y, torch.zeros_like(y)))
    assert step.loss.item() == pytest.approx((math.log(2) / 3 + math.log(3)) / (4 / 3))
    plain = make_algorithm(AlgorithmConfig(), LossConfig(weighted=False)).build(erm_pool())
    assert plain.class_w is None
    assert plain.loss(model, Batch(x, y, y))[0].item() == pytest.approx((math.log(2) + math.log(3)) / 2)
    # domgen 0.1's convention: weights of mean 1 under the pool, mean(w CE): w = (2/3, 2, 0)
    mean = make_algorithm(AlgorithmConfig(), LossConfig(weight_norm="mean")).build(erm_pool())
    np.testing.assert_allclose(mean.class_w.numpy(), [2 / 3, 2, 0], rtol=1e-6)
    assert mean.loss(model, Batch(x, y, y)).loss.item() == pytest.approx((2 / 3 * math.log(2) + 2 * math.log(3)) / 2)


def test_erm_weights_invert_what_its_sampler_draws():
    # A class-balanced sampler draws classes 0 and 1 equally: the class weights are then all equal.
    algo = make_algorithm(AlgorithmConfig(sampler="class_balanced")).build(erm_pool())
    np.testing.assert_allclose(algo.sampler.class_probabilities(), [0.5, 0.5, 0])
    np.testing.assert_allclose(algo.class_w.numpy(), [1, 1, 1])


def test_ccsa_wiring_follows_its_hyperparameters_and_the_loss_config():
    pool = TrainPool.of(np.array([0, 0, 1, 1, 0, 1, 0]), np.array(["HAM"] * 4 + ["DMF"] * 3), num_classes=2, seed=5,
                        primary="HAM")
    hp = CCSAHparams(alpha=0.3, pairs="branch", weighted_align=False)
    algo = make_algorithm(hp, LossConfig(weight_norm="mean")).build(pool)
    assert isinstance(algo, CCSA) and algo.pair_loss.alpha == 0.3 and algo.pair_loss.cls_loss.reduction == "mean"
    assert algo.sampler.mode == "branch" and algo.sampler.seed == 5 and algo.pair_w is None
    probs = algo.sampler.exact_probabilities()
    # mean normalisation: sum_c p1_c w1_c = 1, for each stream
    assert float((probs.p1 * algo.class_w1.numpy()).sum()) == pytest.approx(1.0)
    assert float((probs.p2 * algo.class_w2.numpy()).sum()) == pytest.approx(1.0)
    rec = algo.describe()
    assert (rec["algorithm"], rec["alpha"], rec["pairs"], rec["weighted_align"], rec["weight_norm"]) == ("ccsa", 0.3, "branch", False, "mean")
    assert rec["loss"] == "ce" and rec["weighted_cls"] is True and rec["sampler"] == "pairs"


def test_random_hparams_are_seeded_draws_from_the_declared_distributions():
    a, b = random_hparams(CCSA, 7), random_hparams(CCSA, 7)
    assert a == b and a != random_hparams(CCSA, 8)
    draws = [random_hparams(CCSA, s) for s in range(200)]
    assert all(10 <= d.margin <= 100 and 0.01 <= d.alpha <= 0.5 and 0.1 <= d.p_same <= 0.5 for d in draws)
    assert {d.pairs for d in draws} == {"exclusive", "branch", "uniform"}
    assert all(d.weighted_align is True and d.name == "ccsa" for d in draws)  # not searched: the default
    assert random_hparams(ERM, 0) == AlgorithmConfig()


def test_algorithm_keys_are_the_named_classes_and_validated_in_one_line():
    cfg = apply_overrides(RunConfig(), ["algorithm.margin=20", "algorithm.name=ccsa", "algorithm.pairs=uniform"])
    assert cfg.algorithm == CCSAHparams(margin=20.0, pairs="uniform")  # name first, whatever the order
    assert from_dict(to_dict(cfg)) == cfg  # the section's class comes back from its name
    assert apply_overrides(cfg, ["algorithm.name=ccsa"]) == cfg  # naming the same algorithm keeps its values
    assert apply_overrides(cfg, ["algorithm.name=erm"]).algorithm == AlgorithmConfig()
    with pytest.raises(ConfigError, match=r"algorithm 'erm' has no hyperparameter 'margin'; its keys: name, sampler"):
        apply_overrides(RunConfig(), ["algorithm.margin=50"])
    with pytest.raises(KeyError, match=r"unknown algorithm 'cssa'; did you mean 'ccsa'"):
        apply_overrides(RunConfig(), ["algorithm.name=cssa"])
    with pytest.raises(ConfigError, match=r"algorithm.margin=-1.0 \(must be > 0\)"):
        resolve_config("K", "smoke", 0, ["algorithm.margin=-1"])
    with pytest.raises(ConfigError, match=r"algorithm.pairs='random' \(exclusive \| branch \| uniform\)"):
        resolve_config("K", "smoke", 0, ["algorithm.pairs=random"])
    with pytest.raises(ConfigError, match=r"loss.reduction='sum'"):
        resolve_config("A", "smoke", 0, ["loss.reduction=sum"])
    assert set(ALGORITHMS.names()) >= {"erm", "ccsa"}
