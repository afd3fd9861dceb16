"""Conformal prediction intervals (training.metrics.intervals): any level from one calibration table, covering what
they promise on values drawn like the calibration errors."""

import numpy as np
import pytest

from training.metrics import intervals


def test_intervals_cover_their_level_of_new_values_drawn_like_the_calibration_errors():
    rng = np.random.default_rng(0)
    # skewed errors, as sales are (a long tail of days far above the forecast), growing with the week ahead
    calibration = intervals.calibrate([rng.gamma(2.0, 1.0 + w, 4000) - 2.0 * (1.0 + w) for w in range(4)])
    point = np.full((500, 28), 100.0)  # far enough from zero that no bound is floored
    scale = rng.uniform(1.0, 5.0, 500)
    actual = point + np.stack([rng.gamma(2.0, 1.0 + d // 7, 500) - 2.0 * (1.0 + d // 7) for d in range(28)], 1) \
        * scale[:, None]
    levels = [50, 80, 95]
    bounds = intervals.bounds(point, scale, calibration, levels)
    assert list(bounds) == ["0.025", "0.1", "0.25", "0.75", "0.9", "0.975"]
    names = list(bounds)
    for low, high in zip(names, names[1:], strict=False):  # nested: a wider level's bounds lie outside
        assert (bounds[low] <= bounds[high] + 1e-9).all()
    covered = intervals.coverage(actual, bounds, levels)
    for level in levels:
        assert covered[str(level)] == pytest.approx(level / 100, abs=0.015), covered
    # asymmetric, as the errors are: the upper bound lies further from the forecast than the lower one
    assert (bounds["0.9"] - point).mean() > (point - bounds["0.1"]).mean()


def test_a_small_calibration_set_is_widened_to_keep_its_promise():
    """With n calibration errors, split conformal's (n + 1)/n widening keeps the coverage of new exchangeable values
    at or above the level (9 of the 11 gaps around 10 errors: 81.8%); the plain empirical quantiles fall short
    (8 of 11: 72.7%)."""
    rng = np.random.default_rng(1)
    level, n, trials = 80, 10, 4000
    widened, plain = [], []
    for _ in range(trials):
        errors, new = rng.normal(size=n), rng.normal()
        table = intervals.calibrate([errors])
        low, high = (np.interp(q, table["grid"], table["scaled_error_quantiles"][0]) for q in (0.1, 0.9))
        widened.append(low <= new <= high)
        low, high = np.quantile(errors, [0.1, 0.9], method="inverted_cdf")
        plain.append(low <= new <= high)
    assert np.mean(widened) >= level / 100 - 0.01 > 0.75 > np.mean(plain)


def test_bounds_never_go_below_zero_sales_and_an_empty_week_is_refused():
    calibration = intervals.calibrate([np.linspace(-5, 5, 101)] * 4)
    low = intervals.bounds(np.full((1, 28), 1.0), np.ones(1), calibration, [95])["0.025"]
    assert (low == 0).all()
    with pytest.raises(ValueError, match="no calibration errors"):
        intervals.calibrate([np.ones(3), np.array([])])
