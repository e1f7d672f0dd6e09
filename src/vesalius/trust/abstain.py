"""Selective prediction: which cases should a reader review, and what does abstaining on them buy?

Cases are ranked by an uncertainty score (higher = less sure). Keeping the cases up to a threshold gives a
*coverage* (share kept) and a *risk* (error rate among those kept); the risk-coverage curve and its area
(AURC, Geifman & El-Yaniv 2017; lower is better) compare scores. An ``AbstainPolicy`` is the threshold that
keeps the most validation cases while their accuracy reaches a target; everything above it is flagged for
review, and on fresh data the flagged cases should carry most of the errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score

from vesalius.core.errors import InputError
from vesalius.engines.common.curves import pyplot, save_figure

__all__ = [
    "AbstainPolicy",
    "PolicyAssessment",
    "RiskCoverage",
    "assess_policy",
    "coverage_at_accuracy",
    "error_detection_auroc",
    "fit_abstain_policy",
    "flagged_error_share",
    "risk_coverage",
    "write_risk_coverage_png",
]

_TOLERANCE = 1e-12


def _checked(uncertainty: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[Any]]:
    """(N,) finite scores and (N,) booleans, or an InputError naming what is wrong."""
    scores = np.asarray(uncertainty, dtype=np.float64)
    right = np.asarray(correct)
    if scores.ndim != 1 or right.shape != scores.shape or scores.size == 0:
        raise InputError(
            f"uncertainty and correct must be two non-empty 1-D arrays of one length; got {scores.shape}, {right.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise InputError(f"uncertainty holds {int((~np.isfinite(scores)).sum())} non-finite value(s) (nan or inf)")
    if right.dtype != np.bool_ and not np.isin(right, (0, 1)).all():
        raise InputError(f"correct must hold booleans (or 0/1); got values {np.unique(right)[:5].tolist()}")
    return scores, right.astype(bool)


def error_detection_auroc(uncertainty: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """AUROC of the score for telling wrong predictions (positive) from right ones; 0.5 = no better than chance."""
    scores, right = _checked(uncertainty, correct)
    if right.all() or not right.any():
        raise InputError(
            f"error detection AUROC needs right and wrong predictions; all {right.size} cases are "
            f"{'right' if right.all() else 'wrong'}"
        )
    return float(roc_auc_score(~right, scores))


class RiskCoverage(BaseModel):
    """Risk-coverage curve: one point per distinct uncertainty value (tied cases enter together)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: list[float] = Field(description="Keep cases with uncertainty <= threshold, increasing")
    coverage: list[float] = Field(description="Share of cases kept at each threshold")
    risk: list[float] = Field(description="Error rate among the kept cases at each threshold")
    aurc: float = Field(ge=0, le=1, description="Area under the risk-coverage step curve; lower is better")
    n: int = Field(ge=1)


def risk_coverage(uncertainty: npt.ArrayLike, correct: npt.ArrayLike) -> RiskCoverage:
    """Cases sorted by increasing uncertainty; the AURC weighs each point's risk by the coverage it adds, so
    without ties it is the mean over k of the risk of the k most certain cases (Geifman et al. 2019)."""
    scores, right = _checked(uncertainty, correct)
    order = np.argsort(scores, kind="stable")
    sorted_scores, errors = scores[order], np.cumsum(~right[order])
    last = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), len(scores) - 1]  # end of each tie group
    kept = last + 1
    coverage = kept / len(scores)
    risk = errors[last] / kept
    added = np.diff(np.r_[0, kept]) / len(scores)
    return RiskCoverage(
        thresholds=sorted_scores[last].tolist(),
        coverage=coverage.tolist(),
        risk=risk.tolist(),
        aurc=float(np.clip(np.sum(risk * added), 0.0, 1.0)),
        n=len(scores),
    )


def coverage_at_accuracy(
    uncertainty: npt.ArrayLike, correct: npt.ArrayLike, accuracy: float = 0.99
) -> tuple[float, float]:
    """(largest coverage whose kept cases reach ``accuracy``, the uncertainty threshold that keeps them);
    (0.0, -inf) when even the most certain cases fall short."""
    if not 0.0 < accuracy <= 1.0:
        raise InputError(f"target accuracy must be in (0, 1]; got {accuracy}")
    curve = risk_coverage(uncertainty, correct)
    reaching = [i for i, risk in enumerate(curve.risk) if 1.0 - risk >= accuracy - _TOLERANCE]
    if not reaching:
        return 0.0, -math.inf
    best = reaching[-1]
    return curve.coverage[best], curve.thresholds[best]


class AbstainPolicy(BaseModel):
    """Flag for review every case whose ``score`` exceeds ``threshold`` (fitted on validation data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: str = Field(description="Uncertainty score the threshold applies to, e.g. predictive_entropy")
    method: str | None = Field(
        default=None, description="Uncertainty method the score was fitted with (tta, mc_dropout, ensemble, softmax)"
    )
    threshold: float = Field(description="Cases with uncertainty above it are flagged; -inf flags all")
    target_accuracy: float = Field(gt=0, le=1)
    validation_n: int = Field(ge=1)
    validation_coverage: float = Field(ge=0, le=1, description="Share of validation cases kept (not flagged)")
    validation_accuracy_kept: float | None = Field(description="Accuracy on the kept validation cases; None if none")

    def flag(self, uncertainty: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True = send to a reader."""
        scores = np.asarray(uncertainty, dtype=np.float64)
        if np.isnan(scores).any():
            raise InputError(f"{self.score}: {int(np.isnan(scores).sum())} nan value(s); cannot decide to flag")
        flagged: npt.NDArray[np.bool_] = scores > self.threshold
        return flagged


def fit_abstain_policy(
    uncertainty: npt.ArrayLike,
    correct: npt.ArrayLike,
    score: str,
    target_accuracy: float = 0.99,
    method: str | None = None,
) -> AbstainPolicy:
    """The threshold keeping the most validation cases whose accuracy reaches ``target_accuracy``."""
    scores, right = _checked(uncertainty, correct)
    coverage, threshold = coverage_at_accuracy(scores, right, target_accuracy)
    kept = scores <= threshold
    return AbstainPolicy(
        score=score,
        method=method,
        threshold=threshold,
        target_accuracy=target_accuracy,
        validation_n=len(scores),
        validation_coverage=coverage,
        validation_accuracy_kept=float(right[kept].mean()) if kept.any() else None,
    )


def flagged_error_share(policy: AbstainPolicy, uncertainty: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Share of all wrong predictions that the policy flags (1.0 = every error goes to a reader)."""
    scores, right = _checked(uncertainty, correct)
    if right.all():
        raise InputError(f"flagged error share needs at least one wrong prediction; all {right.size} are right")
    return float(policy.flag(scores)[~right].mean())


class PolicyAssessment(BaseModel):
    """A score judged as a review trigger: a policy fitted on validation cases, then everything measured on
    evaluation cases (the curve is the evaluation risk-coverage curve)."""

    model_config = ConfigDict(frozen=True)

    policy: AbstainPolicy
    error_auroc: float
    coverage_at_target: float = Field(description="Largest evaluation coverage reaching the target accuracy")
    aurc: float
    evaluation_coverage: float = Field(description="Share of evaluation cases the fitted policy keeps")
    evaluation_accuracy_kept: float | None
    errors_flagged: float = Field(description="Share of evaluation errors the fitted policy flags")
    curve: RiskCoverage


def assess_policy(
    validation: tuple[npt.ArrayLike, npt.ArrayLike],
    evaluation: tuple[npt.ArrayLike, npt.ArrayLike],
    score: str,
    target_accuracy: float = 0.99,
    method: str | None = None,
) -> PolicyAssessment:
    """Fit the policy on ``validation`` (uncertainty, correct) and measure it and the score on ``evaluation``."""
    policy = fit_abstain_policy(*validation, score, target_accuracy, method)
    scores, right = _checked(*evaluation)
    kept = ~policy.flag(scores)
    curve = risk_coverage(scores, right)
    return PolicyAssessment(
        policy=policy,
        error_auroc=error_detection_auroc(scores, right),
        coverage_at_target=coverage_at_accuracy(scores, right, target_accuracy)[0],
        aurc=curve.aurc,
        evaluation_coverage=float(kept.mean()),
        evaluation_accuracy_kept=float(right[kept].mean()) if kept.any() else None,
        errors_flagged=flagged_error_share(policy, scores, right),
        curve=curve,
    )


def write_risk_coverage_png(path: Path | str, curves: Mapping[str, RiskCoverage]) -> Path:
    """Risk against coverage per score, AURC in the legend; lower curves abstain better."""
    if not curves:
        raise InputError("write_risk_coverage_png: no curve to draw")
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5, 4))
    for name, curve in curves.items():
        axis.step(
            [0.0, *curve.coverage], [curve.risk[0], *curve.risk], where="pre", label=f"{name} (AURC {curve.aurc:.3f})"
        )
    top = max(max(curve.risk) for curve in curves.values())
    axis.set(xlabel="coverage (share of cases kept)", ylabel="risk (error rate of kept cases)", xlim=(0, 1))
    axis.set_ylim(0, max(top * 1.05, 0.01))
    axis.set_title("Risk-coverage")
    axis.legend(loc="upper left")
    return save_figure(figure, path)
