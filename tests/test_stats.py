"""Holm's correction in ``compare`` and grouped bootstrap intervals: hand computations and a coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from domgen.data.labels import TABLE2_DOMAINS
from domgen.results.bootstrap import domain_intervals, grouped_bootstrap
from domgen.results.collect import collect
from domgen.results.compare import compare, format_compare, holm
from test_tables import seven, write_run


def test_holm_by_hand():
    # sorted: .005 x4 = .02; .01 x3 = .03; .03 x2 = .06; .04 x1 = .04 -> running max keeps .06.
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not a comparison: m = 2 here. .2 x2 = .4; .6 x1 = .6. And the cap at 1: .7 x2 -> 1.
    out = holm([0.6, math.nan, 0.2])
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.4)
    assert holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])


def test_compare_corrects_across_domains_and_says_how_many(tmp_path):
    # 3 seeds; each domain gets its own spread of differences so its t-test p differs.
    spread = {d: 1.0 + i for i, d in enumerate(TABLE2_DOMAINS)}
    for seed, e in enumerate((-1.0, 0.0, 1.0)):
        write_run(tmp_path, "E", seed, {d: 70.0 + 5.0 + e * spread[d] + 0.5 * seed for d in TABLE2_DOMAINS})
        write_run(tmp_path, "D", seed, seven(70.0))
    res = compare(collect(tmp_path), "E", "D")
    raw = {}
    for d in TABLE2_DOMAINS:  # differences 5 - s + 0, 5 + 0.5, 5 + s + 1: scipy's paired t-test by hand
        diffs = np.array([5.0 - spread[d], 5.5, 6.0 + spread[d]])
        raw[d] = stats.ttest_1samp(diffs, 0.0).pvalue
        assert res.loc[d, "t_p"] == pytest.approx(raw[d])
    # Holm over the 7 domains: the i-th smallest times (7 - i + 1), then the running maximum, capped at 1
    order = sorted(TABLE2_DOMAINS, key=raw.get)
    running = 0.0
    for i, d in enumerate(order):
        running = max(running, min(1.0, (7 - i) * raw[d]))
        assert res.loc[d, "t_p_holm"] == pytest.approx(running)
    assert math.isnan(res.loc["avg", "t_p_holm"]) and res.attrs["holm_m"] == 7
    assert "adjusted across 7 comparisons" in format_compare(collect(tmp_path), "E", "D")


def _simulate(rng, per_class=60, means=(0.7, 0.5), concentration=1.0):
    """Two classes, ``per_class`` patients each with 1-4 cases; a patient's cases are right with the patient's
    own probability ~ Beta(mean, concentration) (strongly correlated within a patient). Size and probability
    are independent, so the population macro recall is the mean of the Beta means: 60."""
    ys, groups, correct, gid = [], [], [], 0
    for c, mu in enumerate(means):
        for _ in range(per_class):
            size = int(rng.integers(1, 5))
            pg = rng.beta(mu * concentration, (1 - mu) * concentration)
            ys += [c] * size
            groups += [gid] * size
            correct += list(rng.random(size) < pg)
            gid += 1
    y, ok = np.array(ys), np.array(correct)
    # 0.8 on the true class when right, on the other class when wrong
    probs = np.where(ok[:, None] == (np.arange(2)[None, :] == y[:, None]), 0.8, 0.2)
    return y, probs, np.array(groups)


def test_grouped_bootstrap_covers_the_true_value_at_the_nominal_rate():
    # 200 simulated test sets, 400 resamples each. Binomial sd of a 95% coverage over 200 draws is 1.5 points:
    # the grouped interval must be within 4.5 points (3 sd) of 95%. Resampling single cases ignores the
    # within-patient correlation and covers clearly less (here about 80%), which is why groups are resampled.
    rng = np.random.default_rng(1)
    hits_grouped = hits_cases = 0
    sims = 200
    for s in range(sims):
        y, p, g = _simulate(rng)
        a = grouped_bootstrap(y, p, g, n_boot=400, seed=s)
        b = grouped_bootstrap(y, p, np.arange(len(y)), n_boot=400, seed=s)
        hits_grouped += a.low <= 60.0 <= a.high
        hits_cases += b.low <= 60.0 <= b.high
    assert abs(hits_grouped / sims - 0.95) <= 0.045
    assert hits_cases / sims < hits_grouped / sims - 0.05


def test_bootstrap_value_and_a_degenerate_interval_by_hand():
    # Every case right: each resample's macro recall is 100, so the interval is [100, 100]. One class absent
    # from a resample (all its patients missed by the draw) leaves the mean over the present class, still 100.
    y = np.array([0, 0, 1, 1, 2])
    p = np.eye(3)[y] * 0.9 + 0.05
    ci = grouped_bootstrap(y, p, np.array(["a", "a", "b", "c", "c"]), n_boot=200, seed=0)
    assert (ci.value, ci.low, ci.high, ci.n, ci.groups) == (100.0, 100.0, 100.0, 5, 3)
    # Point value equals macro recall by hand: class 0 1/2 right, class 1 1/1 -> (50 + 100) / 2 = 75
    y2, pred = np.array([0, 0, 1]), np.array([0, 1, 1])
    ci2 = grouped_bootstrap(y2, np.eye(2)[pred], np.array(["a", "b", "c"]), n_boot=500, seed=0)
    assert ci2.value == pytest.approx(75.0) and ci2.low <= 75.0 <= ci2.high
    # the slow path (macro_f1) agrees on the degenerate case
    assert grouped_bootstrap(y, p, np.arange(5), "macro_f1", n_boot=50).low == pytest.approx(100.0)


def test_domain_intervals_are_per_domain_and_independent_of_the_others():
    rng = np.random.default_rng(0)
    y, p, g = _simulate(rng, per_class=20)
    pred = {"label": np.concatenate([y, y]), "probs": np.concatenate([p, p]),
            "group": np.concatenate([g.astype(str), np.char.add("x", g.astype(str))]),
            "domain": np.array(["HAM"] * len(y) + ["PH2"] * len(y))}
    both = {r["domain"]: r for r in domain_intervals(pred, n_boot=300)}
    alone = domain_intervals({k: v[: len(y)] for k, v in pred.items()}, n_boot=300)[0]
    assert both["HAM"] == alone and both["HAM"]["value"] == both["PH2"]["value"]
    assert both["HAM"]["low"] != both["PH2"]["low"] or both["HAM"]["high"] != both["PH2"]["high"]  # own seeds
