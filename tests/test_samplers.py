"""The sampler family: what each draws per epoch (exact probabilities, and frequencies over many epochs)."""

from __future__ import annotations

import numpy as np
import pytest

from domgen.data.pair_sampler import PairSampler
from domgen.data.samplers import SAMPLERS, TrainPool, chunks
from domgen.seeds import derive_seed


def pool(seed: int = 0) -> TrainPool:
    # HAM: 6 images (classes 0, 0, 0, 0, 1, 2); DMF: 2 images (0, 1); UDA: 2 images (0, 0)
    labels = np.array([0, 0, 0, 0, 1, 2, 0, 1, 0, 0])
    domains = np.array(["HAM"] * 6 + ["DMF"] * 2 + ["UDA"] * 2)
    return TrainPool.of(labels, domains, num_classes=3, seed=seed, primary="HAM")


def test_registry_holds_the_family():
    assert set(SAMPLERS.names()) == {"uniform", "domain_balanced", "class_balanced", "sqrt_frequency", "effective_number",
                                     "pairs"}
    with pytest.raises(KeyError, match="did you mean 'uniform'"):
        SAMPLERS.get("uniforme")


def test_train_pool_codes_domains_in_sorted_order():
    p = pool()
    assert p.domain_names == ("DMF", "HAM", "UDA") and p.domains.tolist() == [1] * 6 + [0] * 2 + [2] * 2
    assert p.domain_labels.tolist() == ["HAM"] * 6 + ["DMF"] * 2 + ["UDA"] * 2
    assert p.domain_index(["UDA", "PH2", "HAM"]).tolist() == [2, -1, 1]


def test_uniform_is_the_seeded_permutation_of_the_pool():
    s = SAMPLERS.get("uniform")(pool(seed=3))
    draws = s.epoch_batches(4, 4)
    # exactly the order the trainer has always drawn: permutation under derive_seed(seed, epoch, "order")
    expected = np.random.default_rng(derive_seed(3, 4, "order")).permutation(10)
    assert [d.idx.tolist() for d in draws] == [c.tolist() for c in chunks(expected, 4)]
    assert sorted(np.concatenate([d.idx for d in draws]).tolist()) == list(range(10))  # each image once
    np.testing.assert_allclose(s.class_probabilities(), [0.7, 0.2, 0.1])
    assert [len(d.idx) for d in s.epoch_batches(0, 3)] == [3, 3, 3]  # a trailing batch of one is dropped


def test_domain_balanced_draws_each_domain_equally_often():
    s = SAMPLERS.get("domain_balanced")(pool())
    # a domain uniformly (1/3), then one of its images: HAM images 1/18, DMF and UDA images 1/6
    np.testing.assert_allclose(s.image_probabilities(), [1 / 18] * 6 + [1 / 6] * 4)
    # classes: 0 = 4/18 + 1/6 + 2/6, 1 = 1/18 + 1/6, 2 = 1/18
    np.testing.assert_allclose(s.class_probabilities(), [13 / 18, 4 / 18, 1 / 18])
    drawn = np.concatenate([d.idx for e in range(2000) for d in s.epoch_batches(e, 4)])
    share = np.bincount(pool().domains[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.01)
    assert [d.idx.tolist() for d in s.epoch_batches(5, 4)] == [d.idx.tolist() for d in s.epoch_batches(5, 4)]


def test_class_balanced_draws_each_present_class_equally_often():
    s = SAMPLERS.get("class_balanced")(pool())
    np.testing.assert_allclose(s.class_probabilities(), [1 / 3, 1 / 3, 1 / 3])
    drawn = np.concatenate([d.idx for e in range(2000) for d in s.epoch_batches(e, 5)])
    np.testing.assert_allclose(np.bincount(pool().labels[drawn], minlength=3) / len(drawn), [1 / 3] * 3, atol=0.01)


def test_pairs_batches_hold_the_x1s_then_their_partners_and_the_pair_labels():
    p = pool(seed=2)
    s = SAMPLERS.get("pairs")(p, p_same=0.5, mode="branch")
    assert isinstance(s, PairSampler) and s.images_per_sample == 2 and s.mode == "branch" and s.seed == 2
    pairs = s.epoch_draw(1)
    draws = s.epoch_batches(1, 4)  # 10 pairs -> batches of 4, 4, 2 pairs
    assert [len(d.idx) for d in draws] == [8, 8, 4]
    for d, a, b, pos in zip(draws, chunks(pairs.idx1, 4), chunks(pairs.idx2, 4), chunks(pairs.positive, 4)):
        assert d.idx.tolist() == a.tolist() + b.tolist() and d.extras["positive"].tolist() == pos.tolist()
    probs = s.exact_probabilities()
    np.testing.assert_allclose(s.class_probabilities(), (probs.p1 + probs.p2) / 2)


@pytest.mark.parametrize("name", ["uniform", "domain_balanced", "class_balanced", "pairs"])
def test_state_refuses_another_pool_or_seed(name):
    s = SAMPLERS.get(name)(pool(seed=1))
    SAMPLERS.get(name)(pool(seed=1)).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="different"):
        SAMPLERS.get(name)(pool(seed=2)).load_state_dict(s.state_dict())
