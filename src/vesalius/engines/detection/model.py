"""The lung-nodule model as shipped: detector, false-positive reducer and operating point in one package.

``LungNoduleModel.find`` is what ``vesalius predict`` runs on a chest CT: prepare the CT (lung mask, crop,
1 mm grid), detect candidates with the sliding-window RetinaNet, re-score the most probable ones with the
patch classifier and rank them by a weighted geometric mean of both probabilities, the weight chosen on scans
held back from the reducer's training (``combine``). Findings at or above the operating point (chosen on
held-out data at one false positive per scan) are reported as nodules; the rest stay in the output, flagged,
for a reader who wants a lower threshold.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vesalius.core.errors import InputError, PackageError
from vesalius.core.volume import Volume
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.common.package import as_stored, load_package, save_package
from vesalius.engines.detection.boxes import Detection
from vesalius.engines.detection.false_positives import FalsePositiveReducer
from vesalius.engines.detection.network import AtssRetinaNetDetector, build_detector
from vesalius.engines.detection.preprocess import PreparedCT, prepare_ct
from vesalius.engines.detection.recipe import LungNodulePlan
from vesalius.engines.detection.training import detect

__all__ = [
    "REDUCER_WEIGHTS",
    "LungNoduleFinding",
    "LungNoduleModel",
    "combine",
    "detector_candidates",
    "write_findings",
]

DETECTOR_PREFIX = "detector."
REDUCER_PREFIX = "false_positive."
STORED_DTYPE = torch.float16


@dataclass(frozen=True)
class LungNoduleFinding:
    """One candidate nodule in patient space, with the two probabilities behind its score."""

    centre: tuple[float, float, float]
    """LPS mm."""
    diameter_mm: float
    probability: float
    """detector^(1 - w) x reducer^w (``combine``): what findings are ranked and thresholded by."""
    detector_probability: float
    reducer_probability: float
    nodule: bool
    """At or above the model's operating point."""
    malignancy: float | None = None
    """Not estimated by this model (no malignancy-rated training data); kept so readers of the CSV see so."""


def detector_candidates(
    detector: AtssRetinaNetDetector, prepared: PreparedCT, plan: LungNodulePlan, device: str = "cpu"
) -> list[Detection]:
    """The detector's ``plan.max_candidates`` most probable candidates on a prepared CT."""
    return detect(detector, prepared, plan.window, plan.overlap, device=device)[: plan.max_candidates]


REDUCER_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The reducer weights ``combine`` is tried with: from the detector alone to the reducer alone."""


def combine(detector: npt.ArrayLike, reducer: npt.ArrayLike, weight: float = 0.5) -> npt.NDArray[np.float64]:
    """detector^(1 - weight) x reducer^weight: a weighted geometric mean, high only when both networks call it a
    nodule (at 0.5); ``weight`` is chosen on held-back scans, so a reducer that does not help gets little say."""
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"the reducer's weight must be in [0, 1]; got {weight}")
    first = np.clip(np.asarray(detector, dtype=np.float64), 1e-12, 1.0)
    second = np.clip(np.asarray(reducer, dtype=np.float64), 1e-12, 1.0)
    return np.asarray(np.exp((1.0 - weight) * np.log(first) + weight * np.log(second)), dtype=np.float64)


class LungNoduleModel:
    """A detector and its false-positive reducer, ready to run on chest CTs."""

    def __init__(
        self,
        plan: LungNodulePlan,
        detector: AtssRetinaNetDetector,
        reducer: FalsePositiveReducer,
        operating_point: float = 0.5,
        device: str = "cpu",
        reducer_weight: float = 0.5,
    ) -> None:
        self.plan = plan
        self.detector = detector
        self.reducer = reducer
        self.operating_point = operating_point
        self.reducer_weight = reducer_weight
        self.device = device

    @classmethod
    def from_package(cls, folder: Path | str, device: str = "cpu") -> LungNoduleModel:
        package = load_package(folder)
        manifest = package.manifest
        if manifest.task != "detection":
            raise PackageError(f"{folder}: a {manifest.task} package, not a lung-nodule detection package")
        try:
            plan = LungNodulePlan.model_validate(manifest.plan["lung_nodules"])
            reducer_plan = ClassificationPlan.model_validate(manifest.plan["false_positive_classifier"])
            operating_point = float(manifest.postprocessing["operating_point"])
            weight = float(manifest.postprocessing["reducer_weight"])
        except (KeyError, ValueError) as error:
            raise PackageError(f"{folder}: package.json does not describe a lung-nodule model ({error})") from error
        weights = package.state_dict()
        return cls.from_weights(plan, reducer_plan, weights, operating_point, device, weight)

    @classmethod
    def from_weights(
        cls,
        plan: LungNodulePlan,
        reducer_plan: ClassificationPlan,
        weights: Mapping[str, torch.Tensor],
        operating_point: float,
        device: str = "cpu",
        reducer_weight: float = 0.5,
    ) -> LungNoduleModel:
        detector = build_detector(plan.detector)
        detector.network.load_state_dict(_part(weights, DETECTOR_PREFIX))
        reducer = FalsePositiveReducer.from_state(plan.false_positive, reducer_plan, _part(weights, REDUCER_PREFIX))
        return cls(plan, detector, reducer, operating_point, device, reducer_weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both networks' weights in one flat mapping (one safetensors file)."""
        parts = {DETECTOR_PREFIX: self.detector.network.state_dict(), REDUCER_PREFIX: self.reducer.network.state_dict()}
        return {prefix + name: value for prefix, state in parts.items() for name, value in state.items()}

    def as_stored(self) -> LungNoduleModel:
        """The model with the weights the package keeps (float16-rounded), so recorded figures are the shipped ones."""
        stored = as_stored(self.state_dict(), STORED_DTYPE)
        return LungNoduleModel.from_weights(
            self.plan, self.reducer.plan, stored, self.operating_point, self.device, self.reducer_weight
        )

    def prepare(self, volume: Volume) -> PreparedCT:
        return prepare_ct(volume, self.plan.geometry())

    def candidates(self, prepared: PreparedCT) -> list[Detection]:
        """The detector's most probable candidates (``plan.max_candidates``), before re-scoring."""
        return detector_candidates(self.detector, prepared, self.plan, self.device)

    def rescore(self, prepared: PreparedCT, detections: Sequence[Detection]) -> list[LungNoduleFinding]:
        """Findings from detector candidates, most probable first."""
        if not detections:
            return []
        centres = np.array([d.centre for d in detections], dtype=np.float64)
        reducer = self.reducer.probabilities(prepared, centres, self.device)
        detector = np.array([d.probability for d in detections], dtype=np.float64)
        scores = combine(detector, reducer, self.reducer_weight)
        findings = [
            LungNoduleFinding(
                centre=d.centre,
                diameter_mm=d.diameter_mm,
                probability=float(s),
                detector_probability=float(d.probability),
                reducer_probability=float(r),
                nodule=bool(s >= self.operating_point),
            )
            for d, s, r in zip(detections, scores, reducer, strict=True)
        ]
        return sorted(findings, key=lambda f: -f.probability)

    def find(self, volume: Volume) -> list[LungNoduleFinding]:
        prepared = self.prepare(volume)
        return self.rescore(prepared, self.candidates(prepared))

    def save(
        self,
        folder: Path | str,
        *,
        metrics: Mapping[str, Any],
        data_fingerprint: Mapping[str, Any],
        version: str = "0.1.0",
        overwrite: bool = True,
    ) -> Path:
        plan = {
            "lung_nodules": self.plan.model_dump(mode="json"),
            "false_positive_classifier": self.reducer.plan.model_dump(mode="json"),
        }
        return save_package(
            folder,
            name="lung-nodules",
            version=version,
            task="detection",
            labels={0: "nodule"},
            plan=plan,
            metrics=dict(metrics),
            data_fingerprint=dict(data_fingerprint),
            state_dict=self.state_dict(),
            postprocessing={
                "operating_point": self.operating_point,
                "reducer_weight": self.reducer_weight,
                "score": "detector^(1 - reducer_weight) x reducer^reducer_weight",
            },
            overwrite=overwrite,
            weights_dtype=STORED_DTYPE,
        )


def _part(weights: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    part = {name[len(prefix) :]: value.float() for name, value in weights.items() if name.startswith(prefix)}
    if not part:
        raise PackageError(f"the package's weights hold no {prefix.rstrip('.')} network")
    return part


FIELDS = (
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "probability",
    "nodule",
    "detector_probability",
    "reducer_probability",
    "malignancy",
)


def write_findings(folder: Path | str, seriesuid: str, findings: Sequence[LungNoduleFinding]) -> tuple[Path, Path]:
    """``nodules.csv`` (LUNA16's candidate columns first, so its evaluation scripts read it) and ``nodules.json``."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    rows = []
    for finding in findings:
        x, y, z = finding.centre
        rows.append(
            {
                "seriesuid": seriesuid,
                "coordX": round(x, 2),
                "coordY": round(y, 2),
                "coordZ": round(z, 2),
                "diameter_mm": round(finding.diameter_mm, 2),
                "probability": round(finding.probability, 5),
                "nodule": finding.nodule,
                "detector_probability": round(finding.detector_probability, 5),
                "reducer_probability": round(finding.reducer_probability, 5),
                "malignancy": "" if finding.malignancy is None else round(finding.malignancy, 2),
            }
        )
    table = target / "nodules.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    document = target / "nodules.json"
    payload = {
        "seriesuid": seriesuid,
        "coordinates": "LPS mm (DICOM patient coordinates)",
        "nodules": [asdict(f) for f in findings],
    }
    document.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return table, document
