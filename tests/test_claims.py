"""bncourse.claims: glued values that do not depend on round-off, and comparisons with their
uncertainty (what a sentence may call a difference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bncourse import claims
from bncourse.claims import (
    Estimate,
    assert_indistinguishable,
    assert_ordered,
    difference,
    mean_se,
    paired_difference,
    paired_median_difference,
    paired_ratio,
    round_significant,
)


def test_round_significant_keeps_the_digits_the_text_can_show():
    assert round_significant(0.038862460468298596, 6) == 0.0388625
    assert round_significant(0.03886246046829859, 6) == 0.0388625  # the last bit is gone
    assert round_significant(-15172.204121978717, 3) == -15200.0
    assert round_significant(0.0, 6) == 0.0
    assert math.isinf(round_significant(math.inf, 3))
    with pytest.raises(ValueError, match="at least 1"):
        round_significant(1.0, 0)


def test_glue_rounds_floats_and_leaves_integers(monkeypatch):
    stored = {}

    def fake_glue(name, value, display):
        stored[name] = value

    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", fake_glue)
    claims.glue("a", np.float64(2.4149051305101032))
    claims.glue("b", np.int64(12))
    claims.glue("c", 0.123456789, digits=2)
    claims.glue("d", 0.1 + 0.2)
    assert stored == {"a": 2.41491, "b": 12, "c": 0.12, "d": 0.3}
    assert type(stored["b"]) is int


def test_mean_se_matches_the_textbook_formulas():
    v = np.array([1.0, 2.0, 4.0, 7.0])
    e = mean_se(v)
    assert e.mean == pytest.approx(3.5)
    assert e.se == pytest.approx(np.std(v, ddof=1) / 2)
    half = stats.t.ppf(0.975, 3) * e.se
    assert (e.low, e.high) == pytest.approx((3.5 - half, 3.5 + half))
    assert e.n == 4 and not e.excludes_zero  # t(3) = 3.18 standard errors reach below 0
    assert str(e) == "3.5 ± 1.3 (n = 4)"


def test_paired_difference_removes_what_the_arms_share():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 10, size=8)  # a seed effect much larger than the difference
    a, b = shared + 1.0 + rng.normal(0, 0.1, 8), shared + rng.normal(0, 0.1, 8)
    paired = paired_difference(a, b)
    unpaired = difference(a, b)
    assert paired.excludes_zero and paired.low > 0
    assert not unpaired.excludes_zero, "the seed effect hides the difference without pairing"
    assert paired.mean == pytest.approx(unpaired.mean)
    with pytest.raises(ValueError, match="as many values"):
        paired_difference([1, 2, 3], [1, 2])


def test_bad_samples_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_se([1.0])
    with pytest.raises(ValueError, match="finite"):
        mean_se([1.0, float("nan")])
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 5, 6])
    with pytest.raises(ValueError, match="needs more repeats than 3"):
        paired_ratio([1, 2, 3], [1, 2, 3])


def test_the_median_interval_covers_the_true_median_as_often_as_it_says():
    rng = np.random.default_rng(1)
    n, trials, covered = 25, 2000, 0
    for _ in range(trials):
        base = rng.lognormal(0, 0.3, n)
        ratio = paired_ratio(base * rng.lognormal(np.log(1.2), 0.2, n), base)
        covered += ratio.low <= 1.2 <= ratio.high
    # The order-statistic interval is conservative: at least 95 % (up to sampling error).
    assert covered / trials > 0.94
    r = paired_ratio(np.arange(1, 21) * 1.1, np.arange(1, 21))
    assert r.median == pytest.approx(1.1) and r.excludes_one  # every ratio is 1.1
    assert r.low == pytest.approx(1.1) and r.high == pytest.approx(1.1)


def test_assert_ordered_and_indistinguishable_say_which_sentence_failed():
    up = Estimate(mean=1.0, se=0.2, n=5, low=0.4, high=1.6)
    noise = Estimate(mean=0.3, se=0.3, n=5, low=-0.5, high=1.1)
    assert_ordered(up, sign=1, what="A above B")
    with pytest.raises(AssertionError, match="B above A.*below 0"):
        assert_ordered(up, sign=-1, what="B above A")
    with pytest.raises(AssertionError, match="A above B.*interval is \\[-0.5, 1.1\\]"):
        assert_ordered(noise, sign=1, what="A above B")
    assert_indistinguishable(noise, what="no difference")
    with pytest.raises(AssertionError, match="within the noise"):
        assert_indistinguishable(up, what="no difference")
    slower = paired_ratio(np.linspace(1.3, 1.5, 10), np.ones(10))
    assert_ordered(slower, sign=1, what="slower")
    with pytest.raises(AssertionError, match="faster"):
        assert_ordered(slower, sign=-1, what="faster")
    with pytest.raises(ValueError, match="sign"):
        assert_ordered(up, sign=0, what="x")


def test_the_median_of_paired_differences_resists_a_few_slow_steps():
    rng = np.random.default_rng(2)
    base = rng.lognormal(0, 0.2, 60)
    a, b = base + 1.0 + rng.normal(0, 0.05, 60), base.copy()
    a[:3] += 50.0  # three stalls in one arm
    med = paired_median_difference(a, b)
    assert med.low > 0.9 and med.high < 1.1 and med.excludes_zero
    mean = paired_difference(a, b)
    assert mean.mean > 3.0, "the stalls pull the mean far from the typical step"
    assert_ordered(med, sign=1, what="A slower")
    with pytest.raises(AssertionError, match="B slower"):
        assert_ordered(med, sign=-1, what="B slower")
    with pytest.raises(ValueError, match="more repeats than 4"):
        paired_median_difference([1, 2, 3, 4], [0, 0, 0, 0])
