"""Confidence intervals over seeds and rank correlation: hand-computed values, scipy, edge cases."""

from __future__ import annotations

import math
import warnings

import pytest
from scipy import stats as scipy_stats

from discovery.stats import Estimate, mean_ci, spearman


def test_two_values_match_the_hand_computed_t_interval():
    # [0, 2]: mean 1, sample variance 2, standard error sqrt(2 / 2) = 1; t(0.975, df=1) = 12.7062047...
    est = mean_ci([0.0, 2.0])
    assert est.n == 2 and est.mean == 1.0
    assert est.low == pytest.approx(1 - 12.706204736174707)
    assert est.high == pytest.approx(1 + 12.706204736174707)
    assert est.half_width == pytest.approx(12.706204736174707)


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_interval_matches_scipy(confidence):
    values = [0.61, 0.58, 0.66, 0.70, 0.55, 0.63]
    est = mean_ci(values, confidence)
    low, high = scipy_stats.t.interval(
        confidence, len(values) - 1, loc=sum(values) / len(values), scale=scipy_stats.sem(values)
    )
    assert est.mean == pytest.approx(sum(values) / len(values))
    assert (est.low, est.high) == (pytest.approx(low), pytest.approx(high))


def test_higher_confidence_gives_a_wider_interval():
    values = [1.0, 2.0, 4.0]
    assert mean_ci(values, 0.99).half_width > mean_ci(values, 0.95).half_width > mean_ci(values, 0.5).half_width


def test_one_seed_has_a_zero_width_interval():
    est = mean_ci([0.25])
    assert est == Estimate(0.25, 0.25, 0.25, 1)
    assert est.half_width == 0
    assert str(est) == "0.2500 (n=1)"


def test_no_values_give_nan_and_n_zero():
    est = mean_ci([])
    assert est.n == 0 and all(math.isnan(x) for x in (est.mean, est.low, est.high))


def test_identical_values_have_a_zero_width_interval():
    est = mean_ci([0.1] * 5)
    assert (est.mean, est.low, est.high, est.n) == (0.1, 0.1, 0.1, 5)


def test_a_nan_value_propagates_instead_of_being_dropped():
    est = mean_ci([1.0, float("nan"), 3.0])
    assert est.n == 3 and all(math.isnan(x) for x in (est.mean, est.low, est.high))


def test_str_and_as_dict():
    est = Estimate(mean=0.5, low=0.25, high=0.75, n=4)
    assert str(est) == "0.5000 ± 0.2500 (n=4)"
    assert est.as_dict() == {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 4}


def test_spearman_hand_computed():
    # rank differences (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1.0, 5.0, 2.0, 9.0], [3.0, 8.0, 1.0, 7.0]) == pytest.approx(
        scipy_stats.spearmanr([1.0, 5.0, 2.0, 9.0], [3.0, 8.0, 1.0, 7.0]).statistic
    )


def test_spearman_is_nan_below_three_points_or_for_a_constant_input():
    assert math.isnan(spearman([], []))
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that the correlation is undefined
        assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
