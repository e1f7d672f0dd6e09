"""Classification metrics with case-bootstrap confidence intervals, the operating point, ROC and confusion PNGs.

Every figure is computed on all cases with scikit-learn, then given a percentile-bootstrap CI: cases (rows)
are resampled with replacement, stratified by class so that every resample holds every class and AUC stays
defined, and the figure is recomputed on each resample. A resample where the figure is undefined (a zero
denominator) is skipped and counted, never imputed. The built-in metrics evaluate all resamples at once from
case counts (a resample is the number of times it draws each case), which makes 2000 resamples of 1000 cases
take a fraction of a second; any other callable is evaluated resample by resample on the same resamples.

The operating point (the probability threshold of a binary classifier) is chosen on validation data by
Youden's J or for a target sensitivity, and then only applied: choosing it on test data reports a figure
that is optimistic by construction, which no hospital would see in use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from vesalius.core.errors import InputError
from vesalius.engines.common.curves import pyplot, save_figure
from vesalius.engines.common.metrics.summary import NanFloat

Task = Literal["binary", "multiclass", "ordinal", "multilabel"]
Kind = Task
FloatArray = npt.NDArray[np.float64]
Metric = Callable[[npt.NDArray[Any], FloatArray], float]
"""``metric(y_true, scores) -> float``; nan where the figure is undefined for these cases."""

MAX_BOOTSTRAP_CELLS = 1_000_000
"""Resample-by-case counts held at once; bounds memory for large evaluation sets."""

SUM_TOLERANCE = 1e-3
"""Rows of softmax probabilities may be off 1 by this much (rounding in a predictions CSV)."""

__all__ = [
    "ClassificationReport",
    "CountedMetric",
    "MetricEstimate",
    "Task",
    "binary_metrics",
    "bootstrap_metric",
    "choose_operating_point",
    "classification_report",
    "multiclass_metrics",
    "multilabel_metrics",
    "write_confusion_png",
    "write_roc_png",
]


class MetricEstimate(BaseModel):
    """A figure on all cases and its percentile-bootstrap confidence interval; nan (JSON null) when undefined."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: NanFloat
    ci_low: NanFloat
    ci_high: NanFloat
    n: int = Field(ge=0, description="Cases.")
    confidence: float = 0.95
    n_bootstrap: int = Field(default=0, ge=0, description="Resamples drawn.")
    n_skipped: int = Field(default=0, ge=0, description="Resamples left out because the figure was undefined on them.")

    def format(self, digits: int = 3) -> str:
        """'value [low, high]' for tables; undefined parts read 'n/a'."""

        def show(number: float) -> str:
            return "n/a" if math.isnan(number) else f"{number:.{digits}f}"

        return f"{show(self.value)} [{show(self.ci_low)}, {show(self.ci_high)}]"

    @classmethod
    def from_draws(cls, value: float, draws: npt.NDArray[np.float64], n: int, confidence: float) -> MetricEstimate:
        """The percentile interval of the finite bootstrap draws; the undefined ones are counted as skipped."""
        finite = draws[np.isfinite(draws)]
        tail = (1.0 - confidence) / 2.0
        low, high = (float(q) for q in np.quantile(finite, [tail, 1 - tail])) if finite.size else (math.nan, math.nan)
        return cls(
            value=value,
            ci_low=low,
            ci_high=high,
            n=n,
            confidence=confidence,
            n_bootstrap=draws.size,
            n_skipped=int(draws.size - finite.size),
        )


@dataclass(frozen=True)
class CountedMetric:
    """A metric that can also be evaluated on many resamples at once.

    ``counted(y_true, scores, counts)`` takes ``counts`` of shape (resamples, cases), how often each resample
    draws each case, and returns one value per resample. Calling the object gives the figure on all cases
    (scikit-learn), so it is also a plain ``Metric``.
    """

    point: Metric
    counted: Callable[[npt.NDArray[Any], FloatArray, FloatArray], FloatArray]

    def __call__(self, y_true: npt.NDArray[Any], scores: FloatArray) -> float:
        return self.point(y_true, scores)


def _resample_counts(strata: npt.NDArray[Any] | None, n: int, rows: int, rng: np.random.Generator) -> FloatArray:
    """(rows, n) draw counts of ``rows`` resamples; with strata, each stratum keeps its size."""
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    drawn = np.concatenate([group[rng.integers(0, group.size, size=(rows, group.size))] for group in groups], axis=1)
    flat = (drawn + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _draws(
    metrics: Mapping[str, Metric],
    y_true: npt.NDArray[Any],
    scores: FloatArray,
    n_bootstrap: int,
    seed: int,
    stratified: bool,
) -> dict[str, FloatArray]:
    """Each metric on the same ``n_bootstrap`` resamples (nan where undefined)."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    strata = y_true if stratified and y_true.ndim == 1 else None
    rows = max(1, MAX_BOOTSTRAP_CELLS // max(n, 1))
    values = {name: np.empty(n_bootstrap, dtype=np.float64) for name in metrics}
    for start in range(0, n_bootstrap, rows):
        stop = min(start + rows, n_bootstrap)
        counts = _resample_counts(strata, n, stop - start, rng)
        for name, metric in metrics.items():
            if isinstance(metric, CountedMetric):
                values[name][start:stop] = metric.counted(y_true, scores, counts)
            else:
                for row, case_counts in enumerate(counts.astype(np.int64)):
                    indices = np.repeat(np.arange(n), case_counts)
                    values[name][start + row] = metric(y_true[indices], scores[indices])
    return values


def _bootstrap_all(
    metrics: Mapping[str, Metric],
    y_true: npt.NDArray[Any],
    scores: FloatArray,
    n_bootstrap: int,
    confidence: float,
    seed: int,
    stratified: bool,
) -> dict[str, MetricEstimate]:
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    if len(y_true) != len(scores) or len(y_true) == 0:
        raise InputError(f"{len(y_true)} labels but {len(scores)} rows of scores: need one row per case, at least one")
    draws = _draws(metrics, y_true, scores, n_bootstrap, seed, stratified)
    return {
        name: MetricEstimate.from_draws(float(metric(y_true, scores)), draws[name], len(y_true), confidence)
        for name, metric in metrics.items()
    }


def bootstrap_metric(
    metric: Metric,
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> MetricEstimate:
    """``metric(y_true, scores)`` on all cases and its percentile CI over ``n_bootstrap`` case resamples.

    Cases (rows) are resampled with replacement; ``stratified`` keeps each class's case count (1-D labels
    only; multi-label rows are resampled as a whole), so no resample lacks a class. Resamples where the
    metric is nan or infinite are skipped and counted in ``n_skipped``. The same seed gives the same
    resamples, hence the same interval.
    """
    labels, values = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    return _bootstrap_all({"metric": metric}, labels, values, n_bootstrap, confidence, seed, stratified)["metric"]


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    """numerator / denominator, nan where the denominator is 0 (the figure is undefined there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        result: FloatArray = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
    return result


def _counted_auc(positive: npt.NDArray[np.bool_], scores: FloatArray, counts: FloatArray) -> FloatArray:
    """ROC AUC of every resample: the Mann-Whitney statistic with case weights, ties counting one half."""
    order = np.argsort(scores, kind="stable")
    ordered, is_positive, weights = scores[order], positive[order], counts[:, order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], ordered.size]
    negatives = np.zeros((weights.shape[0], ordered.size + 1))
    np.cumsum(weights * ~is_positive, axis=1, out=negatives[:, 1:])
    columns = np.flatnonzero(is_positive)
    below = negatives[:, starts[group[columns]]]
    tied = negatives[:, ends[group[columns]]] - below
    wins = np.sum(weights[:, columns] * (below + 0.5 * tied), axis=1)
    return _ratio(wins, weights[:, columns].sum(axis=1) * negatives[:, -1])


def _counted_confusion(truth: npt.NDArray[Any], predicted: npt.NDArray[Any], k: int, counts: FloatArray) -> FloatArray:
    """(resamples, k, k) confusion matrices, rows truth, columns prediction."""
    cells = np.zeros((truth.size, k * k))
    cells[np.arange(truth.size), truth.astype(np.int64) * k + predicted.astype(np.int64)] = 1.0
    result: FloatArray = (counts @ cells).reshape(counts.shape[0], k, k)
    return result


def _per_class(matrices: FloatArray) -> dict[str, FloatArray]:
    """Per-class counts of a stack of confusion matrices, each (resamples, k)."""
    tp = np.diagonal(matrices, axis1=1, axis2=2)
    truth, predicted = matrices.sum(axis=2), matrices.sum(axis=1)
    total = matrices.sum(axis=(1, 2))[:, None]
    return {"tp": tp, "truth": truth, "predicted": predicted, "tn": total - truth - predicted + tp, "total": total}


def _kappa(matrices: FloatArray) -> FloatArray:
    """Quadratic weighted kappa of each confusion matrix: 1 - sum(w O) / sum(w E), as scikit-learn."""
    k = matrices.shape[1]
    weights = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2).astype(np.float64)
    counts = _per_class(matrices)
    expected = counts["truth"][:, :, None] * counts["predicted"][:, None, :] / counts["total"][:, :, None]
    observed = np.sum(weights * matrices, axis=(1, 2))
    return 1.0 - _ratio(observed, np.sum(weights * expected, axis=(1, 2)))


def _f1(counts: dict[str, FloatArray]) -> FloatArray:
    return _ratio(2 * counts["tp"], counts["truth"] + counts["predicted"])


def _positive_scores(scores: FloatArray) -> FloatArray:
    return scores[:, 1] if scores.ndim == 2 else scores


def binary_metrics(threshold: float = 0.5) -> dict[str, CountedMetric]:
    """AUC and, calling P(positive) >= ``threshold`` positive: accuracy, sensitivity, specificity, PPV, NPV, F1.

    Scores are (N, 2) probabilities (column 1 is the positive class) or (N,) P(positive); labels 0/1.
    """

    def predicted(scores: FloatArray) -> npt.NDArray[np.int64]:
        return (_positive_scores(scores) >= threshold).astype(np.int64)

    def counted(figure: Callable[[dict[str, FloatArray]], FloatArray]) -> Callable[..., FloatArray]:
        return lambda y, s, c: figure(_per_class(_counted_confusion(y, predicted(s), 2, c)))

    def sklearn(function: Callable[..., Any], **options: Any) -> Metric:
        return lambda y, s: float(function(y, predicted(s), labels=[0, 1], zero_division=np.nan, **options))

    return {
        "auc": CountedMetric(
            lambda y, s: float(roc_auc_score(y, _positive_scores(s))),
            lambda y, s, c: _counted_auc(y == 1, _positive_scores(s), c),
        ),
        "accuracy": CountedMetric(
            lambda y, s: float(accuracy_score(y, predicted(s))),
            counted(lambda m: _ratio(m["tp"].sum(axis=1), m["total"][:, 0])),
        ),
        "sensitivity": CountedMetric(
            sklearn(recall_score, pos_label=1), counted(lambda m: _ratio(m["tp"][:, 1], m["truth"][:, 1]))
        ),
        "specificity": CountedMetric(
            sklearn(recall_score, pos_label=0), counted(lambda m: _ratio(m["tp"][:, 0], m["truth"][:, 0]))
        ),
        "ppv": CountedMetric(
            sklearn(precision_score, pos_label=1), counted(lambda m: _ratio(m["tp"][:, 1], m["predicted"][:, 1]))
        ),
        "npv": CountedMetric(
            sklearn(precision_score, pos_label=0), counted(lambda m: _ratio(m["tp"][:, 0], m["predicted"][:, 0]))
        ),
        "f1": CountedMetric(
            sklearn(f1_score, pos_label=1),
            counted(lambda m: _f1(m)[:, 1]),
        ),
    }


def _macro_auc(y: npt.NDArray[Any], s: FloatArray, c: FloatArray) -> FloatArray:
    aucs = np.stack([_counted_auc(y == k, s[:, k], c) for k in range(s.shape[1])], axis=1)
    result: FloatArray = aucs.mean(axis=1)
    return result


def multiclass_metrics(class_names: Sequence[str], ordinal: bool = False) -> dict[str, CountedMetric]:
    """Macro one-vs-rest AUC, accuracy and macro F1 of the argmax, each class's sensitivity and specificity;
    ``ordinal`` adds the quadratic weighted kappa, which charges a grade 0 called 4 more than one called 1."""
    k = len(class_names)
    labels = list(range(k))

    def counted(figure: Callable[[FloatArray], FloatArray]) -> Callable[..., FloatArray]:
        return lambda y, s, c: figure(_counted_confusion(y, s.argmax(axis=1), k, c))

    def matrix(y: npt.NDArray[Any], s: FloatArray) -> FloatArray:
        result: FloatArray = confusion_matrix(y, s.argmax(axis=1), labels=labels)[None].astype(np.float64)
        return result

    def per_class(figure: Callable[[dict[str, FloatArray]], FloatArray], index: int) -> CountedMetric:
        return CountedMetric(
            lambda y, s: float(figure(_per_class(matrix(y, s)))[0, index]),
            counted(lambda m: figure(_per_class(m))[:, index]),
        )

    metrics = {
        "auc": CountedMetric(
            lambda y, s: float(roc_auc_score(y, s, multi_class="ovr", average="macro", labels=labels)), _macro_auc
        ),
        "accuracy": CountedMetric(
            lambda y, s: float(accuracy_score(y, s.argmax(axis=1))),
            counted(lambda m: _ratio(np.trace(m, axis1=1, axis2=2), m.sum(axis=(1, 2)))),
        ),
        "f1_macro": CountedMetric(
            lambda y, s: float(f1_score(y, s.argmax(axis=1), average="macro", labels=labels, zero_division=np.nan)),
            counted(lambda m: _f1(_per_class(m)).mean(axis=1)),
        ),
    }
    if ordinal:
        metrics["qwk"] = CountedMetric(
            lambda y, s: float(cohen_kappa_score(y, s.argmax(axis=1), weights="quadratic", labels=labels)),
            counted(_kappa),
        )
    for index, name in enumerate(class_names):
        metrics[f"sensitivity_{name}"] = per_class(lambda m: _ratio(m["tp"], m["truth"]), index)
        metrics[f"specificity_{name}"] = per_class(lambda m: _ratio(m["tn"], m["total"] - m["truth"]), index)
    return metrics


def multilabel_metrics(class_names: Sequence[str]) -> dict[str, CountedMetric]:
    """AUC of each label (labels and scores are (N, L)) and their unweighted mean, ``auc_macro``."""

    def label_auc(index: int) -> CountedMetric:
        return CountedMetric(
            lambda y, s: float(roc_auc_score(y[:, index], s[:, index])),
            lambda y, s, c: _counted_auc(y[:, index] == 1, s[:, index], c),
        )

    metrics = {f"auc_{name}": label_auc(index) for index, name in enumerate(class_names)}
    metrics["auc_macro"] = CountedMetric(
        lambda y, s: float(roc_auc_score(y, s, average="macro")),
        lambda y, s, c: np.mean([_counted_auc(y[:, i] == 1, s[:, i], c) for i in range(s.shape[1])], axis=0),
    )
    return metrics


def choose_operating_point(
    y_true: npt.ArrayLike,
    p_positive: npt.ArrayLike,
    rule: Literal["youden", "sensitivity"] = "youden",
    target: float | None = None,
) -> float:
    """The threshold on P(positive) (positive when P >= threshold), chosen on VALIDATION data, never on test.

    ``youden``: maximum of Youden's J (sensitivity + specificity - 1); every threshold between the score that
    reaches it and the next lower score gives the same J, so the midpoint is returned, leaving margin on both
    sides. ``sensitivity``: the highest threshold whose sensitivity reaches ``target`` (a screening test that
    must miss at most 1 - target of the positives), which gives the best specificity at that sensitivity.
    """
    labels, scores = np.asarray(y_true).reshape(-1), np.asarray(p_positive, dtype=np.float64).reshape(-1)
    if labels.size != scores.size:
        raise InputError(f"{labels.size} labels but {scores.size} scores for the operating point")
    if not np.all(np.isfinite(scores)):
        raise InputError("scores for the operating point must be finite numbers")
    if not set(np.unique(labels).tolist()) == {0, 1}:
        raise InputError(f"an operating point needs labels 0 and 1, both classes present; got {np.unique(labels)}")
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    if rule == "youden":
        best = int(np.argmax(true_positive_rate - false_positive_rate))
        if best == 0:  # nobody positive is best: a useless or inverted classifier
            return float(np.nextafter(scores.max(), np.inf))
        lower = thresholds[best + 1] if best + 1 < thresholds.size else thresholds[best]
        return float((thresholds[best] + lower) / 2)
    if rule != "sensitivity":
        raise InputError(f"rule must be 'youden' or 'sensitivity', got {rule!r}")
    if target is None or not 0 < target <= 1:
        raise InputError(f"rule 'sensitivity' needs a target in (0, 1], got {target}")
    return float(thresholds[int(np.flatnonzero(true_positive_rate >= target)[0])])


class ClassificationReport(BaseModel):
    """Every figure with its CI, the threshold used (binary) and the confusion matrix (rows truth, columns
    prediction; empty for multi-label tasks, which have no single prediction per case)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Task
    class_names: list[str]
    n: int
    threshold: float | None
    metrics: dict[str, MetricEstimate]
    confusion: list[list[int]]
    n_bootstrap: int = 2000
    seed: int = 0

    def to_table(self) -> str:
        """Markdown: the figures with their CIs, the operating point, then the confusion matrix."""

        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        confidence = next(iter(self.metrics.values())).confidence if self.metrics else 0.95
        lines = [f"| metric | value [{confidence:.0%} CI] |", "|---|---|"]
        lines += [f"| {cell(name)} | {estimate.format()} |" for name, estimate in self.metrics.items()]
        if self.threshold is not None:
            lines.append(f"| operating point (positive when P >= t) | {self.threshold:.3f} |")
        lines.append("")
        lines.append(
            f"{self.kind}, {self.n} cases; CI: percentile bootstrap over {self.n_bootstrap} case resamples"
            + (" stratified by class." if self.kind != "multilabel" else ".")
        )
        if self.confusion:
            lines += ["", "| truth \\ predicted | " + " | ".join(cell(c) for c in self.class_names) + " |"]
            lines.append("|---" * (len(self.class_names) + 1) + "|")
            for name, row in zip(self.class_names, self.confusion, strict=True):
                lines.append(f"| {cell(name)} | " + " | ".join(str(v) for v in row) + " |")
        return "\n".join(lines)


def _labels(y_true: npt.NDArray[Any], task: Task, k: int, names: Sequence[str]) -> npt.NDArray[np.int64]:
    """Integer labels, checked: (N,) in 0..k-1 with every class present, or (N, k) of 0/1 for multi-label."""
    if task == "multilabel":
        if y_true.ndim != 2 or y_true.shape[1] != k or not np.isin(y_true, (0, 1)).all():
            raise InputError(f"multi-label y_true must be (N, {k}) of 0/1, got shape {y_true.shape}")
        labels = y_true.astype(np.int64)
        degenerate = [names[j] for j in range(k) if labels[:, j].min() == labels[:, j].max()]
        if degenerate:
            raise InputError(f"label(s) {degenerate} are positive in all or none of the cases: their AUC is undefined")
        return labels
    if y_true.ndim != 1 or not np.all(np.isfinite(y_true.astype(np.float64))):
        raise InputError(f"y_true must be one class index per case, got shape {y_true.shape}")
    labels = y_true.astype(np.int64)
    if not np.array_equal(labels, y_true) or labels.min() < 0 or labels.max() >= k:
        raise InputError(f"y_true must hold class indices 0..{k - 1} ({', '.join(names)}), got {np.unique(y_true)}")
    missing = [f"{names[j]} ({j})" for j in range(k) if not np.any(labels == j)]
    if missing:
        raise InputError(f"class(es) {', '.join(missing)} have no case in y_true: AUC and sensitivity are undefined")
    return labels


def _scores(probabilities: FloatArray, task: Task, n: int, k: int) -> FloatArray:
    """(N, k) probabilities, checked; binary (N,) P(positive) becomes (N, 2)."""
    if task == "binary" and probabilities.ndim == 1:
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    if len(probabilities) != n:
        raise InputError(f"{n} labels but {len(probabilities)} rows of probabilities")
    if probabilities.ndim != 2 or probabilities.shape[1] != k:
        raise InputError(f"probabilities must be (N, {k}), one column per class, got {probabilities.shape}")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise InputError("probabilities must be finite numbers in [0, 1]")
    if task != "multilabel":
        sums = probabilities.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
        if off.size:
            raise InputError(
                f"each row of probabilities must sum to 1 (softmax output); {off.size} row(s) do not, "
                f"e.g. row {off[0]} sums to {sums[off[0]]:.4f}"
            )
    return probabilities


def classification_report(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    task: Task,
    class_names: Sequence[str],
    threshold: float | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> ClassificationReport:
    """The figures a clinical evaluation reports for this task, each with a case-bootstrap 95% CI.

    Binary: AUC, accuracy, sensitivity, specificity, PPV, NPV, F1 at ``threshold`` (0.5 when not given; pass
    the one ``choose_operating_point`` chose on validation data). Multi-class: one-vs-rest macro AUC, accuracy
    and macro F1 of the argmax, each class's sensitivity and specificity; ordinal adds the quadratic weighted
    kappa. Multi-label: AUC per label and their mean (rows resampled whole, not stratified).
    """
    if task not in ("binary", "multiclass", "ordinal", "multilabel"):
        raise InputError(f"task must be binary, multiclass, ordinal or multilabel, got {task!r}")
    names = [str(name) for name in class_names]
    k = len(names)
    if len(set(names)) != k or k < 2 or (task == "binary" and k != 2):
        raise InputError(f"{task} needs distinct class names, two for binary and at least two otherwise; got {names}")
    if threshold is not None and (task != "binary" or not math.isfinite(threshold)):
        raise InputError(f"a threshold applies to binary tasks only and must be finite; got {threshold} for {task}")
    raw = np.asarray(y_true)
    scores = _scores(np.asarray(probabilities, dtype=np.float64), task, len(raw), k)
    labels = _labels(raw, task, k, names)
    predicted: npt.NDArray[Any] | None = None
    metrics: dict[str, CountedMetric]
    if task == "binary":
        threshold = 0.5 if threshold is None else float(threshold)
        metrics, predicted = binary_metrics(threshold), (scores[:, 1] >= threshold).astype(np.int64)
    elif task == "multilabel":
        metrics = multilabel_metrics(names)
    else:
        metrics, predicted = multiclass_metrics(names, ordinal=task == "ordinal"), scores.argmax(axis=1)
    estimates = _bootstrap_all(metrics, labels, scores, n_bootstrap, 0.95, seed, stratified=True)
    matrix = [] if predicted is None else confusion_matrix(labels, predicted, labels=list(range(k))).tolist()
    return ClassificationReport(
        kind=task,
        class_names=names,
        n=len(labels),
        threshold=threshold,
        metrics=estimates,
        confusion=matrix,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def write_roc_png(
    path: Path | str, y_true: npt.ArrayLike, probabilities: npt.ArrayLike, class_names: Sequence[str]
) -> Path:
    """ROC curves with their AUC: the positive class for binary tasks, one-vs-rest per class (or per label)
    otherwise; labels are (N,) class indices or (N, L) 0/1 for multi-label."""
    labels, scores = np.asarray(y_true), np.asarray(probabilities, dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([1.0 - scores, scores], axis=1)
    if len(labels) != len(scores) or scores.shape[1] != len(class_names):
        raise InputError(f"ROC needs (N, {len(class_names)}) scores for N labels; got {scores.shape}, {len(labels)}")
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    columns = [1] if scores.shape[1] == 2 and labels.ndim == 1 else range(scores.shape[1])
    for column in columns:
        truth = labels[:, column] if labels.ndim == 2 else (labels == column).astype(np.int64)
        if truth.min() == truth.max():
            continue  # a class without positives (or negatives) has no ROC curve
        fpr, tpr, _ = roc_curve(truth, scores[:, column])
        auc = roc_auc_score(truth, scores[:, column])
        axis.plot(fpr, tpr, label=f"{class_names[column]} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right")
    return save_figure(figure, path)


def write_confusion_png(
    path: Path | str, matrix: Sequence[Sequence[int]] | npt.ArrayLike, class_names: Sequence[str]
) -> Path:
    """Counts with each row's share (sensitivity on the diagonal), rows truth and columns prediction."""
    values = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if values.shape != (k, k):
        raise InputError(f"confusion matrix must be {k} x {k} for {k} classes, got shape {values.shape}")
    shares = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(values):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axis.text(column, row, f"{count}\n{shares[row, column]:.0%}", ha="center", va="center", color=colour)
    axis.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    axis.set_yticks(range(k), list(class_names))
    axis.set(xlabel="predicted", ylabel="truth", title="Confusion matrix")
    return save_figure(figure, path)
