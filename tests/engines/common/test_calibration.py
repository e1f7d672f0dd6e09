"""Temperature scaling recovers a known over-confidence and lowers ECE and NLL on held-out cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, softmax

from vesalius.core.errors import InputError
from vesalius.engines.common.calibration import (
    CalibrationReport,
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_diagram,
)


def overconfident(n: int, factor: float, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(true logits); the model reports true logits x factor (over-confident for > 1)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, k))
    cumulative = softmax(true_logits, axis=1).cumsum(axis=1)
    labels = np.minimum((rng.uniform(size=(n, 1)) > cumulative).sum(axis=1), k - 1)
    return true_logits * factor, labels


def test_the_temperature_of_a_known_overconfidence_is_recovered() -> None:
    logits, labels = overconfident(20_000, 3.0, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    calibrated, calibrated_labels = overconfident(20_000, 1.0, seed=1)
    assert fit_temperature(calibrated, calibrated_labels) == pytest.approx(1.0, rel=0.1)


def test_binary_sigmoid_logits_and_two_column_logits_give_the_same_temperature() -> None:
    rng = np.random.default_rng(2)
    true_logit = rng.normal(0, 2, 20_000)
    labels = (rng.uniform(size=true_logit.size) < expit(true_logit)).astype(int)
    single = fit_temperature(true_logit * 3, labels)
    assert single == pytest.approx(3.0, rel=0.1)
    two_columns = np.stack([np.zeros_like(true_logit), true_logit * 3], axis=1)
    assert fit_temperature(two_columns, labels) == pytest.approx(single, rel=1e-4)


def test_calibrating_on_validation_lowers_ece_and_nll_on_test() -> None:
    validation, validation_labels = overconfident(4000, 3.0, seed=1)
    test, test_labels = overconfident(4000, 3.0, seed=2)
    temperature = fit_temperature(validation, validation_labels)
    report = calibration_report(test, test_labels, temperature)
    assert isinstance(report, CalibrationReport)
    assert (report.temperature, report.n) == (temperature, 4000)
    assert report.ece_after < report.ece_before / 2
    assert report.nll_after < report.nll_before
    assert report.nll_after == pytest.approx(negative_log_likelihood(test, test_labels, temperature))
    assert CalibrationReport.model_validate_json(report.model_dump_json()) == report


def test_temperature_keeps_the_predicted_class() -> None:
    logits, _ = overconfident(500, 3.0, seed=3)
    np.testing.assert_array_equal(apply_temperature(logits, 2.7).argmax(axis=1), logits.argmax(axis=1))


def test_temperature_one_is_softmax_and_binary_sigmoid_logits_are_accepted() -> None:
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -3.0, 4.0]])
    np.testing.assert_allclose(apply_temperature(logits, 1.0), softmax(logits, axis=1))
    np.testing.assert_allclose(apply_temperature(logits, 2.0), softmax(logits / 2.0, axis=1))
    binary = apply_temperature(np.array([0.0, 2.0, -1.0]), 1.0)
    assert binary.shape == (3, 2)
    np.testing.assert_allclose(binary[:, 1], expit(np.array([0.0, 2.0, -1.0])))
    with pytest.raises(InputError, match="positive"):
        apply_temperature(logits, 0.0)


def test_ece_is_zero_for_exact_confidence_and_the_gap_for_a_constant_overconfidence() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0.5, 1.0, 20_000)
    labels = (rng.uniform(size=p.size) < p).astype(int)  # P(correct) = confidence for class 1
    assert expected_calibration_error(labels, np.stack([1 - p, p], axis=1)) < 0.02
    # every case 0.9 sure of class 1, which is right 60% of the time: ECE = |0.6 - 0.9|
    labels = np.array([1] * 60 + [0] * 40)
    assert expected_calibration_error(labels, np.tile([0.1, 0.9], (100, 1))) == pytest.approx(0.3)
    assert expected_calibration_error(labels, np.full(100, 0.9)) == pytest.approx(0.3)  # (N,) is P(positive)


def test_bad_inputs_are_refused_with_a_message_naming_the_problem() -> None:
    logits, labels = overconfident(300, 2.0, seed=3)
    with pytest.raises(InputError, match="one label per row"):
        fit_temperature(logits, labels[:10])
    with pytest.raises(InputError, match=r"class indices 0\.\.2"):
        fit_temperature(logits, labels + 1)
    with pytest.raises(InputError, match="finite"):
        fit_temperature(np.full((3, 3), np.nan), [0, 1, 2])
    with pytest.raises(InputError, match="one label per row"):
        expected_calibration_error(labels[:5], softmax(logits, axis=1))


def test_the_reliability_diagram_is_written(tmp_path: Path) -> None:
    logits, labels = overconfident(300, 2.0, seed=3)
    path = reliability_diagram(
        tmp_path / "plots" / "r.png", labels, softmax(logits, axis=1), apply_temperature(logits, 2.0)
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
