"""Classification metrics: the figures a clinical evaluation reports, each with a case-bootstrap 95% CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesalius.core.errors import InputError
from vesalius.engines.common.metrics.classification import (
    bootstrap_metric,
    choose_operating_point,
    classification_report,
    write_confusion_png,
    write_roc_png,
)


def binary_scores(n: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logit = rng.normal(0, 1, n) + separation * (2 * labels - 1)
    p = 1 / (1 + np.exp(-logit))
    return labels, np.stack([1 - p, p], axis=1)


def test_binary_report_has_every_figure_with_a_ci_around_it() -> None:
    labels, probabilities = binary_scores(300, 1.0)
    report = classification_report(labels, probabilities, "binary", ["normal", "pneumonia"], n_bootstrap=300)
    assert set(report.metrics) == {"auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"}
    for estimate in report.metrics.values():
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
    assert 0.8 < report.metrics["auc"].value < 0.95
    assert sum(map(sum, report.confusion)) == 300
    assert "| auc |" in report.to_table()


def test_the_ci_narrows_with_more_cases_and_is_reproducible() -> None:
    def width(n: int) -> float:
        labels, probabilities = binary_scores(n, 1.0, seed=1)
        estimate = bootstrap_metric(lambda y, p: float(np.mean((p[:, 1] > 0.5) == y)), labels, probabilities, 400)
        return estimate.ci_high - estimate.ci_low

    assert width(2000) < width(100) / 2
    labels, probabilities = binary_scores(100, 1.0)
    first = classification_report(labels, probabilities, "binary", ["a", "b"], n_bootstrap=100, seed=3)
    assert first == classification_report(labels, probabilities, "binary", ["a", "b"], n_bootstrap=100, seed=3)


def test_a_perfect_classifier_scores_one() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 10)
    probabilities = np.eye(5)[labels]
    report = classification_report(labels, probabilities, "ordinal", list("01234"), n_bootstrap=50)
    assert report.metrics["auc"].value == 1.0
    assert report.metrics["qwk"].value == pytest.approx(1.0)
    assert report.metrics["accuracy"].value == 1.0


def test_quadratic_kappa_punishes_a_far_grade_more_than_a_near_one() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 10)
    near, far = labels.copy(), labels.copy()
    near[0], far[0] = 1, 4  # one grade-0 case called 1, or called 4
    scores = {
        name: classification_report(labels, np.eye(5)[p], "ordinal", list("01234"), n_bootstrap=20)
        for name, p in (("near", near), ("far", far))
    }
    assert scores["far"].metrics["qwk"].value < scores["near"].metrics["qwk"].value < 1.0


def test_youden_threshold_separates_two_clusters_and_the_sensitivity_rule_reaches_its_target() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.05, 0.35, 50), np.linspace(0.6, 0.95, 50)])
    assert 0.35 < choose_operating_point(labels, p) <= 0.6
    noisy_labels, noisy = binary_scores(500, 0.7)
    threshold = choose_operating_point(noisy_labels, noisy[:, 1], rule="sensitivity", target=0.95)
    assert np.mean(noisy[noisy_labels == 1, 1] >= threshold) >= 0.95
    with pytest.raises(InputError, match="both classes"):
        choose_operating_point(np.zeros(5), np.linspace(0, 1, 5))


def test_multilabel_macro_auc_is_the_mean_of_the_labels() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, (200, 3))
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, (200, 3)), 0, 1)
    report = classification_report(labels, scores, "multilabel", ["a", "b", "c"], n_bootstrap=50)
    per_label = [report.metrics[f"auc_{name}"].value for name in "abc"]
    assert report.metrics["auc_macro"].value == pytest.approx(np.mean(per_label))


def test_bad_inputs_are_named() -> None:
    labels, probabilities = binary_scores(20, 1.0)
    with pytest.raises(InputError, match="labels but"):
        classification_report(labels[:10], probabilities, "binary", ["a", "b"])
    with pytest.raises(InputError, match="sum to 1"):
        classification_report(labels, probabilities * 2, "binary", ["a", "b"])
    with pytest.raises(InputError, match="no case"):
        classification_report(np.zeros(20, int), probabilities, "binary", ["a", "b"])


def test_roc_and_confusion_pngs_are_written(tmp_path: Path) -> None:
    labels, probabilities = binary_scores(50, 1.0)
    write_roc_png(tmp_path / "roc.png", labels, probabilities, ["a", "b"])
    write_confusion_png(tmp_path / "cm.png", [[20, 5], [3, 22]], ["a", "b"])
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert (tmp_path / "cm.png").stat().st_size > 1000
