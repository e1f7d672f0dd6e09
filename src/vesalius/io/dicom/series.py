"""Reading one DICOM series into a geometry-exact Volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import SeriesGeometryError, SeriesSelectionError
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.io.dicom.discover import ScanReport, SeriesInfo, scan
from vesalius.io.dicom.geometry import StackGeometry
from vesalius.io.dicom.pixels import read_stack

TiltPolicy = Literal["resample", "refuse"]


def select_series(report: ScanReport, series_uid: str | None = None) -> SeriesInfo:
    """The series named by UID, or the only one present."""
    candidates = report.series
    if series_uid is not None:
        chosen = [s for s in candidates if s.series_instance_uid == series_uid]
        if not chosen:
            known = ", ".join(s.series_instance_uid for s in candidates[:10])
            raise SeriesSelectionError(f"{report.root}: no series {series_uid}; present: {known}")
        return chosen[0]
    if len(candidates) > 1:
        listed = "; ".join(
            f"{s.series_instance_uid} ({s.modality} {s.description!r}, {len(s.frames)} frames)" for s in candidates
        )
        raise SeriesSelectionError(
            f"{report.root}: {len(candidates)} series found; choose one with --series UID: {listed}"
        )
    return candidates[0]


def _untilt(stack: npt.NDArray[Any], geometry: StackGeometry) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """Resample a gantry-tilted (sheared) stack onto the orthogonal grid with the same first slice.

    Slice k of the sheared grid is slice k of the orthogonal one shifted in-plane by k times the in-plane
    part of the slice step; undoing that shift with linear interpolation is exact for the geometry, as
    dcm2niix does it.
    """
    from scipy import ndimage  # only tilted series need it; keeps `vesalius info` quick to start

    affine = geometry.affine.copy()
    spacing_i = float(np.linalg.norm(affine[:3, 0]))
    spacing_j = float(np.linalg.norm(affine[:3, 1]))
    row, column = affine[:3, 0] / spacing_i, affine[:3, 1] / spacing_j
    shift = geometry.in_plane_shift
    step_i, step_j = float(shift @ row) / spacing_i, float(shift @ column) / spacing_j
    fill = float(stack.min())
    result = np.empty(stack.shape, dtype=np.float32 if stack.dtype.kind == "f" else stack.dtype)
    for k in range(stack.shape[2]):
        plane = stack[:, :, k].astype(np.float32)
        moved = ndimage.shift(plane, (k * step_i, k * step_j), order=1, mode="constant", cval=fill)
        result[:, :, k] = np.rint(moved) if result.dtype.kind in "iu" else moved
    normal = np.cross(row, column)
    affine[:3, 2] = normal * float(np.dot(affine[:3, 2], normal))
    return result, affine


def volume_from_series(series: SeriesInfo, on_tilt: TiltPolicy = "resample", workers: int | None = None) -> Volume:
    """Decode a scanned series; refuse it with every problem named when it is not one regular grid."""
    geometry = series.geometry
    blocking = geometry.blocking_problems
    if geometry.tilt_degrees and on_tilt == "refuse":
        blocking = [*blocking, *(p for p in geometry.problems if p.kind == "gantry_tilt")]
    if blocking:
        raise SeriesGeometryError(series.series_instance_uid, [p.message for p in blocking], series.files)
    array = read_stack(series.frames, geometry.order, workers=workers)
    affine = geometry.affine
    metadata: dict[str, Any] = {
        "source": str(series.files[0].parent if len(series.files) > 1 else series.files[0]),
        "series_description": series.description,
        "series_number": series.series_number,
        "transfer_syntaxes": series.transfer_syntaxes,
        "problems": series.problems,
    }
    if geometry.tilt_degrees:
        array, affine = _untilt(array, geometry)
        metadata["gantry_tilt_degrees"] = geometry.tilt_degrees
        metadata["resampled_for_tilt"] = True
    ordered = [series.frames[i] for i in geometry.order]
    identity = DicomIdentity(
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        sop_class_uid=series.sop_class_uid,
        sop_instance_uids=tuple(dict.fromkeys(f.sop_instance_uid for f in ordered)),
    )
    return Volume(array=array, affine=affine, modality=series.modality or None, identity=identity, metadata=metadata)


def read_series(
    path: Path | str,
    series_uid: str | None = None,
    on_tilt: TiltPolicy = "resample",
    workers: int | None = None,
) -> Volume:
    """Read one series from a DICOM file or folder (any depth); name it when the folder holds several."""
    report = scan(path)
    return volume_from_series(select_series(report, series_uid), on_tilt=on_tilt, workers=workers)
