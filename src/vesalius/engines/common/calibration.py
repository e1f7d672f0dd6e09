"""Calibration: temperature scaling fitted on validation logits, expected calibration error, reliability diagram.

Temperature scaling (Guo et al., ICML 2017) divides the logits by one number T fitted to minimise the
negative log-likelihood of the validation labels. It leaves the ranking, hence AUC and the argmax, unchanged
and fixes the over-confidence of modern networks. The ECE is the top-label one: cases binned by their
predicted probability (15 equal-width bins), weighted gap between confidence and accuracy per bin.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from vesalius.core.errors import InputError

__all__ = [
    "CalibrationReport",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_diagram",
]


class CalibrationReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int


def _as_two_class(logits: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N,) sigmoid logits become (N, 2) softmax logits with the same probabilities."""
    values = np.asarray(logits, dtype=np.float64)
    return np.stack([np.zeros_like(values), values], axis=1) if values.ndim == 1 else values


def _nll(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float:
    return float(-np.mean(log_softmax(logits, axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(logits: npt.ArrayLike, y_true: npt.ArrayLike) -> float:
    """The T in [0.05, 20] minimising the validation NLL of softmax(logits / T)."""
    values, labels = _as_two_class(logits), np.asarray(y_true, dtype=np.int64)
    if len(values) != len(labels) or len(labels) == 0:
        raise InputError(f"temperature scaling needs one label per row of logits; got {len(labels)} and {len(values)}")
    result = minimize_scalar(
        lambda log_t: _nll(values / math.exp(log_t), labels), bounds=(math.log(0.05), math.log(20.0)), method="bounded"
    )
    return float(math.exp(result.x))


def apply_temperature(logits: npt.ArrayLike, temperature: float) -> npt.NDArray[np.float64]:
    """Calibrated class probabilities (N, K)."""
    if temperature <= 0:
        raise InputError(f"temperature must be positive; got {temperature}")
    result: npt.NDArray[np.float64] = softmax(_as_two_class(logits) / temperature, axis=1)
    return result


def _bins(y_true: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) of each non-empty bin of top-label confidence."""
    labels, values = np.asarray(y_true), np.asarray(probabilities, dtype=np.float64)
    confidence, predicted = values.max(axis=1), values.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    return [
        (float(confidence[which == b].mean()), float((predicted == labels)[which == b].mean()), int(np.sum(which == b)))
        for b in range(n_bins)
        if np.any(which == b)
    ]


def expected_calibration_error(y_true: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = 15) -> float:
    total = len(np.asarray(y_true))
    return float(sum(count / total * abs(conf - acc) for conf, acc, count in _bins(y_true, probabilities, n_bins)))


def calibration_report(logits: npt.ArrayLike, y_true: npt.ArrayLike, temperature: float) -> CalibrationReport:
    """ECE and NLL before and after dividing by ``temperature``, on the cases given."""
    values, labels = _as_two_class(logits), np.asarray(y_true, dtype=np.int64)
    return CalibrationReport(
        temperature=temperature,
        ece_before=expected_calibration_error(labels, softmax(values, axis=1)),
        ece_after=expected_calibration_error(labels, apply_temperature(values, temperature)),
        nll_before=_nll(values, labels),
        nll_after=_nll(values / temperature, labels),
        n=len(labels),
    )


def reliability_diagram(
    path: Path | str,
    y_true: npt.ArrayLike,
    before: npt.ArrayLike,
    after: npt.ArrayLike,
    n_bins: int = 15,
) -> Path:
    """Accuracy against confidence per bin, before and after calibration, with each ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    for name, values, marker in (("before", before, "o"), ("after", after, "s")):
        points: list[Any] = _bins(y_true, values, n_bins)
        ece = expected_calibration_error(y_true, values, n_bins)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=f"{name} (ECE {ece:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="confidence", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
