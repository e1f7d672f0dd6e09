"""Calibration: temperature scaling fitted on validation logits, expected calibration error, reliability diagram.

Modern networks are over-confident: a 0.95 from them is right less than 95% of the time, which misleads a
reader who takes the number at its word. Temperature scaling (Guo et al., ICML 2017) divides the logits by
one number T, fitted to minimise the negative log-likelihood of the validation labels. One parameter cannot
overfit a validation set of a few hundred cases, and dividing by T > 0 keeps the ranking of the classes, so
argmax, accuracy and AUC do not change. The ECE is the top-label one: cases binned by their top predicted
probability (15 equal-width bins), the gap between mean confidence and accuracy weighted by the bin's share.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from vesalius.core.errors import InputError
from vesalius.engines.common.curves import pyplot, save_figure

FloatArray = npt.NDArray[np.float64]

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Search range of T; a fit at either end says the logits carry no usable confidence, not a calibration."""

__all__ = [
    "CalibrationReport",
    "apply_temperature",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_diagram",
]


class CalibrationReport(BaseModel):
    """The fitted temperature and what it did to ECE and NLL on the cases given (evaluation data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(gt=0)
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int = Field(ge=0)


def _logits(logits: npt.ArrayLike) -> FloatArray:
    """(N, K) logits, checked; (N,) or (N, 1) sigmoid logits z become (N, 2) [0, z], whose softmax is the sigmoid."""
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:
        values = np.stack([np.zeros_like(values), values], axis=1)
    if values.ndim != 2 or values.shape[1] < 2:
        raise InputError(f"logits must be (N, K) with K >= 2, or (N,) sigmoid logits; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputError("logits must be finite numbers (found nan or inf)")
    return values


def _labels(y_true: npt.ArrayLike, n: int, k: int) -> npt.NDArray[np.int64]:
    """Class indices 0..k-1, one per row."""
    raw = np.asarray(y_true)
    if raw.ndim != 1 or raw.size != n or n == 0:
        raise InputError(f"calibration needs one label per row of logits or probabilities; got {raw.size} and {n}")
    labels = raw.astype(np.int64)
    if not np.array_equal(labels, raw) or labels.min() < 0 or labels.max() >= k:
        raise InputError(f"labels must be class indices 0..{k - 1}; got {np.unique(raw)}")
    return labels


def _probabilities(probabilities: npt.ArrayLike) -> FloatArray:
    """(N, K) probabilities; (N,) P(positive) becomes (N, 2)."""
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim == 1:
        values = np.stack([1.0 - values, values], axis=1)
    if values.ndim != 2 or not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise InputError(f"probabilities must be (N, K) numbers in [0, 1]; got shape {values.shape}")
    return values


def _nll(logits: FloatArray, labels: npt.NDArray[np.int64]) -> float:
    return float(-np.mean(log_softmax(logits, axis=1)[np.arange(labels.size), labels]))


def negative_log_likelihood(logits: npt.ArrayLike, y_true: npt.ArrayLike, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[true class]: the quantity temperature scaling minimises."""
    values = _logits(logits)
    return _nll(values / temperature, _labels(y_true, len(values), values.shape[1]))


def fit_temperature(logits: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """The T minimising the NLL of softmax(logits / T) on VALIDATION logits (never the test set).

    Logits are (N, K) softmax logits, or (N,) sigmoid logits of a binary model. The search runs over log T
    (bounded, within ``TEMPERATURE_BOUNDS``) because the NLL is smoother there and T stays positive.
    """
    values = _logits(logits)
    labels = _labels(y_true, len(values), values.shape[1])
    low, high = TEMPERATURE_BOUNDS
    result = minimize_scalar(
        lambda log_t: _nll(values / math.exp(log_t), labels),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def apply_temperature(logits: npt.ArrayLike, temperature: float) -> FloatArray:
    """Calibrated class probabilities softmax(logits / T), (N, K); (N,) sigmoid logits give (N, 2)."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise InputError(f"temperature must be a positive number, got {temperature}")
    result: FloatArray = softmax(_logits(logits) / temperature, axis=1)
    return result


def _bins(
    y_true: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per equal-width bin of top-label confidence: mean confidence, accuracy, case count (empty bins: nan, 0)."""
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    values = _probabilities(probabilities)
    labels = _labels(y_true, len(values), values.shape[1])
    confidence = values.max(axis=1)
    correct = (values.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # bins (lo, hi]
    counts = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / counts
    return mean_confidence, accuracy, counts


def expected_calibration_error(y_true: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (cases in bin / N) * |accuracy - mean confidence|; 0 is perfect."""
    confidence, accuracy, counts = _bins(y_true, probabilities, n_bins)
    filled = counts > 0
    return float(np.sum(counts[filled] / counts.sum() * np.abs(accuracy[filled] - confidence[filled])))


def calibration_report(logits: npt.ArrayLike, y_true: npt.ArrayLike, temperature: float) -> CalibrationReport:
    """ECE and NLL before and after dividing by ``temperature`` (fitted on validation data), on these cases."""
    values = _logits(logits)
    labels = _labels(y_true, len(values), values.shape[1])
    return CalibrationReport(
        temperature=temperature,
        ece_before=expected_calibration_error(labels, softmax(values, axis=1)),
        ece_after=expected_calibration_error(labels, apply_temperature(values, temperature)),
        nll_before=_nll(values, labels),
        nll_after=_nll(values / temperature, labels),
        n=labels.size,
    )


def reliability_diagram(
    path: Path | str,
    y_true: npt.ArrayLike,
    probs_before: npt.ArrayLike,
    probs_after: npt.ArrayLike,
    n_bins: int = 15,
) -> Path:
    """Accuracy against confidence per bin, before and after calibration, each ECE in the legend; writes a PNG.

    Points below the diagonal are over-confident bins. The marker area shows how many cases a bin holds.
    """
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, values, marker in (("before", probs_before, "o"), ("after", probs_after, "s")):
        confidence, accuracy, counts = _bins(y_true, values, n_bins)
        filled = counts > 0
        ece = expected_calibration_error(y_true, values, n_bins)
        (line,) = axis.plot(confidence[filled], accuracy[filled], label=f"{name} (ECE {ece:.3f})")
        sizes = 10 + 200 * counts[filled] / counts.sum()
        axis.scatter(confidence[filled], accuracy[filled], s=sizes, marker=marker, color=line.get_color())
    axis.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left")
    return save_figure(figure, path)
