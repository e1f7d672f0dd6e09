"""Selective prediction: error-detection AUROC, risk-coverage and AURC on hand-computed cases, and an abstain
policy fitted on validation data that sends most errors of fresh data to a reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from vesalius.core.errors import InputError
from vesalius.trust.abstain import (
    AbstainPolicy,
    assess_policy,
    coverage_at_accuracy,
    error_detection_auroc,
    fit_abstain_policy,
    flagged_error_share,
    risk_coverage,
    write_risk_coverage_png,
)

# sorted: 0.1 right | 0.2 right, 0.2 wrong (tied) | 0.5 right | 0.9 wrong
UNCERTAINTY = [0.5, 0.2, 0.9, 0.1, 0.2]
CORRECT = [True, False, False, True, True]


def test_error_detection_auroc_matches_a_hand_count() -> None:
    # wrong cases score 0.35 and 0.8, right ones 0.1 and 0.4: 3 of the 4 (wrong, right) pairs are ordered
    assert error_detection_auroc([0.1, 0.4, 0.35, 0.8], [True, True, False, False]) == pytest.approx(0.75)
    assert error_detection_auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert error_detection_auroc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_error_detection_auroc_refuses_one_class_and_nan() -> None:
    with pytest.raises(InputError, match="all 3 cases are right"):
        error_detection_auroc([0.1, 0.2, 0.3], [True, True, True])
    with pytest.raises(InputError, match="non-finite"):
        error_detection_auroc([0.1, math.nan, 0.3], [True, False, True])
    with pytest.raises(InputError, match="one length"):
        error_detection_auroc([0.1, 0.2], [True, False, True])


def test_risk_coverage_on_a_hand_computed_case_with_a_tie() -> None:
    curve = risk_coverage(UNCERTAINTY, CORRECT)
    assert curve.n == 5
    assert curve.thresholds == pytest.approx([0.1, 0.2, 0.5, 0.9])
    assert curve.coverage == pytest.approx([0.2, 0.6, 0.8, 1.0])  # the tied pair enters together
    assert curve.risk == pytest.approx([0.0, 1 / 3, 0.25, 0.4])
    assert curve.aurc == pytest.approx(0.0 * 0.2 + (1 / 3) * 0.4 + 0.25 * 0.2 + 0.4 * 0.2)
    swapped = risk_coverage([0.5, 0.2, 0.9, 0.1, 0.2], [True, True, False, True, False])  # tie order reversed
    assert swapped == curve


def test_aurc_without_ties_is_the_mean_risk_of_the_k_most_certain_cases() -> None:
    rng = np.random.default_rng(0)
    scores, right = rng.random(50), rng.random(50) > 0.3
    order = np.argsort(scores)
    errors = np.cumsum(~right[order])
    expected = np.mean(errors / np.arange(1, 51))
    assert risk_coverage(scores, right).aurc == pytest.approx(expected)
    assert risk_coverage(scores, np.ones(50, bool)).aurc == 0.0


def test_coverage_at_accuracy_on_a_hand_computed_case() -> None:
    # accuracy of the kept cases at each threshold: 1, 2/3, 3/4, 3/5
    assert coverage_at_accuracy(UNCERTAINTY, CORRECT, 0.75) == pytest.approx((0.8, 0.5))
    assert coverage_at_accuracy(UNCERTAINTY, CORRECT, 0.7) == pytest.approx((0.8, 0.5))
    assert coverage_at_accuracy(UNCERTAINTY, CORRECT, 0.99) == pytest.approx((0.2, 0.1))
    assert coverage_at_accuracy(UNCERTAINTY, CORRECT, 0.6) == pytest.approx((1.0, 0.9))
    assert coverage_at_accuracy([0.1, 0.5], [False, True], 0.99) == (0.0, -math.inf)


def draw(rng: np.random.Generator, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Uncertainty u ~ U(0, 1) and errors with probability 0.6 u^2: accuracy of u <= t is 1 - 0.2 t^2."""
    uncertainty = rng.random(n)
    correct = rng.random(n) >= 0.6 * uncertainty**2
    return uncertainty, correct


def test_a_policy_fitted_on_validation_flags_most_errors_of_a_fresh_draw() -> None:
    rng = np.random.default_rng(7)
    validation_u, validation_correct = draw(rng, 4000)
    policy = fit_abstain_policy(validation_u, validation_correct, "predictive_entropy", target_accuracy=0.95)
    assert policy.threshold == pytest.approx(0.5, abs=0.08)  # 1 - 0.2 t^2 = 0.95 at t = 0.5
    assert policy.validation_accuracy_kept is not None
    assert policy.validation_accuracy_kept >= 0.95
    assert policy.validation_coverage == pytest.approx(np.mean(validation_u <= policy.threshold))
    test_u, test_correct = draw(rng, 4000)
    flagged = policy.flag(test_u)
    share = flagged_error_share(policy, test_u, test_correct)
    assert share > 0.8  # theory: 87.5% of errors lie above u = 0.5
    assert share > flagged.mean() + 0.3  # errors are concentrated in the flagged half, not spread evenly
    assert test_correct[~flagged].mean() >= 0.93
    assert AbstainPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_a_target_no_case_reaches_flags_everything() -> None:
    policy = fit_abstain_policy([0.1, 0.2, 0.3], [False, True, False], "variance", target_accuracy=0.99)
    assert policy.threshold == -math.inf
    assert policy.validation_coverage == 0.0
    assert policy.validation_accuracy_kept is None
    assert policy.flag([0.0, 5.0]).all()
    with pytest.raises(InputError, match="at least one wrong"):
        flagged_error_share(policy, [0.1, 0.2], [True, True])


def test_risk_coverage_png_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    u, correct = draw(rng, 200)
    curves = {"entropy": risk_coverage(u, correct), "random": risk_coverage(rng.random(200), correct)}
    written = write_risk_coverage_png(tmp_path / "plots" / "risk_coverage.png", curves)
    with Image.open(written) as image:
        assert image.format == "PNG"
        assert image.width > 100
    with pytest.raises(InputError):
        write_risk_coverage_png(tmp_path / "none.png", {})


def test_an_assessment_fits_on_validation_and_measures_on_evaluation() -> None:
    validation = ([0.1, 0.2, 0.3, 0.9], [True, True, True, False])  # the policy keeps up to 0.3
    evaluation = ([0.05, 0.25, 0.4, 0.8, 0.95], [True, False, True, False, False])
    assessed = assess_policy(validation, evaluation, "predictive_entropy", 0.99, "tta")
    assert assessed.policy.threshold == pytest.approx(0.3)
    assert assessed.policy.method == "tta"
    assert assessed.evaluation_coverage == pytest.approx(2 / 5)  # 0.05 and 0.25 kept
    assert assessed.evaluation_accuracy_kept == pytest.approx(1 / 2)
    assert assessed.errors_flagged == pytest.approx(2 / 3)  # 0.8 and 0.95 flagged, 0.25 missed
    assert assessed.coverage_at_target == pytest.approx(1 / 5)
    assert assessed.error_auroc == pytest.approx(error_detection_auroc(*evaluation))
    assert assessed.aurc == pytest.approx(risk_coverage(*evaluation).aurc)
