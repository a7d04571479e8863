"""PairSampler: the pairs it draws follow its own closed-form class probabilities, and the weights built
from them are inverse-proportional with mean 1 under the sampler."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from domgen.data.pair_sampler import PairSampler, inverse_probability_weights

# A 2-class pool whose probabilities are worked out by hand below.
#   HAM (primary) 8 images: 6 of class 0, 2 of class 1
#   A   (size 2):           2 of class 0, none of class 1  -> same-class draws for y1 = 1 fall back to HAM
#   B   (size 6):           3 of class 0, 3 of class 1
HAND_LABELS = np.array([0] * 6 + [1] * 2 + [0] * 2 + [0] * 3 + [1] * 3)
HAND_DOMAINS = np.array(["HAM"] * 8 + ["A"] * 2 + ["B"] * 6)


def hand_sampler(p_same: float = 0.25, seed: int = 0, mode: str = "uniform", **kw) -> PairSampler:
    return PairSampler(HAND_LABELS, HAND_DOMAINS, primary="HAM", p_same=p_same, seed=seed, num_classes=2, mode=mode, **kw)


def random_pool(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A 7-class pool: a big primary with every class and three secondaries, two missing classes."""
    rng = np.random.default_rng(seed)
    domains = rng.choice(np.array(["HAM", "DMF", "PH2", "MSK"]), size=n, p=[0.6, 0.15, 0.1, 0.15])
    labels = rng.choice(7, size=n, p=[0.4, 0.2, 0.1, 0.05, 0.1, 0.05, 0.1])
    labels[domains == "PH2"] = rng.choice(2, size=(domains == "PH2").sum())  # PH2: nv and mel only
    dmf = domains == "DMF"
    labels[dmf & (labels == 3)] = 0  # DMF has no df
    return labels, domains


# ---- exact probabilities -------------------------------------------------------------------------


def test_exact_probabilities_by_hand():
    # N1 = 16, n1 = (11, 5). pi = (2/8, 6/8). q = pi_A (2/2, 0/2) + pi_B (3/6, 3/6) = (5/8, 3/8).
    # P(y2 = j | y1 = i) = 1/4 [i = j] + 3/4 q_j -> row 0 = (23/32, 9/32), row 1 = (15/32, 17/32).
    # joint = p1_i * row_i = (11/16)(23/32, 9/32), (5/16)(15/32, 17/32) = (253, 99; 75, 85) / 512.
    probs = hand_sampler().exact_probabilities()
    np.testing.assert_allclose(probs.p1, [11 / 16, 5 / 16])
    np.testing.assert_allclose(probs.joint, np.array([[253, 99], [75, 85]]) / 512)
    np.testing.assert_allclose(probs.p2, [328 / 512, 184 / 512])
    assert probs.p_equal == pytest.approx(338 / 512)


def test_weights_by_hand():
    # Two classes with nonzero probability: w_c = 1 / (2 p_c); four nonzero pairs: W_ij = 1 / (4 P_ij).
    sampler = hand_sampler()
    w1, w2 = sampler.class_weights("mean")
    np.testing.assert_allclose(w1, [8 / 11, 8 / 5])
    np.testing.assert_allclose(w2, [32 / 41, 32 / 23])
    np.testing.assert_allclose(sampler.pair_weights("mean"), 128 / np.array([[253, 99], [75, 85]]))
    # max (the authors'): the rarest class or pair gets 1, the others p_min / p.
    w1, w2 = sampler.class_weights("max")
    np.testing.assert_allclose(w1, [5 / 11, 1])
    np.testing.assert_allclose(w2, [184 / 328, 1])
    np.testing.assert_allclose(sampler.pair_weights("max"), 75 / np.array([[253, 99], [75, 85]]))
    tensors = sampler.loss_weights("mean")
    np.testing.assert_allclose(tensors["class_w1"].numpy(), [8 / 11, 8 / 5], rtol=1e-6)
    assert tuple(tensors["pair_w"].shape) == (2, 2)


def test_weights_normalised_and_inverse_proportional():
    labels, domains = random_pool(3000)
    sampler = PairSampler(labels, domains, seed=3)
    probs = sampler.exact_probabilities()
    w1, w2 = sampler.class_weights("mean")
    pw = sampler.pair_weights("mean")
    for p, w in ((probs.p1, w1), (probs.p2, w2), (probs.joint, pw)):
        assert float((p * w).sum()) == pytest.approx(1.0)
        nz = p > 0
        products = p[nz] * w[nz]  # w proportional to 1/p: p * w is one constant
        np.testing.assert_allclose(products, products[0])
        assert np.all(w[~nz] == 0)


def test_zero_probability_gets_zero_weight():
    # Three nonzero classes: w = 1 / (3 p) -> (2/3, 0, 4/3, 4/3).
    w = inverse_probability_weights(np.array([0.5, 0.0, 0.25, 0.25]), "mean")
    np.testing.assert_allclose(w, [2 / 3, 0, 4 / 3, 4 / 3])
    # max: a never-drawn class takes the rarest one's weight, as the authors' _get_cb does.
    np.testing.assert_allclose(inverse_probability_weights(np.array([0.5, 0.0, 0.25, 0.25]), "max"), [0.5, 1, 1, 1])
    # p_same = 1: every pair is same-class, so off-diagonal pairs have probability and weight 0.
    pw = hand_sampler(p_same=1.0).pair_weights("mean")
    assert pw[0, 1] == 0 and pw[1, 0] == 0
    np.testing.assert_allclose(pw.diagonal(), [1 / (2 * 11 / 16), 1 / (2 * 5 / 16)])


# ---- empirical frequencies match the exact ones --------------------------------------------------


@pytest.mark.parametrize("mode, exclude", [("uniform", False), ("exclusive", False), ("branch", True), ("exclusive", True)])
def test_empirical_frequencies_match_exact(mode, exclude):
    labels, domains = random_pool(5000)
    sampler = PairSampler(labels, domains, p_same=0.25, seed=11, mode=mode, exclude_own_domain=exclude)
    probs = sampler.exact_probabilities()
    K, epochs = 7, 20
    joint_counts = np.zeros((K, K))
    positives = same_domain = 0
    for e in range(epochs):
        i1, i2, positive = sampler.epoch_draw(e)
        np.add.at(joint_counts, (labels[i1], labels[i2]), 1)
        positives += positive.sum()
        same_domain += (domains[i1] == domains[i2]).sum()
        # y1 is exact within one epoch: every image is x1 once.
        np.testing.assert_array_equal(np.bincount(labels[i1], minlength=K), np.bincount(labels, minlength=K))
    n = joint_counts.sum()
    assert n == 5000 * epochs

    def check(emp: np.ndarray, p: np.ndarray) -> None:
        se = np.sqrt(p * (1 - p) / n)  # binomial standard error of a frequency
        assert np.all(np.abs(emp - p) <= 5 * se + 1e-12), (emp, p)

    check(joint_counts / n, probs.joint)
    check(joint_counts.sum(axis=0) / n, probs.p2)
    check(np.array(np.trace(joint_counts) / n), np.array(probs.p_equal))
    check(np.array(positives / n), np.array(probs.p_positive))
    check(np.array(same_domain / n), np.array(probs.p_same_domain))
    np.testing.assert_allclose(joint_counts.sum(axis=1) / n, probs.p1)


def test_secondary_domain_frequencies_and_no_primary_without_fallback():
    labels, domains = random_pool(4000)
    sampler = PairSampler(labels, domains, p_same=0.0, seed=5, mode="uniform")
    _, i2 = sampler.epoch_pairs(0)
    d2 = domains[i2]
    assert not (d2 == "HAM").any()  # without the same-class branch x2 never comes from the primary
    for s in ("DMF", "PH2", "MSK"):
        pi = (domains == s).sum() / (domains != "HAM").sum()
        assert abs((d2 == s).mean() - pi) <= 5 * np.sqrt(pi * (1 - pi) / len(i2))


def test_fallback_draws_same_class_from_primary():
    # p_same = 1: every x2 is a same-class draw. Class 1 is missing from A, so when y1 = 1 and A is drawn
    # (probability pi_A = 1/4) x2 comes from HAM; A is never used for y1 = 1, and HAM never for y1 = 0.
    sampler = hand_sampler(p_same=1.0, seed=2)
    y1s, d2s = [], []
    for e in range(400):
        i1, i2 = sampler.epoch_pairs(e)
        np.testing.assert_array_equal(HAND_LABELS[i1], HAND_LABELS[i2])  # y2 = y1 always
        y1s.append(HAND_LABELS[i1])
        d2s.append(HAND_DOMAINS[i2])
    y1, d2 = np.concatenate(y1s), np.concatenate(d2s)
    ones, zeros = d2[y1 == 1], d2[y1 == 0]
    assert set(ones.tolist()) == {"HAM", "B"} and set(zeros.tolist()) == {"A", "B"}
    assert abs((ones == "HAM").mean() - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / len(ones))
    assert abs((zeros == "A").mean() - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / len(zeros))
    # Same-class partners are uniform within their group: the primary's class-1 images (6, 7) for the
    # fallback, B's class-1 images (13, 14, 15) otherwise.
    i2 = np.concatenate([sampler.epoch_pairs(e)[1] for e in range(400)])
    for group in ([6, 7], [13, 14, 15]):
        counts = np.bincount(i2, minlength=16)[group]
        p = 1 / len(group)
        assert np.all(np.abs(counts / counts.sum() - p) <= 5 * np.sqrt(p * (1 - p) / counts.sum()))


def test_cross_branch_is_uniform_over_the_drawn_secondary():
    # p_same = 0: an image of A is drawn with pi_A / N_A = (1/4)(1/2) = 1/8, one of B with (3/4)(1/6) = 1/8.
    sampler = hand_sampler(p_same=0.0, seed=9)
    i2 = np.concatenate([sampler.epoch_pairs(e)[1] for e in range(500)])
    freq = np.bincount(i2, minlength=16) / len(i2)
    assert np.all(freq[:8] == 0)  # never the primary
    assert np.all(np.abs(freq[8:] - 1 / 8) <= 5 * np.sqrt((1 / 8) * (7 / 8) / len(i2)))


def test_exclusive_negatives_by_hand():
    # y1 = 0: A holds class 0 only, so every negative comes from B (its class-1 images): y2 = 1.
    # y1 = 1: A and B both hold class 0: y2 = 0. So P(y2 = j | y1 = i) = 1/4 [i = j] + 3/4 [i != j],
    # joint = (11/16, 5/16) x that = (11, 33; 15, 5) / 64, and P(y1 == y2) = 1/4 exactly.
    sampler = hand_sampler(mode="exclusive", seed=4)
    probs = sampler.exact_probabilities()
    np.testing.assert_allclose(probs.joint, np.array([[11, 33], [15, 5]]) / 64)
    assert probs.p_equal == pytest.approx(0.25) and probs.p_positive == pytest.approx(0.25)
    for e in range(50):
        i1, i2, positive = sampler.epoch_draw(e)
        np.testing.assert_array_equal(positive, HAND_LABELS[i1] == HAND_LABELS[i2])
        negative_of_0 = ~positive & (HAND_LABELS[i1] == 0)
        assert set(HAND_DOMAINS[i2[negative_of_0]].tolist()) <= {"B"}
        assert (HAND_LABELS[i2[negative_of_0]] == 1).all()


def test_branch_mode_labels_pairs_by_branch():
    # The authors' code: negatives uniform over D_s (so some are same-class), labelled negative anyway.
    sampler = hand_sampler(mode="branch", seed=5)
    probs = sampler.exact_probabilities()
    np.testing.assert_allclose(probs.joint, np.array([[253, 99], [75, 85]]) / 512)  # as uniform
    assert probs.p_positive == 0.25 and probs.p_equal == pytest.approx(338 / 512)
    positive = np.concatenate([sampler.epoch_draw(e).positive for e in range(2000)])
    assert abs(positive.mean() - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / len(positive))
    i1, i2, positive = sampler.epoch_draw(7)
    assert (positive <= (HAND_LABELS[i1] == HAND_LABELS[i2])).all()  # a positive is always same-class


def test_exclude_own_domain():
    # x1 in A: partners from B only; x1 in B: from A, or the primary when A cannot serve (A lacks
    # class 1 for a positive of class 1; holds no class but 0 for a negative of class 0).
    sampler = hand_sampler(mode="exclusive", exclude_own_domain=True, seed=6)
    for e in range(200):
        i1, i2, _ = sampler.epoch_draw(e)
        d1, d2 = HAND_DOMAINS[i1], HAND_DOMAINS[i2]
        assert not ((d1 == d2) & (d1 != "HAM")).any()
        assert (d2[d1 == "A"] == "B").all()
        assert set(d2[d1 == "B"].tolist()) <= {"A", "HAM"}
    # Same-domain pairs left: x1 in HAM with a class-1 positive whose drawn A falls back to HAM:
    # (2/16) (1/4) (1/4) = 1/128.
    assert sampler.exact_probabilities().p_same_domain == pytest.approx(1 / 128)


def table1_pool(nsec: str) -> tuple[np.ndarray, np.ndarray]:
    """Training pool on Table 1's counts: half of HAM10000 (its train split) plus, from every other source,
    nsec images per class present (all of its train half for nsec = a)."""
    from domgen.data.labels import CLASS_INDEX, domain_code
    from domgen.data.synthetic import TABLE1

    labels, domains = [], []
    for source, row in TABLE1.items():
        for cls, n in row.items():
            train = round(0.5 * n)
            k = train if source == "HAM10000" or nsec == "a" else min(int(nsec), train)
            labels += [CLASS_INDEX[cls]] * k
            domains += [domain_code(source)] * k
    return np.array(labels), np.array(domains)


@pytest.mark.parametrize("nsec", ["1", "2", "3", "4", "5", "a"])
def test_exactly_a_quarter_positive_pairs_on_table1(nsec):
    labels, domains = table1_pool(nsec)
    sampler = PairSampler(labels, domains, seed=0)  # defaults: exclusive negatives, p_same 0.25
    probs = sampler.exact_probabilities()
    assert probs.p_equal == pytest.approx(0.25, abs=1e-12) and probs.p_positive == 0.25
    equal = n = 0
    while n < 100_000:
        i1, i2, positive = sampler.epoch_draw(n)
        np.testing.assert_array_equal(positive, labels[i1] == labels[i2])
        equal, n = equal + positive.sum(), n + len(i1)
    assert abs(equal / n - 0.25) <= 5 * np.sqrt(0.25 * 0.75 / n)
    # domgen 0.1's uniform negatives land on y1's class far more often (0.42-0.72 on the real counts).
    assert PairSampler(labels, domains, mode="uniform").exact_probabilities().p_equal > 0.35


# ---- construction errors -------------------------------------------------------------------------


def test_no_secondary_domain_raises():
    with pytest.raises(ValueError, match="second domain"):
        PairSampler(np.array([0, 1, 2]), np.array(["HAM"] * 3))


def test_class_absent_from_secondary_and_primary_raises_naming_it():
    # bcc (class 2) is only in DMF; PH2 lacks it and so does the primary: no same-class partner exists.
    labels = np.array([0, 1, 0, 2, 0, 1])
    domains = np.array(["HAM", "HAM", "DMF", "DMF", "PH2", "PH2"])
    with pytest.raises(ValueError, match="'bcc'.*PH2"):
        PairSampler(labels, domains)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="length"):
        PairSampler(np.array([0, 1]), np.array(["HAM"]))
    with pytest.raises(ValueError, match="labels must lie"):
        PairSampler(np.array([0, 7]), np.array(["HAM", "DMF"]))
    with pytest.raises(ValueError, match="p_same"):
        PairSampler(np.array([0, 0]), np.array(["HAM", "DMF"]), p_same=1.5)
    with pytest.raises(ValueError, match="pair mode"):
        PairSampler(np.array([0, 0]), np.array(["HAM", "DMF"]), mode="random")


def test_no_negative_partner_raises():
    # Every domain holds class 0 only: an exclusive negative cannot be drawn.
    with pytest.raises(ValueError, match="no negative partner"):
        PairSampler(np.array([0, 0, 0]), np.array(["HAM", "DMF", "DMF"]), num_classes=2)


# ---- epochs, determinism, resume -----------------------------------------------------------------


def test_every_x1_once_per_epoch_and_len():
    labels, domains = random_pool(1000)
    sampler = PairSampler(labels, domains, seed=0)
    assert len(sampler) == 1000
    for e in range(3):
        i1, i2 = sampler.epoch_pairs(e)
        np.testing.assert_array_equal(np.sort(i1), np.arange(1000))
        assert i2.shape == (1000,) and i2.min() >= 0 and i2.max() < 1000
    pairs = list(sampler)
    assert sorted(p[0] for p in pairs) == list(range(1000))


def test_determinism_seed_and_epoch():
    labels, domains = random_pool(1000)
    a = PairSampler(labels, domains, seed=7)
    b = PairSampler(labels, domains, seed=7)
    c = PairSampler(labels, domains, seed=8)
    for x, y in zip(a.epoch_pairs(3), b.epoch_pairs(3)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.epoch_pairs(3)[0], a.epoch_pairs(4)[0])  # new epoch, new order
    assert not np.array_equal(a.epoch_pairs(3)[0], c.epoch_pairs(3)[0])  # new seed, new order
    b.set_epoch(3)
    assert list(b) == list(zip(*(arr.tolist() for arr in a.epoch_pairs(3))))


def test_resume_mid_epoch_equals_uninterrupted():
    labels, domains = random_pool(500)
    full = PairSampler(labels, domains, seed=4)
    full.set_epoch(2)
    expected = list(full)

    first = PairSampler(labels, domains, seed=4)
    first.set_epoch(2)
    it = iter(first)
    head = [next(it) for _ in range(123)]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["position"] == 123

    resumed = PairSampler(labels, domains, seed=4)
    resumed.load_state_dict(state)
    assert head + list(resumed) == expected
    # A caller behind a prefetching loader passes what it consumed.
    resumed.load_state_dict(first.state_dict(position=100))
    assert list(resumed) == expected[100:]


def test_load_state_from_other_seed_raises():
    labels, domains = random_pool(200)
    state = PairSampler(labels, domains, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PairSampler(labels, domains, seed=2).load_state_dict(state)


# ---- cost is O(N) --------------------------------------------------------------------------------


def _best_time(sampler: PairSampler, repeats: int = 7) -> float:
    best = float("inf")
    for e in range(repeats):
        t = time.perf_counter()
        sampler.epoch_pairs(e)
        best = min(best, time.perf_counter() - t)
    return best


def test_epoch_cost_is_linear():
    small = PairSampler(*random_pool(10_000), seed=0)
    big = PairSampler(*random_pool(100_000), seed=0)
    # 10x the pool: linear cost is ~10x, quadratic would be ~100x.
    assert _best_time(big) / _best_time(small) < 30
    # Memory: nothing of size N1 x N2 (here ~4e9 entries); a handful of [N] arrays at most.
    tracemalloc.start()
    try:
        big.epoch_pairs(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Bytes: ~65 per pair today (a few int64/float64 [N] arrays); an N1 x N2 mask would be ~4 GB.
    assert peak < 400 * 100_000
