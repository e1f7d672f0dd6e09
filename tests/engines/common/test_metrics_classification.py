"""Classification metrics: the figures a clinical evaluation reports, each with a case-bootstrap 95% CI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from vesalius.core.errors import InputError
from vesalius.engines.common.metrics.classification import (
    ClassificationReport,
    MetricEstimate,
    binary_metrics,
    bootstrap_metric,
    choose_operating_point,
    classification_report,
    multiclass_metrics,
    multilabel_metrics,
    write_confusion_png,
    write_roc_png,
)


def binary_scores(n: int, separation: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (N, 2) probabilities whose logit is N(0, 1) shifted by +-separation."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logit = rng.normal(0, 1, n) + separation * (2 * labels - 1)
    p = 1 / (1 + np.exp(-logit))
    return labels, np.stack([1 - p, p], axis=1)


def multiclass_scores(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p[:, 1]))


# bootstrap_metric


def test_auc_ci_contains_the_estimate_and_narrows_with_more_cases() -> None:
    labels, probabilities = binary_scores(2000, 0.5, seed=1)  # AUC about 0.76, away from the ceiling

    def estimate(n: int) -> MetricEstimate:
        return bootstrap_metric(binary_metrics()["auc"], labels[:n], probabilities[:n], n_bootstrap=500)

    small, large = estimate(100), estimate(2000)
    for result in (small, large):
        assert result.ci_low < result.value < result.ci_high
        assert (result.n_bootstrap, result.n_skipped, result.confidence) == (500, 0, 0.95)
    assert large.ci_high - large.ci_low < (small.ci_high - small.ci_low) / 2


def test_bootstrap_is_deterministic_per_seed() -> None:
    labels, probabilities = binary_scores(200, 1.0)
    first = bootstrap_metric(auc, labels, probabilities, n_bootstrap=100, seed=3)
    assert first == bootstrap_metric(auc, labels, probabilities, n_bootstrap=100, seed=3)
    assert first.ci_low != bootstrap_metric(auc, labels, probabilities, n_bootstrap=100, seed=4).ci_low


def test_stratified_resampling_never_loses_a_class_and_undefined_resamples_are_skipped_and_counted() -> None:
    labels = np.array([1] + [0] * 199)  # one positive: a plain resample misses it about 37% of the time
    scores = np.random.default_rng(0).uniform(size=(200, 2))

    def classes_present(y: np.ndarray, s: np.ndarray) -> float:
        return float(len(np.unique(y)))

    stratified = bootstrap_metric(classes_present, labels, scores, n_bootstrap=300)
    assert (stratified.ci_low, stratified.ci_high, stratified.n_skipped) == (2.0, 2.0, 0)

    def auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
        return auc(y, s) if len(np.unique(y)) == 2 else math.nan

    plain = bootstrap_metric(auc_or_nan, labels, scores, n_bootstrap=300, stratified=False)
    assert 0.25 * 300 < plain.n_skipped < 0.5 * 300
    assert plain.n_bootstrap == 300
    assert plain.ci_low <= plain.ci_high


def test_vectorised_metrics_agree_with_scikit_learn_on_every_resample() -> None:
    """The built-in metrics evaluate all resamples at once; wrapping one in a plain function forces the
    scikit-learn figure per resample, on the same resamples, so both intervals must be equal."""
    rng = np.random.default_rng(5)
    labels, probabilities = binary_scores(120, 0.8, seed=5)
    tied = np.round(probabilities, 1)  # ties, where AUC counts one half
    three, scores3 = multiclass_scores(150, 4, seed=6)
    multilabel = rng.integers(0, 2, (150, 3))
    scores_ml = np.round(np.clip(multilabel * 0.3 + rng.uniform(0, 0.7, (150, 3)), 0, 1), 1)
    cases = [(m, labels, tied) for m in binary_metrics(0.5).values()]
    cases += [(m, labels, probabilities) for m in binary_metrics(0.9).values()]  # often no case called negative
    cases += [(m, three, scores3) for m in multiclass_metrics(list("abcd"), ordinal=True).values()]
    cases += [(m, multilabel, scores_ml) for m in multilabel_metrics(list("xyz")).values()]
    for metric, y, s in cases:
        fast = bootstrap_metric(metric, y, s, n_bootstrap=40, seed=2)
        slow = bootstrap_metric(lambda a, b, metric=metric: metric(a, b), y, s, n_bootstrap=40, seed=2)
        assert fast.n_skipped == slow.n_skipped
        np.testing.assert_allclose(
            [fast.value, fast.ci_low, fast.ci_high], [slow.value, slow.ci_low, slow.ci_high], rtol=1e-9
        )


# the operating point


def test_youden_threshold_lies_between_two_separable_clusters() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.05, 0.35, 50), np.linspace(0.6, 0.95, 50)])
    threshold = choose_operating_point(labels, p)
    assert 0.35 < threshold < 0.6
    report = classification_report(labels, p, "binary", ["benign", "malignant"], threshold=threshold, n_bootstrap=20)
    assert report.metrics["sensitivity"].value == report.metrics["specificity"].value == 1.0


def test_the_sensitivity_rule_reaches_its_target_at_the_highest_such_threshold() -> None:
    labels, probabilities = binary_scores(500, 0.7)
    positives = probabilities[labels == 1, 1]
    threshold = choose_operating_point(labels, probabilities[:, 1], rule="sensitivity", target=0.95)
    assert np.mean(positives >= threshold) >= 0.95
    assert np.mean(positives >= np.nextafter(threshold, 1.0)) < 0.95  # any higher threshold misses it


def test_operating_point_refuses_what_it_cannot_choose_from() -> None:
    with pytest.raises(InputError, match="both classes"):
        choose_operating_point(np.zeros(5), np.linspace(0, 1, 5))
    with pytest.raises(InputError, match="target"):
        choose_operating_point([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], rule="sensitivity")
    with pytest.raises(InputError, match="3 labels but 4 scores"):
        choose_operating_point([0, 1, 0], [0.1, 0.9, 0.2, 0.8])


# the report


def test_binary_report_has_every_figure_with_a_ci_around_it_and_serialises_to_json() -> None:
    labels, probabilities = binary_scores(300, 1.0)
    report = classification_report(labels, probabilities, "binary", ["normal", "pneumonia"], n_bootstrap=300)
    assert set(report.metrics) == {"auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"}
    for estimate in report.metrics.values():
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
    assert report.metrics["auc"].value == pytest.approx(auc(labels, probabilities))
    assert report.threshold == 0.5
    (tn, fp), (fn, tp) = report.confusion
    assert tn + fp + fn + tp == 300
    assert report.metrics["sensitivity"].value == pytest.approx(tp / (tp + fn))
    assert report.metrics["specificity"].value == pytest.approx(tn / (tn + fp))
    assert report.metrics["ppv"].value == pytest.approx(tp / (tp + fp))
    assert report.metrics["npv"].value == pytest.approx(tn / (tn + fn))
    assert ClassificationReport.model_validate(json.loads(report.model_dump_json())) == report
    table = report.to_table()
    assert "| auc |" in table
    assert "| operating point (positive when P >= t) | 0.500 |" in table
    assert f"| pneumonia | {fn} | {tp} |" in table


def test_binary_report_applies_the_threshold_it_is_given() -> None:
    labels, probabilities = binary_scores(300, 1.0)
    strict = classification_report(labels, probabilities, "binary", ["a", "b"], threshold=0.8, n_bootstrap=20)
    lenient = classification_report(labels, probabilities[:, 1], "binary", ["a", "b"], threshold=0.2, n_bootstrap=20)
    assert strict.threshold == 0.8
    assert strict.metrics["sensitivity"].value < lenient.metrics["sensitivity"].value
    assert strict.metrics["specificity"].value > lenient.metrics["specificity"].value
    assert strict.metrics["auc"].value == lenient.metrics["auc"].value


def test_multiclass_report_has_macro_figures_and_each_class_sensitivity_and_specificity() -> None:
    labels, probabilities = multiclass_scores(400, 3, seed=2)
    report = classification_report(labels, probabilities, "multiclass", ["CN", "MCI", "AD"], n_bootstrap=100)
    matrix = np.array(report.confusion)
    assert matrix.sum() == 400
    assert report.metrics["accuracy"].value == pytest.approx(np.trace(matrix) / 400)
    assert report.metrics["auc"].value == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    for index, name in enumerate(["CN", "MCI", "AD"]):
        others = np.delete(np.delete(matrix, index, axis=0), index, axis=1).sum()
        negatives = matrix.sum() - matrix[index].sum()
        assert report.metrics[f"sensitivity_{name}"].value == pytest.approx(matrix[index, index] / matrix[index].sum())
        assert report.metrics[f"specificity_{name}"].value == pytest.approx(others / negatives)
    assert "qwk" not in report.metrics
    assert report.threshold is None


def test_a_perfect_classifier_scores_one() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 10)
    report = classification_report(labels, np.eye(5)[labels], "ordinal", list("01234"), n_bootstrap=50)
    for name in ("auc", "qwk", "accuracy", "f1_macro"):
        estimate = report.metrics[name]
        assert (estimate.value, estimate.ci_low, estimate.ci_high) == pytest.approx((1.0, 1.0, 1.0))
    assert report.confusion == np.diag([10] * 5).tolist()


def test_quadratic_kappa_punishes_a_far_grade_more_than_a_near_one() -> None:
    labels = np.array([0, 1, 2, 3, 4] * 10)
    near, far = labels.copy(), labels.copy()
    near[0], far[0] = 1, 4  # one grade-0 case called 1, or called 4
    scores = {
        name: classification_report(labels, np.eye(5)[p], "ordinal", list("01234"), n_bootstrap=20)
        for name, p in (("near", near), ("far", far))
    }
    assert scores["far"].metrics["qwk"].value < scores["near"].metrics["qwk"].value < 1.0
    assert scores["far"].metrics["accuracy"].value == scores["near"].metrics["accuracy"].value
    expected = cohen_kappa_score(labels, far, weights="quadratic")
    assert scores["far"].metrics["qwk"].value == pytest.approx(expected)


def test_multilabel_macro_auc_is_the_mean_of_the_labels() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, (200, 3))
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, (200, 3)), 0, 1)
    report = classification_report(labels, scores, "multilabel", ["effusion", "nodule", "edema"], n_bootstrap=50)
    per_label = [report.metrics[f"auc_{name}"].value for name in ("effusion", "nodule", "edema")]
    assert per_label == pytest.approx([roc_auc_score(labels[:, j], scores[:, j]) for j in range(3)])
    assert report.metrics["auc_macro"].value == pytest.approx(np.mean(per_label))
    assert report.confusion == []


def test_bad_inputs_are_refused_with_a_message_naming_the_problem() -> None:
    labels, probabilities = binary_scores(20, 1.0)
    with pytest.raises(InputError, match="10 labels but 20 rows"):
        classification_report(labels[:10], probabilities, "binary", ["a", "b"])
    with pytest.raises(InputError, match="sum to 1"):
        classification_report(labels, probabilities * 0.9, "binary", ["a", "b"])
    with pytest.raises(InputError, match=r"class\(es\) pneumonia \(1\) have no case"):
        classification_report(np.zeros(20, int), probabilities, "binary", ["normal", "pneumonia"])
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        classification_report(labels, probabilities, "multiclass", ["a", "b", "c"])
    with pytest.raises(InputError, match="binary tasks only"):
        classification_report(*multiclass_scores(30, 3), "multiclass", ["a", "b", "c"], threshold=0.5)
    with pytest.raises(InputError, match="positive in all or none"):
        classification_report(np.ones((20, 2), int), np.full((20, 2), 0.5), "multilabel", ["a", "b"])
    with pytest.raises(InputError, match="labels but"):
        bootstrap_metric(auc, labels[:5], probabilities)


# figures


def test_roc_and_confusion_pngs_are_written(tmp_path: Path) -> None:
    labels, probabilities = binary_scores(50, 1.0)
    roc = write_roc_png(tmp_path / "binary" / "roc.png", labels, probabilities, ["a", "b"])
    three, scores3 = multiclass_scores(60, 3)
    roc3 = write_roc_png(tmp_path / "roc3.png", three, scores3, ["a", "b", "c"])
    matrix = write_confusion_png(tmp_path / "cm.png", [[20, 5], [3, 22]], ["a", "b"])
    for path in (roc, roc3, matrix):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 1000
    with pytest.raises(InputError, match="2 x 2"):
        write_confusion_png(tmp_path / "bad.png", [[1, 2, 3]], ["a", "b"])
