"""Summaries of per-case metric values: mean, sd, median and a percentile-bootstrap confidence interval.

Task-agnostic (a list of numbers in, a ``Summary`` out), so classification and detection reuse it.
Missing values (nan, e.g. an HD95 with an empty prediction) are left out and counted, never imputed,
because an imputed value would hide the failure it stands for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_BOOTSTRAP_DRAWS = 4_000_000
"""Indices drawn per chunk; bounds memory when there are many values."""


def _none_to_nan(value: Any) -> Any:
    return math.nan if value is None else value


NanFloat = Annotated[float, BeforeValidator(_none_to_nan)]
"""A float where nan means 'not defined'; JSON writes it as null and reads null back as nan."""


class Summary(BaseModel):
    """Location, spread and uncertainty of the mean of one metric over cases."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: NanFloat
    sd: NanFloat = Field(description="Sample standard deviation (ddof=1); nan with fewer than two values.")
    median: NanFloat
    ci_low: NanFloat
    ci_high: NanFloat
    n: int = Field(ge=0, description="Values used (not missing).")
    n_missing: int = Field(ge=0, description="Values left out because they were nan or infinite.")
    confidence: float = 0.95

    def format(self, digits: int = 3) -> str:
        """'mean ± sd [low, high]' for tables; missing parts read 'n/a'."""
        if self.n == 0:
            return "n/a"

        def show(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.{digits}f}"

        return f"{show(self.mean)} ± {show(self.sd)} [{show(self.ci_low)}, {show(self.ci_high)}]"


def bootstrap_means(values: npt.NDArray[np.float64], n_bootstrap: int, seed: int) -> npt.NDArray[np.float64]:
    """Means of ``n_bootstrap`` resamples (with replacement) of ``values``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    n = values.size
    rows = max(1, MAX_BOOTSTRAP_DRAWS // n)
    means = np.empty(n_bootstrap, dtype=np.float64)
    for start in range(0, n_bootstrap, rows):
        stop = min(start + rows, n_bootstrap)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def summarize(
    values: Iterable[float],
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> Summary:
    """Summarise per-case values; the CI is the percentile bootstrap of the mean.

    The percentile bootstrap needs no normality assumption, which matters for bounded, skewed metrics
    such as Dice. It is deterministic for a given ``seed``. With one value the CI collapses to it; with
    none, every statistic is nan.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64).reshape(-1)
    finite = array[np.isfinite(array)]
    n, n_missing = int(finite.size), int(array.size - finite.size)
    if n == 0:
        nan = math.nan
        return Summary(
            mean=nan, sd=nan, median=nan, ci_low=nan, ci_high=nan, n=0, n_missing=n_missing, confidence=confidence
        )
    mean = float(finite.mean())
    sd = float(finite.std(ddof=1)) if n > 1 else math.nan
    if n == 1:
        low = high = mean
    else:
        tail = (1.0 - confidence) / 2.0
        low, high = (float(q) for q in np.quantile(bootstrap_means(finite, n_bootstrap, seed), [tail, 1.0 - tail]))
    return Summary(
        mean=mean,
        sd=sd,
        median=float(np.median(finite)),
        ci_low=low,
        ci_high=high,
        n=n,
        n_missing=n_missing,
        confidence=confidence,
    )
