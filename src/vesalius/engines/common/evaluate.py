"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Cases pair by name (``case_001.nii.gz`` with ``case_001.nii.gz`` or ``case_001.nrrd``; a DICOM series
folder by its folder name). Each pair must sample the same grid, because a metric computed across
different grids is silently wrong. Per-case, per-class Dice, HD95 and surface Dice use the reference's
voxel spacing; summaries give mean, sd and a bootstrap CI per class and for the mean over foreground
classes. A reference without a prediction is a failed case (Dice 0), not a skipped one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from vesalius.core.errors import EvaluationError
from vesalius.core.volume import Volume
from vesalius.engines.common.metrics.segmentation import ClassMetrics, per_class_metrics
from vesalius.engines.common.metrics.summary import NanFloat, Summary, summarize
from vesalius.io import read_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
GRID_TOLERANCE_MM = 1e-3
JSON_NAME = "evaluation.json"
TABLE_NAME = "evaluation.md"
METRICS = ("dice", "hd95", "surface_dice")


class ClassResult(BaseModel):
    """One class in one case; hd95 is nan (null in JSON) when exactly one mask is empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dice: NanFloat
    hd95: NanFloat
    surface_dice: NanFloat
    prediction_empty: bool
    reference_empty: bool

    @classmethod
    def from_metrics(cls, metrics: ClassMetrics) -> ClassResult:
        return cls(
            dice=metrics.dice,
            hd95=metrics.hd95,
            surface_dice=metrics.surface_dice,
            prediction_empty=metrics.prediction_empty,
            reference_empty=metrics.reference_empty,
        )


class CaseResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    case: str
    reference: str
    prediction: str | None = None
    """None when the prediction is missing: every class then scores Dice 0, surface Dice 0, HD95 missing."""
    classes: dict[int, ClassResult]


class ClassSummary(BaseModel):
    """Summaries over cases of one class, or of the per-case mean over foreground classes (label None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: int | None
    name: str
    dice: Summary
    hd95: Summary
    surface_dice: Summary
    n_empty_prediction: int
    """Cases whose reference has the class and whose prediction does not (the usual cause of a missing HD95)."""


class EvaluationReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prediction_dir: str
    reference_dir: str
    tolerance_mm: float
    labels: dict[int, str]
    cases: list[CaseResult]
    classes: list[ClassSummary]
    foreground_mean: ClassSummary
    missing_predictions: list[str]
    """Reference cases with no prediction; they are scored as failures and included above."""
    unmatched_predictions: list[str]
    """Predictions with no reference; ignored."""

    def to_table(self) -> str:
        """A Markdown table (readable as plain text) with one row per class and the foreground mean."""
        tolerance = f"{self.tolerance_mm:g}"
        header = f"| class | Dice | HD95 (mm) | surface Dice ({tolerance} mm) | n | empty prediction | HD95 missing |"
        lines = [header, "|---|---|---|---|---|---|---|"]
        for row in [*self.classes, self.foreground_mean]:
            name = row.name if row.label is None else f"{row.name} ({row.label})"
            cells = [name, row.dice.format(3), row.hd95.format(2), row.surface_dice.format(3)]
            counts = [row.dice.n + row.dice.n_missing, row.n_empty_prediction, row.hd95.n_missing]
            lines.append("| " + " | ".join([*cells, *(str(c) for c in counts)]) + " |")
        confidence = f"{self.foreground_mean.dice.confidence:.0%}"
        lines.append("")
        lines.append(f"{len(self.cases)} cases; mean ± sd [{confidence} bootstrap CI of the mean].")
        if self.missing_predictions:
            lines.append(f"Missing predictions (scored Dice 0): {', '.join(self.missing_predictions)}.")
        if self.unmatched_predictions:
            lines.append(f"Predictions without reference (ignored): {', '.join(self.unmatched_predictions)}.")
        return "\n".join(lines) + "\n"

    def save(self, folder: Path | str) -> tuple[Path, Path]:
        """Write ``evaluation.json`` and ``evaluation.md`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        json_path, table_path = out / JSON_NAME, out / TABLE_NAME
        json_path.write_text(self.model_dump_json(indent=2) + "\n")
        table_path.write_text(self.to_table())
        return json_path, table_path


def case_id(path: Path) -> str | None:
    """The case name of an image file or DICOM folder; None for anything else (json, hidden files)."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return path.name
    lower = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def case_files(folder: Path, role: str) -> dict[str, Path]:
    """Case name -> image path for every image directly in ``folder``."""
    if not folder.is_dir():
        raise EvaluationError(f"{role} folder {folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_id(path)
        if name is None:
            continue
        if name in found:
            raise EvaluationError(
                f"{role} folder {folder}: case {name} appears twice ({found[name].name}, {path.name})"
            )
        found[name] = path
    if not found:
        raise EvaluationError(f"{role} folder {folder}: no images found (expected {', '.join(IMAGE_SUFFIXES)})")
    return found


def _label_map(volume: Volume, path: Path) -> npt.NDArray[Any]:
    array = volume.array
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise EvaluationError(f"{path}: a label map must be 3-D, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise EvaluationError(f"{path}: label map holds non-integer values; expected integer labels")
        array = rounded.astype(np.int32)
    return np.asarray(array)


def _check_grid(prediction: Volume, reference: Volume, prediction_path: Path, reference_path: Path) -> None:
    if prediction.shape != reference.shape:
        raise EvaluationError(
            f"{prediction_path} has shape {prediction.shape} but its reference {reference_path} has shape "
            f"{reference.shape}; a prediction must be on its reference's grid"
        )
    difference = float(np.max(np.abs(prediction.affine - reference.affine)))
    if difference > GRID_TOLERANCE_MM:
        raise EvaluationError(
            f"{prediction_path} and its reference {reference_path} have different affines (largest difference "
            f"{difference:.4g} mm, tolerance {GRID_TOLERANCE_MM} mm); a prediction must be on its reference's grid"
        )


def _foreground(values: npt.NDArray[Any]) -> set[int]:
    return {int(v) for v in np.unique(values) if v != 0}


def _summary_row(label: int | None, name: str, cases: list[CaseResult], classes: list[int]) -> ClassSummary:
    """Summaries over cases; for several classes each case first contributes its mean over them."""
    columns: dict[str, list[float]] = {metric: [] for metric in METRICS}
    empty = 0
    for case in cases:
        results = [case.classes[c] for c in classes]
        for metric in METRICS:
            columns[metric].append(float(np.mean([getattr(r, metric) for r in results])) if results else math.nan)
        empty += any(r.prediction_empty and not r.reference_empty for r in results)
    summaries = {metric: summarize(values) for metric, values in columns.items()}
    return ClassSummary(label=label, name=name, n_empty_prediction=empty, **summaries)


def evaluate_folders(
    prediction_dir: Path | str,
    reference_dir: Path | str,
    labels: Mapping[int, str] | None = None,
    tolerance_mm: float = 1.0,
    output: Path | str | None = None,
) -> EvaluationReport:
    """Per-case, per-class metrics of every reference case and their summaries; saved when ``output`` is given.

    ``labels`` maps label values to names and selects the classes; by default the classes are the
    non-zero labels found in the references. The mean row averages classes other than 0 within each case.
    """
    pred_dir, ref_dir = Path(prediction_dir), Path(reference_dir)
    references = case_files(ref_dir, "reference")
    predictions = case_files(pred_dir, "prediction")
    if not set(references) & set(predictions):
        raise EvaluationError(
            f"no prediction in {pred_dir} matches a reference in {ref_dir} by name "
            f"(references e.g. {next(iter(references))}, predictions e.g. {next(iter(predictions))})"
        )
    wanted = None if labels is None else {int(c) for c in labels}
    computed: dict[str, dict[int, ClassMetrics]] = {}
    reference_labels: dict[str, set[int]] = {}
    for name, ref_path in references.items():
        reference = read_volume(ref_path)
        ref_array = _label_map(reference, ref_path)
        reference_labels[name] = _foreground(ref_array)
        if name not in predictions:
            continue
        pred_path = predictions[name]
        prediction = read_volume(pred_path)
        _check_grid(prediction, reference, pred_path, ref_path)
        pred_array = _label_map(prediction, pred_path)
        classes = reference_labels[name] | _foreground(pred_array) if wanted is None else wanted
        computed[name] = per_class_metrics(pred_array, ref_array, sorted(classes), reference.spacing, tolerance_mm)

    all_classes = sorted(wanted if wanted is not None else set().union(*reference_labels.values()))
    if not all_classes:
        raise EvaluationError(f"the references in {ref_dir} hold no foreground label; name the classes with labels")
    names = {c: (labels[c] if labels is not None else f"label {c}") for c in all_classes}
    both_empty = ClassResult(dice=1.0, hd95=0.0, surface_dice=1.0, prediction_empty=True, reference_empty=True)
    cases: list[CaseResult] = []
    for name, ref_path in references.items():
        if name in computed:
            per_class = {
                c: ClassResult.from_metrics(computed[name][c]) if c in computed[name] else both_empty
                for c in all_classes
            }
            cases.append(
                CaseResult(case=name, reference=str(ref_path), prediction=str(predictions[name]), classes=per_class)
            )
            continue
        failed = {
            c: ClassResult(
                dice=0.0,
                hd95=math.nan,
                surface_dice=0.0,
                prediction_empty=True,
                reference_empty=c not in reference_labels[name],
            )
            for c in all_classes
        }
        cases.append(CaseResult(case=name, reference=str(ref_path), classes=failed))

    foreground = [c for c in all_classes if c != 0]
    report = EvaluationReport(
        prediction_dir=str(pred_dir),
        reference_dir=str(ref_dir),
        tolerance_mm=tolerance_mm,
        labels=names,
        cases=cases,
        classes=[_summary_row(c, names[c], cases, [c]) for c in all_classes],
        foreground_mean=_summary_row(None, "mean (foreground)", cases, foreground),
        missing_predictions=sorted(set(references) - set(predictions)),
        unmatched_predictions=sorted(set(predictions) - set(references)),
    )
    if output is not None:
        report.save(output)
    return report
