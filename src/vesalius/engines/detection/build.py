"""Making the lung-nodule model from an annotated chest CT: detector, reducer, held-out scoring, package.

Each stage resumes: the detector from its checkpoint, the reducer from the classification engine's, so an
interrupted ``vesalius train-nodules`` picks up where it stopped and gives the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.engines.common.metrics.froc import Candidate, write_froc_png
from vesalius.engines.detection.evaluation import (
    HeldOutEvaluation,
    cpm_by_reducer_weight,
    evaluate_held_out,
    lesions,
)
from vesalius.engines.detection.false_positives import CandidateScan, FalsePositiveReducer, train_reducer
from vesalius.engines.detection.lung_mask import lung_volume_ml
from vesalius.engines.detection.model import REDUCER_WEIGHTS, LungNoduleModel, detector_candidates
from vesalius.engines.detection.network import build_detector, count_parameters
from vesalius.engines.detection.recipe import Background, LungNodulePlan, load_background, synthetic_scans
from vesalius.engines.detection.synthetic import midline_x, on_side
from vesalius.engines.detection.training import DetectionCase, train_detector

Progress = Callable[[dict[str, Any]], None]

__all__ = [
    "BuiltModel",
    "build_from_background",
    "build_lung_nodule_model",
    "choose_reducer_weight",
    "data_fingerprint",
]


@dataclass(frozen=True)
class BuiltModel:
    package: Path
    evaluation: HeldOutEvaluation


def data_fingerprint(background: Background, plan: LungNodulePlan) -> dict[str, Any]:
    """What the model was made from: the background CT, its reference standard and the synthetic scans."""
    prepared = background.prepared
    return {
        "background_series": background.reference.seriesuid,
        "detection_grid": {"shape": list(prepared.image.shape), "spacing_mm": list(plan.spacing_mm)},
        "lung_volume_ml": round(lung_volume_ml(prepared.lung_mask), 1),
        "reference_nodules": [
            {"centre": [round(c, 1) for c in n.centre], "diameter_mm": round(n.diameter_mm, 1), "readers": n.readers}
            for n in background.reference.nodules
        ],
        "irrelevant_findings": len(background.reference.irrelevant),
        "synthetic": plan.data.model_dump(mode="json"),
    }


def choose_reducer_weight(
    reducer: FalsePositiveReducer, scans: Sequence[CandidateScan], device: str = "cpu"
) -> tuple[float, dict[float, float]]:
    """The reducer's weight in ``combine`` with the highest CPM on ``scans`` (held back from its training);
    a tie goes to the lower weight, so a reducer that does not help leaves the detector's ranking alone."""
    names = [f"scan-{n}" for n in range(len(scans))]
    reference = {
        name: lesions([(n.centre, n.diameter_mm) for n in scan.nodules])
        for name, scan in zip(names, scans, strict=True)
    }
    ignore = {name: lesions(scan.ignore) for name, scan in zip(names, scans, strict=True)}
    candidates, reduced = [], []
    for name, scan in zip(names, scans, strict=True):
        centres = np.array([d.centre for d in scan.detections], dtype=np.float64).reshape(-1, 3)
        candidates += [Candidate(name, d.centre, d.probability) for d in scan.detections]
        reduced += reducer.probabilities(scan.prepared, centres, device).tolist()
    cpm = cpm_by_reducer_weight(reference, ignore, candidates, reduced)
    return max(REDUCER_WEIGHTS, key=lambda w: (cpm[w], -w)), cpm


def build_lung_nodule_model(
    series: Path,
    xml: Path,
    run_dir: Path,
    plan: LungNodulePlan | None = None,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    n_bootstrap: int = 1000,
) -> BuiltModel:
    """Train on an LIDC series' training side, score on its held-out side, write ``run_dir/model``."""
    chosen = plan or LungNodulePlan()
    background = load_background(series, xml, chosen)
    return build_from_background(background, run_dir, chosen, device=device, progress=progress, n_bootstrap=n_bootstrap)


def build_from_background(
    background: Background,
    run_dir: Path,
    plan: LungNodulePlan,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    n_bootstrap: int = 1000,
) -> BuiltModel:
    """The three stages and the package, from a prepared background CT and its reference standard."""

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "plan.json").write_text(plan.model_dump_json(indent=2) + "\n", encoding="utf-8")
    report = progress or (lambda record: None)

    detector = build_detector(plan.detector)
    cases = [DetectionCase.from_nodules(ct, nodules) for ct, nodules in synthetic_scans(background, plan, "training")]
    report({"stage": "detector", "cases": len(cases), "parameters": count_parameters(detector)})
    train_detector(detector, cases, plan.detector_training, run / "detector", device=device, progress=report)
    del cases

    # the reducer learns from the detector's candidates on fresh training-side scans
    midline = midline_x(background.prepared)
    side = plan.data.training_side
    scans = []
    for prepared, nodules in synthetic_scans(background, plan, "false_positive"):
        found = detector_candidates(detector, prepared, plan, device)
        detections = [d for d in found if on_side([d.centre], side, midline)[0]]
        scans.append(CandidateScan(prepared, nodules, detections, background.avoid))
        report({"stage": "candidates", "scan": len(scans), "candidates": len(detections)})
    reducer, _ = train_reducer(scans, plan.false_positive, run / "false_positive", device=device)
    selection = scans[-plan.false_positive.selection_scans :]
    weight, cpm_by_weight = choose_reducer_weight(reducer, selection, device)
    report({"stage": "reducer weight", "weight": weight, **{f"cpm at {w:g}": c for w, c in cpm_by_weight.items()}})
    del scans, selection

    model = LungNoduleModel(plan, detector, reducer, device=device, reducer_weight=weight).as_stored()
    evaluation = evaluate_held_out(model, background, n_bootstrap=n_bootstrap)
    model.operating_point = evaluation.operating_point
    (run / "evaluation.json").write_text(evaluation.model_dump_json(indent=2) + "\n", encoding="utf-8")
    for name in ("inserted", "real"):
        after, before = getattr(evaluation, f"{name}_reduced"), getattr(evaluation, f"{name}_detector")
        others = {"detector alone": before}
        write_froc_png(run / f"froc_{name}.png", after, "after false-positive reduction", others)
    metrics = {
        **evaluation.summary(),
        "reducer_weight_selection": {f"{w:g}": c for w, c in cpm_by_weight.items()},
        "held_out": evaluation.model_dump(mode="json"),
    }
    fingerprint = data_fingerprint(background, plan)
    package = model.save(run / "model", metrics=metrics, data_fingerprint=fingerprint)
    figures = {name: round(value, 4) for name, value in evaluation.summary().items()}
    report({"stage": "package", "path": str(package), **figures})
    return BuiltModel(package=package, evaluation=evaluation)
