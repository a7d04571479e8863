"""The imbalance samplers: exact class probabilities by hand, the empirical class frequencies of many
epochs against them, and the class weights that invert what they draw."""

from __future__ import annotations

import numpy as np
import pytest

from domgen.algorithms import make_algorithm
from domgen.config import AlgorithmConfig, LossConfig
from domgen.data.samplers import SAMPLERS, TrainPool

# class counts 9, 4, 1 and none of class 3, over two domains
LABELS = np.array([0] * 9 + [1] * 4 + [2])
EPOCHS = 3000  # 3000 epochs x 14 draws = 42,000 draws: a class frequency's sd is at most 0.5 / sqrt(42000) = 0.0024
TOL = 0.012  # five standard deviations


def pool(seed: int = 0) -> TrainPool:
    return TrainPool.of(LABELS, ["HAM"] * 7 + ["DMF"] * 7, num_classes=4, seed=seed, primary="HAM")


def empirical(sampler) -> np.ndarray:
    drawn = np.concatenate([d.idx for e in range(EPOCHS) for d in sampler.epoch_batches(e, 5)])
    return np.bincount(LABELS[drawn], minlength=4) / len(drawn)


def effective(n: int, beta: float) -> float:
    """E_n = (1 - beta^n) / (1 - beta) (Cui et al. Eq. 3), by hand."""
    return (1 - beta**n) / (1 - beta)


def test_sqrt_frequency_draws_classes_by_the_square_root_of_their_counts():
    s = SAMPLERS.get("sqrt_frequency")(pool())
    exact = np.array([3, 2, 1, 0]) / 6  # sqrt(9), sqrt(4), sqrt(1) over their sum
    np.testing.assert_allclose(s.class_probabilities(), exact, rtol=1e-12)
    # uniform within a class: 1/2 / 9 per image of class 0, 1/3 / 4 of class 1, 1/6 for the one of class 2
    np.testing.assert_allclose(s.image_probabilities(), [1 / 18] * 9 + [1 / 12] * 4 + [1 / 6], rtol=1e-12)
    np.testing.assert_allclose(empirical(s), exact, atol=TOL)


@pytest.mark.parametrize("beta", [0.9, 0.5])
def test_effective_number_draws_classes_by_count_over_effective_number(beta):
    s = SAMPLERS.get("effective_number")(pool(), beta=beta)
    mass = np.array([9 / effective(9, beta), 4 / effective(4, beta), 1 / effective(1, beta), 0.0])
    exact = mass / mass.sum()
    np.testing.assert_allclose(s.class_probabilities(), exact, rtol=1e-12)
    # each image with probability proportional to its class's weight (1 - beta) / (1 - beta^n)
    w = np.array([1 / effective(n, beta) for n in (9, 4, 1)])
    np.testing.assert_allclose(s.image_probabilities(), np.repeat(w, [9, 4, 1]) / (np.array([9, 4, 1]) @ w), rtol=1e-12)
    np.testing.assert_allclose(empirical(s), exact, atol=TOL)


def test_effective_number_spans_the_pool_to_class_balance():
    pool_freq = np.array([9, 4, 1, 0]) / 14
    np.testing.assert_allclose(SAMPLERS.get("effective_number")(pool(), beta=0.0).class_probabilities(), pool_freq)
    near_one = SAMPLERS.get("effective_number")(pool(), beta=1 - 1e-9).class_probabilities()
    np.testing.assert_allclose(near_one, SAMPLERS.get("class_balanced")(pool()).class_probabilities(), atol=1e-7)
    with pytest.raises(ValueError, match="beta"):
        SAMPLERS.get("effective_number")(pool(), beta=1.0)


def test_the_class_weights_invert_what_each_sampler_draws():
    for name in ("sqrt_frequency", "effective_number"):
        algo = make_algorithm(AlgorithmConfig(sampler=name), LossConfig(weight_norm="mean")).build(pool())
        p, w = algo.sampler.class_probabilities(), algo.class_w.numpy()
        # inverse weights: every drawn class carries the same expected weight p_c w_c (= 1 / 3 here)
        np.testing.assert_allclose((p * w)[:3], [1 / 3] * 3, rtol=1e-6)
        assert w[3] == 0.0  # never drawn


def test_the_sampler_takes_beta_from_the_loss_and_the_effective_weights_then_are_uniform():
    loss = LossConfig(class_weights="effective", beta=0.5)
    algo = make_algorithm(AlgorithmConfig(sampler="effective_number"), loss).build(pool())
    assert algo.sampler.beta == 0.5
    # the sampler already reached the effective-number target: nothing left for the weights to correct
    np.testing.assert_allclose(algo.class_w.numpy(), [1.0, 1.0, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["sqrt_frequency", "effective_number"])
def test_draws_are_a_function_of_seed_and_epoch_and_state_refuses_another_pool(name):
    s = SAMPLERS.get(name)(pool(seed=1))
    again = SAMPLERS.get(name)(pool(seed=1))
    assert [d.idx.tolist() for d in s.epoch_batches(4, 5)] == [d.idx.tolist() for d in again.epoch_batches(4, 5)]
    assert sum(len(d.idx) for d in s.epoch_batches(0, 5)) == 14  # one pool's worth of draws per epoch
    SAMPLERS.get(name)(pool(seed=1)).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="different"):
        SAMPLERS.get(name)(pool(seed=2)).load_state_dict(s.state_dict())


def test_effective_number_state_refuses_another_beta():
    state = SAMPLERS.get("effective_number")(pool(), beta=0.9).state_dict()
    with pytest.raises(ValueError, match="beta"):
        SAMPLERS.get("effective_number")(pool(), beta=0.99).load_state_dict(state)
