"""The files a reader opens for one case: NIfTI maps, PNG overlays of the key slices, DICOM objects for PACS
(a Parametric Map of the heat on a DICOM volume, a Secondary Capture of the overlay on any DICOM image) and the
HTML case report. Every map is on the input's grid, so a viewer overlays it without registration."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from vesalius.io.nifti import write_nifti
from vesalius.trust.case import CaseTrust
from vesalius.writers.maps import key_slices, overlay_rgb, parametric_map, png_bytes, secondary_capture, write_png
from vesalius.writers.report import (
    CaseReport,
    Figure,
    Finding,
    MetricRow,
    ModelCard,
    SanityCheck,
    UncertaintyScore,
    write_case_report,
)
from vesalius.writers.seg import write_dicom

__all__ = ["case_stem", "write_case"]


def case_stem(name: str) -> str:
    """A file-name stem for an input: its last path part, without image suffixes, safe characters only."""
    last = Path(name.split(".npz:")[0]).name if ".npz:" not in name else name.replace("/", "_")
    stem = re.sub(r"(\.nii\.gz|\.nii|\.png|\.jpe?g|\.dcm|\.nrrd|\.mha)$", "", last, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "case"


def _slices(case: CaseTrust) -> list[int]:
    """Key slices along k: the most heat, else the most segmented voxels, else the middle."""
    weights = case.heatmap.array if case.heatmap is not None else None
    if weights is None and case.labels is not None:
        weights = (np.asarray(case.labels.array) > 0).astype(np.float32)
    if weights is None:
        return [case.image.shape[2] // 2]
    return key_slices(weights, count=3, axis=2)


def _plane(volume_array: npt.NDArray[Any], k: int) -> npt.NDArray[Any]:
    """Slice k of an (i, j, k) array in display order (rows, columns)."""
    return np.asarray(volume_array[:, :, k]).T


DISPLAY_PIXELS = 256
"""Small images (a 35 x 50 hippocampus crop) are enlarged by whole pixels to at least this on their long side."""


def _enlarged(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    factor = max(1, -(-DISPLAY_PIXELS // max(rgb.shape[:2])))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def overlays(case: CaseTrust) -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """(caption, RGB) per key slice: heat blended, the segmentation outlined."""
    pictures = []
    for k in _slices(case):
        heat = None if case.heatmap is None else _plane(case.heatmap.array, k)
        mask = None if case.labels is None else _plane(case.labels.array, k) > 0
        rgb = _enlarged(overlay_rgb(_plane(case.image.array, k), heat, mask2d=mask))
        method = f"{case.explanation_method} heat" if case.explanation_method else "image"
        where = f"slice {k + 1} of {case.image.shape[2]}" if case.image.shape[2] > 1 else "image"
        pictures.append((f"{method}, {where}" + (", segmentation outlined" if mask is not None else ""), rgb))
    return pictures


def _dicom(
    case: CaseTrust, sources: Sequence[pydicom.Dataset], folder: Path, pictures: list[tuple[str, Any]]
) -> list[Path]:
    """A Parametric Map of the heat on a DICOM volume; a Secondary Capture of the first overlay on any DICOM."""
    written: list[Path] = []
    if case.heatmap is not None and all("FrameOfReferenceUID" in ds for ds in sources) and len(sources) > 1:
        heat = parametric_map(
            sources,
            case.heatmap,
            series_description=f"Vesalius {case.explanation_method} heatmap"[:64],
            unit_code="1",
            label="attribution",
        )
        written.append(write_dicom(heat, folder))
    if pictures:
        capture = secondary_capture(sources[0], pictures[0][1], series_description="Vesalius explanation overlay")
        written.append(write_dicom(capture, folder))
    return written


def _report(case: CaseTrust, model: dict[str, Any], pictures: list[tuple[str, Any]], study_uid: str | None) -> Any:
    sanity = None
    if case.sanity is not None:
        sanity = SanityCheck(spearman=case.sanity.spearman, passed=case.sanity.passed)
    return CaseReport(
        title=f"{model['name']} {model['version']}: {case.name}",
        study_uid=study_uid,
        model=ModelCard(
            name=model["name"],
            version=model["version"],
            task=model["task"],
            intended_use=model["intended_use"],
            training_data=model["training_data"],
            validation_metrics=tuple(
                MetricRow(name=n, value=v, ci_low=lo, ci_high=hi) for n, v, lo, hi in model["validation_metrics"]
            ),
            calibration_ece=model.get("calibration_ece"),
            limitations=model.get("limitations", ""),
        ),
        findings=tuple(Finding(label=label, value=value, unit=unit) for label, value, unit in case.findings),
        prediction=case.prediction,
        probability=case.probability,
        uncertainty=tuple(
            UncertaintyScore(name=f"{k} ({case.uncertainty_method})", value=v) for k, v in case.scores.items()
        ),
        flagged=case.flagged,
        flag_reason=case.flag_reason,
        explanation_method=case.explanation_method,
        sanity_check=sanity,
        figures=tuple(Figure(caption=caption, png=png_bytes(rgb)) for caption, rgb in pictures),
    )


def write_case(
    case: CaseTrust,
    folder: Path | str,
    model: dict[str, Any],
    sources: Sequence[pydicom.Dataset] = (),
) -> list[Path]:
    """Write every output of ``case`` under ``folder`` with the input's stem; returns the files written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = case_stem(case.name)
    written: list[Path] = []
    if case.heatmap is not None:
        written.append(write_nifti(case.heatmap, out / f"{stem}.heatmap.nii.gz"))
    if case.labels is not None:
        written.append(write_nifti(case.labels, out / f"{stem}.labels.nii.gz"))
    for name, volume in case.uncertainty_maps.items():
        written.append(write_nifti(volume, out / f"{stem}.{name}.nii.gz"))
    pictures = overlays(case)
    for index, (_, rgb) in enumerate(pictures):
        written.append(write_png(out / f"{stem}.overlay{index + 1}.png", rgb))
    if sources:
        written += _dicom(case, sources, out / f"{stem}.dicom", pictures)
    study = str(sources[0].StudyInstanceUID) if sources else case.image.identity.study_instance_uid
    written.append(write_case_report(_report(case, model, pictures, study), out / f"{stem}.report.html"))
    return written
