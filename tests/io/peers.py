"""Reference readers and comparison helpers for the I/O tests (SimpleITK, dcm2niix, nibabel, pydicom)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.dicom_factory import affine_from

FloatArray = npt.NDArray[np.float64]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRY_ATOL_MM = 1e-4


def sitk_to_ijk(image: Any) -> tuple[npt.NDArray[Any], FloatArray]:
    """A SimpleITK image as (array[i, j, k], voxel-to-LPS affine); SimpleITK's own arrays are [k, j, i]."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    array = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(2, 1, 0, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return array, affine_from(direction, image.GetSpacing(), image.GetOrigin())


def sitk_read_series(folder: Path, series_uid: str | None = None) -> tuple[npt.NDArray[Any], FloatArray]:
    """Read a single-frame series with SimpleITK's ImageSeriesReader (GDCM sorts the slices)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = (
        reader.GetGDCMSeriesFileNames(str(folder), series_uid)
        if series_uid
        else reader.GetGDCMSeriesFileNames(str(folder))
    )
    reader.SetFileNames(names)
    return sitk_to_ijk(reader.Execute())


def run_dcm2niix(executable: str, folder: Path, out: Path) -> list[Path]:
    """Convert ``folder`` with dcm2niix (uncompressed NIfTI) and return the NIfTI files it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [executable, "-z", "n", "-b", "n", "-f", "series", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return sorted(out.glob("*.nii"))


def canonical(array: npt.NDArray[Any], ras_affine: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(voxels, RAS affine) brought to nibabel's closest canonical (RAS+) axis order."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), ras_affine))
    return np.asarray(image.dataobj, dtype=np.float64), np.asarray(image.affine, dtype=np.float64)


def _frame_rescale(dataset: Any, frame: int) -> tuple[float, float]:
    """(slope, intercept) of one frame: per-frame group, else shared group, else the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        if groups in dataset and len(dataset[groups].value) > index:
            group = dataset[groups][index]
            if "PixelValueTransformationSequence" in group:
                item = group.PixelValueTransformationSequence[0]
                return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    return float(dataset.get("RescaleSlope", 1.0) or 1.0), float(dataset.get("RescaleIntercept", 0.0) or 0.0)


def hu_of(dataset: Any) -> FloatArray:
    """pydicom's own decoding with the rescale applied, arranged [i, j, k(, sample)] (k = frame).

    The rescale comes from the functional groups for enhanced multi-frame objects (pydicom's
    ``apply_modality_lut`` only reads the top-level tags).
    """
    pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1))
    if frames == 1:
        pixels = pixels[np.newaxis]
    for frame in range(frames):
        slope, intercept = _frame_rescale(dataset, frame)
        pixels[frame] = pixels[frame] * slope + intercept
    # (frames, rows, columns[, samples]) -> (columns, rows, frames[, samples])
    return pixels.transpose(2, 1, 0, 3) if samples > 1 else pixels.transpose(2, 1, 0)


def weighted_centroid_index(array: npt.NDArray[Any], low: float, high: float) -> FloatArray:
    """Centroid in continuous voxel indices of ``clip(array, low, high) - low`` (a phantom's mass)."""
    weights = np.clip(np.asarray(array, dtype=np.float64), low, high) - low
    grid = np.indices(weights.shape, dtype=np.float64)
    total = weights.sum()
    return np.asarray([(axis * weights).sum() / total for axis in grid], dtype=np.float64)


def numbers_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def mentions_position(text: str, value: float, tol: float = 0.01) -> bool:
    """Whether ``text`` contains a number within ``tol`` of ``value`` (a slice position)."""
    return any(abs(number - value) <= tol for number in numbers_in(text))


def listed(items: Any) -> list[Any]:
    """``report.studies`` / ``study.series`` as a list, whether the reader keeps a list or a mapping."""
    if isinstance(items, Mapping):
        return list(items.values())
    return list(items)


def all_series(report: Any) -> list[Any]:
    return [series for study in listed(report.studies) for series in listed(study.series)]


def series_by_uid(report: Any) -> dict[str, Any]:
    return {series.series_instance_uid: series for series in all_series(report)}


def skipped_reasons(report: Any) -> dict[Path, str]:
    """``report.skipped`` as {resolved path: reason}; entries may be (path, reason) pairs or objects."""
    reasons: dict[Path, str] = {}
    for entry in report.skipped:
        path, reason = (entry.path, entry.reason) if hasattr(entry, "path") else entry
        reasons[Path(path).resolve()] = str(reason)
    return reasons


def without_folder(messages: Iterable[str], folder: Path) -> list[str]:
    """Messages with ``folder`` cut out: pytest names temporary folders after the test, so a path could
    otherwise supply the very word a test looks for."""
    return [message.replace(str(folder), "<folder>") for message in messages]


def resolved(paths: Iterable[Path | str]) -> set[Path]:
    return {Path(p).resolve() for p in paths}


def assert_same_geometry(actual: FloatArray, expected: FloatArray, atol: float = GEOMETRY_ATOL_MM) -> None:
    np.testing.assert_allclose(np.asarray(actual), expected, atol=atol, rtol=0, err_msg="affine differs")


def assert_same_voxels(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> None:
    """Same shape and values: exactly, or to float32 rounding when either side is stored as float32."""
    assert np.shape(actual) == np.shape(expected), f"shape {np.shape(actual)} != {np.shape(expected)}"
    actual64, expected64 = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if np.float32 in (np.asarray(actual).dtype, np.asarray(expected).dtype):
        np.testing.assert_allclose(actual64, expected64, rtol=4 * float(np.finfo(np.float32).eps), atol=0)
    else:
        np.testing.assert_array_equal(actual64, expected64)


def flip_k(array: npt.NDArray[Any], affine: FloatArray) -> tuple[npt.NDArray[Any], FloatArray]:
    """The same voxels in space with the slice axis reversed."""
    flipped = affine.copy()
    flipped[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, array.shape[2] - 1]) + affine[:3, 3]
    flipped[:3, 2] = -affine[:3, 2]
    return array[:, :, ::-1], flipped


__all__ = [
    "GEOMETRY_ATOL_MM",
    "LPS_TO_RAS",
    "all_series",
    "assert_same_geometry",
    "assert_same_voxels",
    "canonical",
    "flip_k",
    "hu_of",
    "listed",
    "mentions_position",
    "resolved",
    "run_dcm2niix",
    "series_by_uid",
    "sitk_read_series",
    "sitk_to_ijk",
    "skipped_reasons",
    "weighted_centroid_index",
    "without_folder",
]
