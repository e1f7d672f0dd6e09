"""Temperature scaling recovers a known over-confidence and lowers ECE and NLL on held-out cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from vesalius.core.errors import InputError
from vesalius.engines.common.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)


def overconfident(n: int, factor: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); the model reports true logits x factor."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    return true_logits * factor, labels


def test_the_temperature_of_a_known_overconfidence_is_recovered() -> None:
    logits, labels = overconfident(20_000, 3.0, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


def test_calibrating_on_validation_lowers_ece_and_nll_on_test() -> None:
    validation, validation_labels = overconfident(4000, 3.0, seed=1)
    test, test_labels = overconfident(4000, 3.0, seed=2)
    report = calibration_report(test, test_labels, fit_temperature(validation, validation_labels))
    assert report.ece_after < report.ece_before / 2
    assert report.nll_after < report.nll_before


def test_temperature_one_is_softmax_and_binary_sigmoid_logits_are_accepted() -> None:
    logits = np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(apply_temperature(logits, 1.0), softmax(logits, axis=1))
    binary = apply_temperature(np.array([0.0, 2.0]), 1.0)
    np.testing.assert_allclose(binary[:, 1], 1 / (1 + np.exp(-np.array([0.0, 2.0]))))
    with pytest.raises(InputError, match="positive"):
        apply_temperature(logits, 0.0)


def test_a_perfectly_calibrated_set_has_small_ece() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.5, 1.0, 20_000)
    labels = (rng.uniform(size=p.size) < p).astype(int)  # P(correct) = confidence for class 1
    probabilities = np.stack([1 - p, p], axis=1)
    assert expected_calibration_error(labels, probabilities) < 0.02


def test_mismatched_lengths_are_refused_and_the_diagram_is_written(tmp_path: Path) -> None:
    logits, labels = overconfident(300, 2.0, seed=3)
    with pytest.raises(InputError, match="one label per row"):
        fit_temperature(logits, labels[:10])
    path = reliability_diagram(tmp_path / "r.png", labels, softmax(logits, axis=1), apply_temperature(logits, 2.0))
    assert path.stat().st_size > 1000
