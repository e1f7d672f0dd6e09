"""Scoring a lung-nodule model on the held-out side of its background CT, as LUNA16 scores a detector.

Two reference sets, each scored before and after false-positive reduction:
- inserted nodules on the held-out side (fresh seeds; the real nodules there count as findings to ignore);
- the real reference nodules on the held-out side (the readers' consensus; their irrelevant findings ignored).
Only candidates on the held-out side of the midline count, so the training side (where the model has seen
the anatomy) adds neither hits nor false positives. The operating point is read off the inserted set after
reduction at one false positive per scan; the real nodules play no part in choosing it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vesalius.engines.common.metrics.froc import Candidate, FrocReport, Lesion, froc
from vesalius.engines.detection.boxes import Detection, NoduleLike
from vesalius.engines.detection.false_positives import CandidateScan, candidate_labels
from vesalius.engines.detection.model import REDUCER_WEIGHTS, LungNoduleFinding, LungNoduleModel, combine
from vesalius.engines.detection.preprocess import PreparedCT
from vesalius.engines.detection.recipe import Background, synthetic_scans
from vesalius.engines.detection.synthetic import Side, midline_x, on_side

__all__ = [
    "HeldOutEvaluation",
    "RealNoduleResult",
    "cpm_by_reducer_weight",
    "evaluate_held_out",
    "lesions",
    "operating_point",
]


class RealNoduleResult(BaseModel):
    """How the model did on one real reference nodule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    centre: tuple[float, float, float]
    diameter_mm: float
    found: bool = Field(description="Some candidate's centre lies within the nodule's radius.")
    probability: float | None = Field(description="The best such candidate's score after reduction.")
    detector_probability: float | None
    false_positives_above: int | None = Field(
        description="False positives on the held-out side scored at least as high: the FP rate it is found at."
    )


class HeldOutEvaluation(BaseModel):
    """FROC on the held-out side, before and after reduction, the operating point and the time per scan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    held_out_side: Side
    inserted_detector: FrocReport
    inserted_reduced: FrocReport
    real_detector: FrocReport
    real_reduced: FrocReport
    real_nodules: list[RealNoduleResult]
    operating_point: float
    false_positives_per_scan_at_operating_point: float
    sensitivity_at_operating_point: float
    seconds_per_scan: float = Field(description="Detection and re-scoring of one prepared CT, mean.")
    inserted_cpm_by_reducer_weight: dict[str, float] = Field(
        default_factory=dict,
        description="CPM on the inserted set for each weight of the reducer in the score (0: detector alone); "
        "shows the reducer's effect whatever weight was chosen.",
    )

    def summary(self) -> dict[str, float]:
        """The headline figures, flat: for package metrics and benchmark tables."""
        return {
            "inserted_cpm_detector": self.inserted_detector.cpm.value,
            "inserted_cpm_reduced": self.inserted_reduced.cpm.value,
            "real_cpm_detector": self.real_detector.cpm.value,
            "real_cpm_reduced": self.real_reduced.cpm.value,
            "real_found": float(sum(r.found for r in self.real_nodules)),
            "real_nodules": float(len(self.real_nodules)),
            "operating_point": self.operating_point,
        }


def lesions(items: Sequence[tuple[Sequence[float], float]]) -> list[Lesion]:
    return [Lesion(centre=(float(c[0]), float(c[1]), float(c[2])), diameter_mm=float(d)) for c, d in items]


def cpm_by_reducer_weight(
    reference: Mapping[str, Sequence[Lesion]],
    ignore: Mapping[str, Sequence[Lesion]],
    detector_candidates: Sequence[Candidate],
    reducer_probabilities: Sequence[float],
) -> dict[float, float]:
    """CPM of the candidates scored by ``combine`` at each of ``REDUCER_WEIGHTS`` (their probabilities are the
    detector's; ``reducer_probabilities`` holds the reducer's for each)."""
    cpm = {}
    for weight in REDUCER_WEIGHTS:
        weighted = [
            Candidate(c.scan, c.centre, float(combine(c.probability, r, weight)))
            for c, r in zip(detector_candidates, reducer_probabilities, strict=True)
        ]
        cpm[weight] = froc(reference, weighted, ignore, n_bootstrap=1).cpm.value
    return cpm


def _as_pairs(nodules: Sequence[NoduleLike]) -> list[tuple[Sequence[float], float]]:
    return [(n.centre, n.diameter_mm) for n in nodules]


def operating_point(scores: np.ndarray, labels: np.ndarray, scans: int, rate: float = 1.0) -> float:
    """The lowest score threshold at which false positives (label 0) stay at or under ``rate`` per scan."""
    false = np.sort(scores[labels == 0])[::-1]
    allowed = int(np.floor(rate * scans))
    if len(false) <= allowed:
        return 0.0
    return float(np.nextafter(false[allowed], np.inf))


def _held_out_findings(
    model: LungNoduleModel, prepared: PreparedCT, side: Side, midline: float
) -> list[LungNoduleFinding]:
    detections = [d for d in model.candidates(prepared) if on_side([d.centre], side, midline)[0]]
    return model.rescore(prepared, detections)


def _candidates(scan: str, findings: Sequence[LungNoduleFinding], reduced: bool) -> list[Candidate]:
    return [
        Candidate(scan=scan, centre=f.centre, probability=f.probability if reduced else f.detector_probability)
        for f in findings
    ]


def _real_result(nodule: NoduleLike, findings: Sequence[LungNoduleFinding], labels: np.ndarray) -> RealNoduleResult:
    points = np.array([f.centre for f in findings], dtype=np.float64).reshape(-1, 3)
    hits = np.linalg.norm(points - np.asarray(nodule.centre)[None, :], axis=1) <= nodule.diameter_mm / 2.0
    centre = (float(nodule.centre[0]), float(nodule.centre[1]), float(nodule.centre[2]))
    if not hits.any():
        return RealNoduleResult(
            centre=centre,
            diameter_mm=nodule.diameter_mm,
            found=False,
            probability=None,
            detector_probability=None,
            false_positives_above=None,
        )
    best = max((f for f, h in zip(findings, hits, strict=True) if h), key=lambda f: f.probability)
    scores = np.array([f.probability for f in findings])
    above = int(np.count_nonzero((labels == 0) & (scores >= best.probability)))
    return RealNoduleResult(
        centre=centre,
        diameter_mm=nodule.diameter_mm,
        found=True,
        probability=best.probability,
        detector_probability=best.detector_probability,
        false_positives_above=above,
    )


def evaluate_held_out(
    model: LungNoduleModel, background: Background, n_bootstrap: int = 1000, seed: int = 0
) -> HeldOutEvaluation:
    """Score ``model`` on the plan's held-out synthetic scans and on the background's real nodules."""
    plan = model.plan
    side = plan.data.held_out_side
    midline = midline_x(background.prepared)
    inserted: dict[str, list[Lesion]] = {}
    ignore: dict[str, list[Lesion]] = {}
    detector_candidates: list[Candidate] = []
    reducer_probabilities: list[float] = []
    reduced_candidates: list[Candidate] = []
    scores, labels = [], []
    seconds = []
    for number, (prepared, nodules) in enumerate(synthetic_scans(background, plan, "held_out")):
        name = f"held-out-{number}"
        began = time.perf_counter()
        findings = _held_out_findings(model, prepared, side, midline)
        seconds.append(time.perf_counter() - began)
        inserted[name] = lesions(_as_pairs(nodules))
        ignore[name] = lesions(background.avoid)
        detector_candidates += _candidates(name, findings, reduced=False)
        reducer_probabilities += [f.reducer_probability for f in findings]
        reduced_candidates += _candidates(name, findings, reduced=True)
        scan = CandidateScan(prepared, nodules, [_as_detection(f) for f in findings], background.avoid)
        scores.append(np.array([f.probability for f in findings]))
        labels.append(candidate_labels(scan))
    threshold = operating_point(np.concatenate(scores), np.concatenate(labels), len(inserted))
    all_scores, all_labels = np.concatenate(scores), np.concatenate(labels)
    inserted_count = sum(len(v) for v in inserted.values())
    found_at_point = 0
    for name, scan_lesions in inserted.items():
        kept = [c.centre for c in reduced_candidates if c.scan == name and c.probability >= threshold]
        points = np.array(kept, dtype=np.float64).reshape(-1, 3)
        for lesion in scan_lesions:
            distance = np.linalg.norm(points - np.asarray(lesion.centre)[None, :], axis=1)
            found_at_point += bool(np.any(distance <= (lesion.diameter_mm or 0.0) / 2.0))
    false_at_point = int(np.count_nonzero((all_labels == 0) & (all_scores >= threshold)))

    # the real CT: its held-out side, real nodules as reference, irrelevant findings ignored
    real = [n for n in background.reference.nodules if on_side([n.centre], side, midline)[0]]
    irrelevant = [(f.centre, f.diameter_mm or 3.0) for f in background.reference.irrelevant]
    began = time.perf_counter()
    findings = _held_out_findings(model, background.prepared, side, midline)
    seconds.append(time.perf_counter() - began)
    real_scan = CandidateScan(background.prepared, real, [_as_detection(f) for f in findings], irrelevant)
    real_labels = candidate_labels(real_scan)
    real_reference = {"real": lesions(_as_pairs(real))}
    real_ignore = {"real": lesions(irrelevant)}
    by_weight = cpm_by_reducer_weight(inserted, ignore, detector_candidates, reducer_probabilities)
    return HeldOutEvaluation(
        inserted_cpm_by_reducer_weight={f"{w:g}": cpm for w, cpm in by_weight.items()},
        held_out_side=side,
        inserted_detector=froc(inserted, detector_candidates, ignore, n_bootstrap=n_bootstrap, seed=seed),
        inserted_reduced=froc(inserted, reduced_candidates, ignore, n_bootstrap=n_bootstrap, seed=seed),
        real_detector=froc(
            real_reference,
            _candidates("real", findings, reduced=False),
            real_ignore,
            n_bootstrap=n_bootstrap,
            seed=seed,
        ),
        real_reduced=froc(
            real_reference, _candidates("real", findings, reduced=True), real_ignore, n_bootstrap=n_bootstrap, seed=seed
        ),
        real_nodules=[_real_result(n, findings, real_labels) for n in real],
        operating_point=threshold,
        false_positives_per_scan_at_operating_point=false_at_point / len(inserted),
        sensitivity_at_operating_point=found_at_point / max(1, inserted_count),
        seconds_per_scan=float(np.mean(seconds)),
    )


def _as_detection(finding: LungNoduleFinding) -> Detection:
    return Detection(centre=finding.centre, diameter_mm=finding.diameter_mm, probability=finding.probability)
