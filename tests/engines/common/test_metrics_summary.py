"""summarize: bootstrap CI of the mean, missing values, determinism and degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vesalius.engines.common.metrics import Summary, summarize


def test_plain_statistics_and_ci_around_the_mean() -> None:
    values = np.random.default_rng(0).beta(8, 2, size=40)
    summary = summarize(values)
    assert summary.mean == pytest.approx(values.mean())
    assert summary.sd == pytest.approx(values.std(ddof=1))
    assert summary.median == pytest.approx(np.median(values))
    assert summary.ci_low < summary.mean < summary.ci_high
    assert (summary.n, summary.n_missing, summary.confidence) == (40, 0, 0.95)


def test_ci_agrees_with_scipy_percentile_bootstrap() -> None:
    from scipy import stats

    values = np.random.default_rng(1).normal(size=50)
    summary = summarize(values, n_bootstrap=5000)
    peer = stats.bootstrap((values,), np.mean, method="percentile", random_state=0).confidence_interval
    assert summary.ci_low == pytest.approx(peer.low, abs=0.03)
    assert summary.ci_high == pytest.approx(peer.high, abs=0.03)


def test_ci_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(2)
    small, large = summarize(rng.normal(size=10)), summarize(rng.normal(size=400))
    assert large.ci_high - large.ci_low < (small.ci_high - small.ci_low) / 3


def test_wider_confidence_gives_wider_interval() -> None:
    values = np.random.default_rng(3).normal(size=30)
    narrow, wide = summarize(values, confidence=0.8), summarize(values, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high


def test_deterministic_with_the_seed() -> None:
    values = list(np.random.default_rng(4).random(25))
    assert summarize(values, seed=7) == summarize(values, seed=7)
    assert summarize(values, seed=7).ci_low != summarize(values, seed=8).ci_low


def test_missing_values_are_left_out_and_counted() -> None:
    summary = summarize([1.0, math.nan, 3.0, math.inf])
    assert (summary.mean, summary.median, summary.n, summary.n_missing) == (2.0, 2.0, 2, 2)


def test_single_value_collapses_the_interval() -> None:
    summary = summarize([0.8])
    assert (summary.mean, summary.median, summary.ci_low, summary.ci_high) == (0.8, 0.8, 0.8, 0.8)
    assert math.isnan(summary.sd)
    assert summary.format(2) == "0.80 ± n/a [0.80, 0.80]"


def test_all_missing() -> None:
    summary = summarize([math.nan, math.nan])
    assert (summary.n, summary.n_missing) == (0, 2)
    assert all(math.isnan(v) for v in (summary.mean, summary.sd, summary.median, summary.ci_low, summary.ci_high))
    assert summary.format() == "n/a"
    assert summarize([]).n == 0


def test_json_round_trip_writes_nan_as_null() -> None:
    summary = summarize([math.nan])
    text = summary.model_dump_json()
    assert '"mean":null' in text
    assert math.isnan(Summary.model_validate_json(text).mean)


@pytest.mark.parametrize(("confidence", "n_bootstrap"), [(0.0, 10), (1.0, 10), (0.95, 0)])
def test_invalid_arguments(confidence: float, n_bootstrap: int) -> None:
    with pytest.raises(ValueError, match=r"confidence|n_bootstrap"):
        summarize([1.0, 2.0], confidence=confidence, n_bootstrap=n_bootstrap)
