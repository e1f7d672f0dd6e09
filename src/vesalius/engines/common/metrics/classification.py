"""Classification metrics with case-bootstrap confidence intervals, and the operating point.

Every figure is computed on the cases, then its 95% CI by resampling cases with replacement (stratified by
class, so each resample holds every class and AUC stays defined) and recomputing the figure: a percentile
bootstrap, deterministic per seed. The operating point (the probability threshold of a binary classifier)
is chosen on validation data by Youden's J or for a target sensitivity, and then only applied: choosing it
on test data would report an optimistic figure no hospital would see.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from vesalius.core.errors import InputError

Kind = Literal["binary", "multiclass", "ordinal", "multilabel"]
Metric = Callable[[npt.NDArray[Any], npt.NDArray[np.float64]], float]

__all__ = [
    "ClassificationReport",
    "MetricEstimate",
    "bootstrap_metric",
    "choose_operating_point",
    "classification_report",
    "write_confusion_png",
    "write_roc_png",
]


class MetricEstimate(BaseModel):
    """A figure on all cases and its percentile-bootstrap confidence interval."""

    model_config = ConfigDict(frozen=True)

    value: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = 0.95

    def format(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def bootstrap_metric(
    metric: Metric,
    y_true: npt.NDArray[Any],
    scores: npt.NDArray[np.float64],
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> MetricEstimate:
    """``metric(y_true, scores)`` and its CI over ``n_bootstrap`` case resamples, stratified by class."""
    value = metric(y_true, scores)
    n = len(y_true)
    rng = np.random.default_rng(seed)
    strata = y_true if y_true.ndim == 1 else np.zeros(n, dtype=np.int64)
    groups = [np.flatnonzero(strata == value_) for value_ in np.unique(strata)]
    draws = []
    for _ in range(n_bootstrap):
        indices = np.concatenate([rng.choice(group, size=len(group), replace=True) for group in groups])
        result = metric(y_true[indices], scores[indices])
        if math.isfinite(result):
            draws.append(result)
    tail = (1.0 - confidence) / 2.0
    low, high = (float(q) for q in np.quantile(draws, [tail, 1 - tail])) if draws else (math.nan, math.nan)
    return MetricEstimate(value=value, ci_low=low, ci_high=high, n=n, confidence=confidence)


def choose_operating_point(
    y_true: npt.ArrayLike,
    p_positive: npt.ArrayLike,
    rule: Literal["youden", "sensitivity"] = "youden",
    target: float | None = None,
) -> float:
    """The threshold on P(positive), chosen on validation data: Youden's J (sensitivity + specificity - 1) at
    its maximum, or the highest threshold whose sensitivity reaches ``target``."""
    labels, scores = np.asarray(y_true), np.asarray(p_positive, dtype=np.float64)
    if len(np.unique(labels)) != 2:
        raise InputError("an operating point needs validation cases of both classes")
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is inf
    if rule == "youden":
        return float(thresholds[int(np.argmax(true_positive_rate - false_positive_rate))])
    if target is None or not 0 < target <= 1:
        raise InputError(f"rule 'sensitivity' needs a target in (0, 1]; got {target}")
    reaching = np.flatnonzero(true_positive_rate >= target)
    return float(thresholds[reaching[0]])


def _binary_metrics(threshold: float) -> dict[str, Metric]:
    def at(y: npt.NDArray[Any], p: npt.NDArray[np.float64]) -> tuple[int, int, int, int]:
        predicted = p[:, 1] >= threshold
        tp, fn = int(np.sum(predicted & (y == 1))), int(np.sum(~predicted & (y == 1)))
        tn, fp = int(np.sum(~predicted & (y == 0))), int(np.sum(predicted & (y == 0)))
        return tp, fn, tn, fp

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "auc": lambda y, p: float(roc_auc_score(y, p[:, 1])),
        "accuracy": lambda y, p: ratio(at(y, p)[0] + at(y, p)[2], len(y)),
        "sensitivity": lambda y, p: ratio(at(y, p)[0], at(y, p)[0] + at(y, p)[1]),
        "specificity": lambda y, p: ratio(at(y, p)[2], at(y, p)[2] + at(y, p)[3]),
        "ppv": lambda y, p: ratio(at(y, p)[0], at(y, p)[0] + at(y, p)[3]),
        "npv": lambda y, p: ratio(at(y, p)[2], at(y, p)[2] + at(y, p)[1]),
        "f1": lambda y, p: float(f1_score(y, p[:, 1] >= threshold, zero_division=0.0)),
    }


def _multiclass_metrics(classes: int, ordinal: bool) -> dict[str, Metric]:
    labels = list(range(classes))
    metrics: dict[str, Metric] = {
        "auc": lambda y, p: float(roc_auc_score(y, p, multi_class="ovr", labels=labels)),
        "accuracy": lambda y, p: float(np.mean(p.argmax(axis=1) == y)),
        "f1_macro": lambda y, p: float(f1_score(y, p.argmax(axis=1), average="macro", labels=labels)),
    }
    if ordinal:
        metrics["qwk"] = lambda y, p: float(cohen_kappa_score(y, p.argmax(axis=1), weights="quadratic", labels=labels))
    return metrics


def _multilabel_metrics(names: Sequence[str]) -> dict[str, Metric]:
    def per_label(index: int) -> Metric:
        return lambda y, p: float(roc_auc_score(y[:, index], p[:, index]))

    metrics = {f"auc_{name}": per_label(index) for index, name in enumerate(names)}
    metrics["auc_macro"] = lambda y, p: float(np.mean([roc_auc_score(y[:, i], p[:, i]) for i in range(len(names))]))
    return metrics


class ClassificationReport(BaseModel):
    """Every figure with its CI, the threshold used (binary) and the confusion matrix (rows: truth)."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    class_names: list[str]
    n: int
    threshold: float | None
    metrics: dict[str, MetricEstimate]
    confusion: list[list[int]]

    def to_table(self) -> str:
        lines = ["| metric | value [95% CI] |", "|---|---|"]
        lines += [f"| {name} | {estimate.format()} |" for name, estimate in self.metrics.items()]
        if self.threshold is not None:
            lines.append(f"| operating point (P >= t) | {self.threshold:.3f} |")
        return "\n".join(lines)


def _check(y_true: npt.NDArray[Any], probabilities: npt.NDArray[np.float64], kind: Kind, classes: int) -> None:
    if len(y_true) != len(probabilities):
        raise InputError(f"{len(y_true)} labels but {len(probabilities)} rows of probabilities")
    if probabilities.ndim != 2 or probabilities.shape[1] != classes:
        raise InputError(f"probabilities must be (N, {classes}); got {probabilities.shape}")
    if kind != "multilabel":
        if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
            raise InputError("each row of probabilities must sum to 1 (softmax output)")
        missing = sorted(set(range(classes)) - set(np.unique(y_true).tolist()))
        if missing:
            raise InputError(f"class(es) {missing} have no case: AUC and sensitivity are undefined for them")


def classification_report(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    kind: Kind,
    class_names: Sequence[str],
    threshold: float | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> ClassificationReport:
    """The metrics a clinical evaluation reports for this kind of task, each with a bootstrap 95% CI.

    Binary: AUC, accuracy, sensitivity, specificity, PPV, NPV, F1 at ``threshold`` (0.5 when not given; pass the
    one ``choose_operating_point`` chose on validation data). Multi-class: one-vs-rest macro AUC, accuracy,
    macro F1; ordinal adds quadratic weighted kappa. Multi-label: AUC per label and their mean.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(probabilities, dtype=np.float64)
    _check(labels, scores, kind, len(class_names))
    if kind == "binary":
        threshold = 0.5 if threshold is None else threshold
        metrics = _binary_metrics(threshold)
        predicted = (scores[:, 1] >= threshold).astype(int)
    elif kind == "multilabel":
        metrics, predicted = _multilabel_metrics(class_names), None
    else:
        metrics = _multiclass_metrics(len(class_names), ordinal=kind == "ordinal")
        predicted = scores.argmax(axis=1)
    estimates = {
        name: bootstrap_metric(metric, labels, scores, n_bootstrap=n_bootstrap, seed=seed)
        for name, metric in metrics.items()
    }
    matrix = (
        confusion_matrix(labels, predicted, labels=list(range(len(class_names)))).tolist()
        if predicted is not None
        else []
    )
    return ClassificationReport(
        kind=kind,
        class_names=list(class_names),
        n=len(labels),
        threshold=threshold if kind == "binary" else None,
        metrics=estimates,
        confusion=matrix,
    )


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_roc_png(path: Any, y_true: npt.ArrayLike, probabilities: npt.ArrayLike, class_names: Sequence[str]) -> Any:
    """ROC curves: the positive class for binary tasks, one-vs-rest per class otherwise."""
    plt = _figure()
    labels, scores = np.asarray(y_true), np.asarray(probabilities, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(5, 5))
    columns = [1] if scores.shape[1] == 2 and labels.ndim == 1 else list(range(scores.shape[1]))
    for column in columns:
        truth = labels[:, column] if labels.ndim == 2 else (labels == column).astype(int)
        fpr, tpr, _ = roc_curve(truth, scores[:, column])
        auc = roc_auc_score(truth, scores[:, column])
        axis.plot(fpr, tpr, label=f"{class_names[column]} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_confusion_png(path: Any, matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Any:
    plt = _figure()
    values = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    axis.imshow(values, cmap="Blues")
    for (row, column), count in np.ndenumerate(values):
        colour = "white" if count > values.max() / 2 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=colour)
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set(xlabel="predicted", ylabel="truth", title="Confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
