"""Realistic DICOM files of known content and geometry, written with pydicom, for tests.

Conventions (the same as ``vesalius.core.volume``):

* ``array_ijk`` holds the *real-world* values (HU for CT) indexed ``[i, j, k]``: ``i`` runs along the
  DICOM row direction (image columns), ``j`` along the column direction (image rows), ``k`` over slices.
* ``affine`` is the 4x4 voxel-to-patient-LPS matrix: its columns are direction * spacing and its last
  column is the centre of voxel (0, 0, 0).

Slice ``k`` is written with ``pixel_array == stored[:, :, k].T`` (rows = j, columns = i),
``ImagePositionPatient == affine @ (0, 0, k, 1)``, ``ImageOrientationPatient`` = the unit vectors of
affine columns 0 and 1, and ``PixelSpacing == [spacing_j, spacing_i]`` (row spacing first).

The orientation helpers (:func:`axial`, :func:`coronal`, :func:`sagittal`, :func:`oblique`) return
right-handed frames whose slice axis is the normal ``row x column``; that is the order in which
SimpleITK/GDCM and dcm2niix stack slices, so a correct reader returns the ground truth unchanged.
An affine whose third column is *not* along the normal (reversed stack, gantry tilt) is written as
given and :class:`WrittenSeries` records the exact geometry that was written.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "LOSSLESS_COMPRESSED_SYNTAXES",
    "UNCOMPRESSED_SYNTAXES",
    "Affine",
    "CTImageStorage",
    "DeflatedExplicitVRLittleEndian",
    "EncoderUnavailableError",
    "EnhancedCTImageStorage",
    "EnhancedMRImageStorage",
    "ExplicitVRBigEndian",
    "ExplicitVRLittleEndian",
    "FileNaming",
    "GeometryPlacement",
    "ImplicitVRLittleEndian",
    "InstanceOrder",
    "JPEG2000Lossless",
    "JPEGLSLossless",
    "JPEGLosslessSV1",
    "MRImageStorage",
    "Mutator",
    "RLELossless",
    "SeriesIdentity",
    "TiltedPhantom",
    "WrittenSeries",
    "affine_from",
    "axial",
    "can_encode",
    "copy_into",
    "coronal",
    "corrupt_compressed_pixels",
    "gantry_tilted_series",
    "generate_uid",
    "oblique",
    "random_values",
    "rotation",
    "sagittal",
    "scratch_folder",
    "set_pixels",
    "sphere_values",
    "truncate_copy",
    "truncate_pixel_data",
    "voxel_centres",
    "write_compressed",
    "write_multiframe",
    "write_series",
    "write_text_file",
]

Affine = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float64]
Mutator = Callable[[Dataset, int], None]
"""Called with (dataset, k) just before slice ``k`` is encoded and saved; may change any attribute."""

InstanceOrder = Literal["random", "ascending", "reversed"]
FileNaming = Literal["uid", "index", "bare"]
GeometryPlacement = Literal["shared", "per_frame"]

UNCOMPRESSED_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
LOSSLESS_COMPRESSED_SYNTAXES: tuple[UID, ...] = (RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1)

_GDCM_SYNTAX_NAMES = {
    JPEGLSLossless: "JPEGLSLossless",
    JPEGLosslessSV1: "JPEGLosslessProcess14_1",
    JPEG2000Lossless: "JPEG2000Lossless",
}
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_ENHANCED_SOP_CLASS = {"CT": EnhancedCTImageStorage, "MR": EnhancedMRImageStorage}
_STUDY_DATE = _dt.date(2024, 3, 14)


class EncoderUnavailableError(RuntimeError):
    """No installed plugin can encode the requested transfer syntax (tests skip on this)."""


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def affine_from(direction: npt.ArrayLike, spacing: Sequence[float], origin: Sequence[float]) -> Affine:
    """4x4 voxel-to-LPS matrix from a 3x3 direction (columns = unit axes), spacing (i, j, k), origin."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def _frame(row: Sequence[float], col: Sequence[float]) -> FloatArray:
    row_v = np.asarray(row, dtype=np.float64)
    col_v = np.asarray(col, dtype=np.float64)
    return np.column_stack([row_v, col_v, np.cross(row_v, col_v)])


def rotation(angles_deg: Sequence[float]) -> FloatArray:
    """Rotation ``Rz @ Ry @ Rx`` for angles (about x, about y, about z) in degrees."""
    ax, ay, az = (math.radians(a) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def axial(spacing: Sequence[float] = (0.7, 0.8, 2.5), origin: Sequence[float] = (-120.0, -95.5, 41.25)) -> Affine:
    """Axial: rows run to patient Left, columns to Posterior, slices to Superior ('LPS')."""
    return affine_from(_frame((1, 0, 0), (0, 1, 0)), spacing, origin)


def coronal(spacing: Sequence[float] = (0.7, 0.8, 2.5), origin: Sequence[float] = (-120.0, 35.0, 80.0)) -> Affine:
    """Coronal: rows to Left, columns to Inferior, slices to Posterior ('LIP')."""
    return affine_from(_frame((1, 0, 0), (0, 0, -1)), spacing, origin)


def sagittal(spacing: Sequence[float] = (0.7, 0.8, 2.5), origin: Sequence[float] = (12.0, -110.0, 80.0)) -> Affine:
    """Sagittal: rows to Posterior, columns to Inferior, slices to Right ('PIR')."""
    return affine_from(_frame((0, 1, 0), (0, 0, -1)), spacing, origin)


def oblique(
    angles_deg: Sequence[float] = (20.0, -15.0, 10.0),
    spacing: Sequence[float] = (0.7, 0.8, 2.5),
    origin: Sequence[float] = (-60.5, 30.25, -12.0),
) -> Affine:
    """An axial frame rotated by :func:`rotation` (angles about x, y, z in degrees)."""
    return affine_from(rotation(angles_deg), spacing, origin)


def voxel_centres(affine: Affine, shape: Sequence[int]) -> FloatArray:
    """LPS position of every voxel centre, shape ``(*shape, 3)``."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(np.float64)
    return np.asarray(grid @ affine[:3, :3].T + affine[:3, 3], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


def random_values(
    shape: Sequence[int],
    *,
    seed: int = 0,
    slope: float = 1.0,
    intercept: float = -1024.0,
    stored_range: tuple[int, int] = (0, 4095),
) -> FloatArray:
    """Random real-world values that are exactly ``stored * slope + intercept`` for integer ``stored``."""
    rng = np.random.default_rng(seed)
    stored = rng.integers(stored_range[0], stored_range[1] + 1, size=tuple(shape))
    return np.asarray(stored * slope + intercept, dtype=np.float64)


def _to_stored(values: npt.ArrayLike, slope: float, intercept: float, signed: bool) -> npt.NDArray[Any]:
    real = np.asarray(values, dtype=np.float64)
    stored = (real - intercept) / slope
    rounded = np.round(stored)
    if not np.allclose(stored, rounded, atol=1e-6):
        raise ValueError("values are not exactly representable as stored * slope + intercept")
    dtype = np.dtype("<i2") if signed else np.dtype("<u2")
    info = np.iinfo(dtype)
    if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
        raise ValueError(f"stored values {rounded.min()}..{rounded.max()} do not fit {dtype}")
    return rounded.astype(dtype)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _ds_list(values: Iterable[float]) -> list[str]:
    return [_ds(v) for v in values]


@dataclass(frozen=True)
class SeriesIdentity:
    """The identifiers shared by every instance of one series."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    patient_id: str = "VES-0001"
    patient_name: str = "Vesalius^Phantom"
    series_number: int = 1
    series_description: str = "factory series"

    @classmethod
    def new(
        cls,
        study_uid: str | None = None,
        series_uid: str | None = None,
        frame_of_reference_uid: str | None = None,
        **extra: Any,
    ) -> SeriesIdentity:
        return cls(
            study_uid=study_uid or generate_uid(),
            series_uid=series_uid or generate_uid(),
            frame_of_reference_uid=frame_of_reference_uid or generate_uid(),
            **extra,
        )


@dataclass(frozen=True)
class WrittenSeries:
    """What a factory call wrote, with the exact ground truth to compare a reader against."""

    folder: Path
    files: list[Path]
    """In slice (k) order, skipped slices left out; one file for a multi-frame object."""
    array: FloatArray
    """Real-world values (HU for CT) [i, j, k] as written (skipped slices included)."""
    affine: Affine
    """Exact voxel-to-LPS geometry of ``array`` (sheared when the series has a gantry tilt)."""
    identity: SeriesIdentity
    modality: str
    sop_instance_uids: list[str]
    """In slice (k) order, aligned with ``files`` for single-frame series."""

    @property
    def series_uid(self) -> str:
        return self.identity.series_uid

    @property
    def study_uid(self) -> str:
        return self.identity.study_uid


def _file_dataset(sop_class: UID, sop_instance: str, transfer_syntax: UID) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "VESALIUS_TESTS"
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _add_patient_study_series(ds: Dataset, ident: SeriesIdentity, modality: str) -> None:
    date = _STUDY_DATE.strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = date
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = "093000"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = f"0931{ident.series_number % 60:02d}"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = modality
    ds.Manufacturer = "Vesalius test factory"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "factory study"
    ds.SeriesDescription = ident.series_description
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ident.study_uid
    ds.SeriesInstanceUID = ident.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = ident.series_number
    ds.FrameOfReferenceUID = ident.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST" if modality == "CT" else "HEAD"


def _add_acquisition(ds: Dataset, modality: str) -> None:
    if modality == "CT":
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
    else:
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "8.1"
        ds.EchoTime = "3.7"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "3"


def _add_pixel_module(ds: Dataset, rows: int, columns: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0


def set_pixels(ds: Dataset, stored_rows_cols: npt.NDArray[Any], big_endian: bool = False) -> None:
    """Replace a single-frame dataset's pixels (rows x columns of stored values) and its size tags."""
    rows, columns = stored_rows_cols.shape
    ds.Rows, ds.Columns = rows, columns
    dtype = stored_rows_cols.dtype.newbyteorder(">" if big_endian else "<")
    ds.PixelData = np.ascontiguousarray(stored_rows_cols.astype(dtype)).tobytes()
    ds["PixelData"].VR = "OW"


def _geometry_tags(affine: Affine) -> tuple[list[float], list[float], float]:
    """(IOP, PixelSpacing, slice step) of an affine whose first two columns are orthogonal."""
    col_i, col_j, col_k = (affine[:3, n] for n in range(3))
    spacing_i, spacing_j = float(np.linalg.norm(col_i)), float(np.linalg.norm(col_j))
    row_dir, col_dir = col_i / spacing_i, col_j / spacing_j
    if abs(float(row_dir @ col_dir)) > 1e-9:
        raise ValueError("affine columns 0 and 1 (row and column directions) must be orthogonal")
    iop = [*row_dir.tolist(), *col_dir.tolist()]
    return iop, [spacing_j, spacing_i], float(np.linalg.norm(col_k))


def _instance_numbers(n: int, order: InstanceOrder, rng: np.random.Generator) -> list[int]:
    if order == "ascending":
        return list(range(1, n + 1))
    if order == "reversed":
        return list(range(n, 0, -1))
    return [int(x) + 1 for x in rng.permutation(n)]


def _file_name(naming: FileNaming, position: int, sop_instance: str) -> str:
    if naming == "uid":
        return f"{sop_instance}.dcm"
    if naming == "index":
        return f"{position:04d}.dcm"
    return f"IM{position:06d}"


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _gdcm_available() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def can_encode(transfer_syntax: str) -> bool:
    """Whether :func:`write_series` can produce files in ``transfer_syntax`` with what is installed."""
    syntax = UID(transfer_syntax)
    if syntax in UNCOMPRESSED_SYNTAXES:
        return True
    try:
        from pydicom.pixels.encoders.base import get_encoder

        if get_encoder(syntax).is_available:
            return True
    except (NotImplementedError, ValueError, KeyError):
        pass
    return syntax in _GDCM_SYNTAX_NAMES and _gdcm_available()


def _gdcm_encapsulated_pixels(ds: FileDataset, syntax: UID) -> bytes:
    """Encode ``ds``'s native pixels with GDCM and return the encapsulated Pixel Data value.

    Only the pixel data is taken from GDCM: it rewrites other attributes (it regenerates the per-frame
    positions of enhanced objects, for instance), so the header stays pydicom's.
    """
    import gdcm

    with tempfile.TemporaryDirectory(prefix="vesalius-gdcm-") as scratch:
        native, encoded = Path(scratch) / "native.dcm", Path(scratch) / "encoded.dcm"
        ds.save_as(native, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(native))
        if not reader.Read():
            raise EncoderUnavailableError("GDCM cannot read the native file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_SYNTAX_NAMES[syntax])))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise EncoderUnavailableError(f"GDCM cannot encode {syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(encoded))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise EncoderUnavailableError(f"GDCM cannot write {syntax.name}")
        value = pydicom.dcmread(encoded).PixelData
    return bytes(value)


def _save(ds: FileDataset, path: Path, transfer_syntax: UID) -> None:
    """Save ``ds`` (holding native little-endian pixels) in ``transfer_syntax``."""
    if transfer_syntax in UNCOMPRESSED_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        if transfer_syntax == ExplicitVRBigEndian:
            pixels = np.frombuffer(ds.PixelData, dtype=_pixel_dtype(ds))
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
            ds.set_original_encoding(False, False, ds.original_character_set)
        ds.save_as(path, enforce_file_format=True)
        return
    try:
        from pydicom.pixels.encoders.base import get_encoder

        native_encoder = get_encoder(transfer_syntax).is_available
    except (NotImplementedError, ValueError, KeyError):
        native_encoder = False
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if native_encoder:
        try:
            ds.compress(transfer_syntax, generate_instance_uid=False)
        except RuntimeError:  # e.g. openjpeg needs >= 32 x 32 pixels for its 6 resolutions
            if transfer_syntax not in _GDCM_SYNTAX_NAMES or not _gdcm_available():
                raise
        else:
            ds.save_as(path, enforce_file_format=True)
            return
    if transfer_syntax in _GDCM_SYNTAX_NAMES and _gdcm_available():
        encapsulated = _gdcm_encapsulated_pixels(ds, transfer_syntax)
        ds.PixelData = encapsulated
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(path, enforce_file_format=True)
        return
    raise EncoderUnavailableError(f"no encoder installed for {transfer_syntax.name}")


def _pixel_dtype(ds: Dataset) -> np.dtype[Any]:
    return np.dtype("<i2") if ds.PixelRepresentation == 1 else np.dtype("<u2")


# --------------------------------------------------------------------------------------------------
# Single-frame series
# --------------------------------------------------------------------------------------------------


def write_series(
    folder: Path | str,
    array_ijk: npt.ArrayLike,
    affine_lps: npt.ArrayLike,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float | None = None,
    signed: bool | None = None,
    shuffle: bool = True,
    instance_numbers: InstanceOrder = "random",
    skip_slices: Iterable[int] = (),
    tilt_deg: float = 0.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    identity: SeriesIdentity | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_names: FileNaming = "uid",
    slice_thickness: float | None = None,
    mutate: Mutator | None = None,
    seed: int = 0,
) -> WrittenSeries:
    """Write one single-frame series (one file per slice ``k``) into ``folder``.

    ``intercept`` defaults to -1024 for CT and 0 otherwise; ``signed`` (PixelRepresentation) defaults to
    True for CT. MR files carry no Rescale tags when slope is 1 and intercept 0. ``tilt_deg`` shears the
    stack like a CT gantry tilt: slice ``k`` is shifted in-plane against the column direction by
    ``k * step * tan(tilt)`` (the sign dcm2niix estimates as a positive tilt); the returned ``affine``
    is then the sheared, exact geometry.
    ``slice_thickness`` defaults to the slice step. ``file_names``: "uid" (``<SOPInstanceUID>.dcm``),
    "index" (``0003.dcm`` in write order) or "bare" (``IM000003``, no extension).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(array_ijk, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"array_ijk must be 3-D, got shape {values.shape}")
    affine = np.array(affine_lps, dtype=np.float64)
    iop, pixel_spacing, step = _geometry_tags(affine)
    if tilt_deg:
        affine[:3, 2] -= step * math.tan(math.radians(tilt_deg)) * np.asarray(iop[3:])
    intercept = (-1024.0 if modality == "CT" else 0.0) if intercept is None else intercept
    signed = modality == "CT" if signed is None else signed
    stored = _to_stored(values, slope, intercept, signed)
    ident = identity or SeriesIdentity.new(study_uid, series_uid, frame_of_reference_uid)
    syntax = UID(transfer_syntax)
    if not can_encode(syntax):
        raise EncoderUnavailableError(f"no encoder installed for {syntax.name}")

    rng = np.random.default_rng(seed)
    n_slices = values.shape[2]
    numbers = _instance_numbers(n_slices, instance_numbers, rng)
    uids = [generate_uid() for _ in range(n_slices)]
    skipped = set(skip_slices)
    order = [int(k) for k in (rng.permutation(n_slices) if shuffle else range(n_slices))]
    paths: dict[int, Path] = {}
    for position, k in enumerate(order):
        if k in skipped:
            continue
        ds = _file_dataset(_SOP_CLASS.get(modality, CTImageStorage), uids[k], syntax)
        _add_patient_study_series(ds, ident, modality)
        _add_acquisition(ds, modality)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = numbers[k]
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = _ds_list(affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3])
        ds.ImageOrientationPatient = _ds_list(iop)
        ds.PixelSpacing = _ds_list(pixel_spacing)
        ds.SliceThickness = _ds(slice_thickness if slice_thickness is not None else step)
        ds.SliceLocation = _ds(float(np.cross(iop[:3], iop[3:]) @ (affine[:3, 2] * k + affine[:3, 3])))
        if tilt_deg and modality == "CT":
            ds.GantryDetectorTilt = _ds(tilt_deg)
        if modality == "CT" or slope != 1.0 or intercept != 0.0:
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.WindowCenter, ds.WindowWidth = ("40", "400") if modality == "CT" else ("600", "1200")
        _add_pixel_module(ds, values.shape[1], values.shape[0], signed)
        set_pixels(ds, stored[:, :, k].T)
        if mutate is not None:
            mutate(ds, k)
        path = folder / _file_name(file_names, position, uids[k])
        _save(ds, path, syntax)
        paths[k] = path
    return WrittenSeries(
        folder=folder,
        files=[paths[k] for k in sorted(paths)],
        array=values,
        affine=affine,
        identity=ident,
        modality=modality,
        sop_instance_uids=[uids[k] for k in sorted(paths)],
    )


def write_compressed(
    folder: Path | str,
    array_ijk: npt.ArrayLike,
    affine_lps: npt.ArrayLike,
    transfer_syntax: str,
    **kwargs: Any,
) -> WrittenSeries:
    """:func:`write_series` in a compressed transfer syntax; raises EncoderUnavailableError if none."""
    if not can_encode(transfer_syntax):
        raise EncoderUnavailableError(f"no encoder installed for {UID(transfer_syntax).name}")
    return write_series(folder, array_ijk, affine_lps, transfer_syntax=transfer_syntax, **kwargs)


# --------------------------------------------------------------------------------------------------
# Gantry tilt phantom
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TiltedPhantom:
    """A sphere written as a gantry-tilted (sheared) CT series."""

    series: WrittenSeries
    centre_lps: FloatArray
    radius_mm: float
    inside_hu: float
    outside_hu: float

    @property
    def sheared_affine(self) -> Affine:
        return self.series.affine


def sphere_values(
    affine: Affine,
    shape: Sequence[int],
    centre_lps: Sequence[float],
    radius_mm: float,
    inside: float = 1000.0,
    outside: float = 0.0,
) -> FloatArray:
    """Integer-valued sphere sampled at the voxel centres of ``affine``, with a 1 mm linear edge ramp."""
    distance = np.linalg.norm(voxel_centres(affine, shape) - np.asarray(centre_lps), axis=-1)
    fraction = np.clip(radius_mm - distance + 0.5, 0.0, 1.0)
    return np.asarray(np.round(outside + (inside - outside) * fraction), dtype=np.float64)


def gantry_tilted_series(
    folder: Path | str,
    *,
    tilt_deg: float = 15.0,
    iop_tilted: bool = False,
    shape: tuple[int, int, int] = (30, 28, 18),
    pixel_spacing_ij: tuple[float, float] = (0.9, 1.0),
    slice_step: float = 2.0,
    origin: Sequence[float] = (-13.5, -14.0, -17.0),
    radius_mm: float = 6.0,
    **kwargs: Any,
) -> TiltedPhantom:
    """A sphere phantom in a CT series acquired with gantry tilt ``tilt_deg``.

    ``iop_tilted=False``: axial ImageOrientationPatient, slice positions shifted in-plane (towards
    anterior, -y) by ``k * slice_step * tan(tilt)``. ``iop_tilted=True`` (what scanners write): the
    image plane is rotated about the patient's x axis by the tilt and the table moves along z only,
    ``slice_step / cos(tilt)`` per slice. Either way the slice normal spacing is ``slice_step``, the
    stack is sheared by ``tan(tilt)`` and dcm2niix estimates the tilt as ``+tilt_deg`` (the value
    written to GantryDetectorTilt). The sphere is evaluated at the exact (sheared) voxel centres.
    """
    tilt = math.radians(tilt_deg)
    if iop_tilted:
        row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(tilt), -math.sin(tilt)])
        offset = np.array([0.0, 0.0, slice_step / math.cos(tilt)])
    else:
        row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        offset = slice_step * (np.cross(row, col) - math.tan(tilt) * col)
    sheared = np.eye(4)
    sheared[:3, 0] = row * pixel_spacing_ij[0]
    sheared[:3, 1] = col * pixel_spacing_ij[1]
    sheared[:3, 2] = offset
    sheared[:3, 3] = origin
    centre = sheared[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + sheared[:3, 3] + np.array([0.3, -0.2, 0.4])
    values = sphere_values(sheared, shape, centre, radius_mm)
    user_mutate: Mutator | None = kwargs.pop("mutate", None)

    def mark_tilt(ds: Dataset, k: int) -> None:
        ds.GantryDetectorTilt = _ds(tilt_deg)
        if user_mutate is not None:
            user_mutate(ds, k)

    written = write_series(folder, values, sheared, modality="CT", mutate=mark_tilt, **kwargs)
    return TiltedPhantom(written, np.asarray(centre), radius_mm, 1000.0, 0.0)


# --------------------------------------------------------------------------------------------------
# Multi-frame (Enhanced CT / MR)
# --------------------------------------------------------------------------------------------------


def _item(**attributes: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def write_multiframe(
    folder: Path | str,
    array_ijk: npt.ArrayLike,
    affine_lps: npt.ArrayLike,
    *,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float | None = None,
    signed: bool | None = None,
    frame_order: InstanceOrder = "ascending",
    geometry_in: GeometryPlacement = "shared",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    identity: SeriesIdentity | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_name: str | None = None,
    seed: int = 0,
) -> WrittenSeries:
    """Write the volume as one Enhanced CT/MR Image Storage object with functional groups.

    Frame ``f`` holds slice ``k = frame_slices[f]`` where the frame order is ascending, reversed or
    random; PlanePositionSequence is per frame; PlaneOrientationSequence and PixelMeasuresSequence are
    in the shared or the per-frame groups (``geometry_in``); PixelValueTransformationSequence is shared.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values = np.asarray(array_ijk, dtype=np.float64)
    affine = np.asarray(affine_lps, dtype=np.float64)
    iop, pixel_spacing, step = _geometry_tags(affine)
    intercept = (-1024.0 if modality == "CT" else 0.0) if intercept is None else intercept
    signed = modality == "CT" if signed is None else signed
    stored = _to_stored(values, slope, intercept, signed)
    ident = identity or SeriesIdentity.new(study_uid, series_uid, frame_of_reference_uid)
    syntax = UID(transfer_syntax)
    n_slices = values.shape[2]
    rng = np.random.default_rng(seed)
    frame_slices = {
        "ascending": list(range(n_slices)),
        "reversed": list(range(n_slices - 1, -1, -1)),
        "random": [int(k) for k in rng.permutation(n_slices)],
    }[frame_order]

    sop_instance = generate_uid()
    ds = _file_dataset(_ENHANCED_SOP_CLASS[modality], sop_instance, syntax)
    _add_patient_study_series(ds, ident, modality)
    _add_acquisition(ds, modality)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = _STUDY_DATE.strftime("%Y%m%d") + "093100"
    ds.NumberOfFrames = n_slices
    _add_pixel_module(ds, values.shape[1], values.shape[0], signed)
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dimension_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dimension_uid,
                DimensionIndexPointer=0x00209056,
                FunctionalGroupPointer=0x00209111,
            ),
            _item(
                DimensionOrganizationUID=dimension_uid,
                DimensionIndexPointer=0x00209057,
                FunctionalGroupPointer=0x00209111,
            ),
        ]
    )

    def orientation() -> Dataset:
        return _item(ImageOrientationPatient=_ds_list(iop))

    def measures() -> Dataset:
        return _item(PixelSpacing=_ds_list(pixel_spacing), SliceThickness=_ds(step), SpacingBetweenSlices=_ds(step))

    shared = Dataset()
    if geometry_in == "shared":
        shared.PlaneOrientationSequence = DicomSequence([orientation()])
        shared.PixelMeasuresSequence = DicomSequence([measures()])
    shared.PixelValueTransformationSequence = DicomSequence(
        [
            _item(
                RescaleIntercept=_ds(intercept),
                RescaleSlope=_ds(slope),
                RescaleType="HU" if modality == "CT" else "US",
            )
        ]
    )
    shared.FrameVOILUTSequence = DicomSequence([_item(WindowCenter="40", WindowWidth="400")])
    frame_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    if modality == "CT":
        shared.CTImageFrameTypeSequence = DicomSequence([_item(FrameType=frame_type)])
    else:
        shared.MRImageFrameTypeSequence = DicomSequence([_item(FrameType=frame_type)])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for k in frame_slices:
        frame = Dataset()
        frame.FrameContentSequence = DicomSequence(
            [_item(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1])]
        )
        frame.PlanePositionSequence = DicomSequence(
            [_item(ImagePositionPatient=_ds_list(affine[:3, 2] * k + affine[:3, 3]))]
        )
        if geometry_in == "per_frame":
            frame.PlaneOrientationSequence = DicomSequence([orientation()])
            frame.PixelMeasuresSequence = DicomSequence([measures()])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)

    frames = np.stack([stored[:, :, k].T for k in frame_slices])  # (frames, rows, columns)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds["PixelData"].VR = "OW"
    path = folder / (file_name or f"{sop_instance}.dcm")
    _save(ds, path, syntax)
    return WrittenSeries(
        folder=folder,
        files=[path],
        array=values,
        affine=affine,
        identity=ident,
        modality=modality,
        sop_instance_uids=[sop_instance],
    )


# --------------------------------------------------------------------------------------------------
# Junk and damaged files
# --------------------------------------------------------------------------------------------------


def write_text_file(path: Path | str, text: str = "not a DICOM file\n") -> Path:
    path = Path(path)
    path.write_text(text)
    return path


def truncate_copy(source: Path | str, destination: Path | str, keep_bytes: int) -> Path:
    """Copy the first ``keep_bytes`` of ``source`` (e.g. 400 cuts a file inside its header)."""
    destination = Path(destination)
    destination.write_bytes(Path(source).read_bytes()[:keep_bytes])
    return destination


def truncate_pixel_data(path: Path | str, drop_bytes: int = 64) -> Path:
    """Cut the last ``drop_bytes`` off a file whose last element is its pixel data."""
    path = Path(path)
    path.write_bytes(path.read_bytes()[:-drop_bytes])
    return path


def corrupt_compressed_pixels(path: Path | str, transfer_syntax: str = JPEG2000Lossless) -> Path:
    """Replace a file's pixel data with one encapsulated fragment of garbage in ``transfer_syntax``."""
    from pydicom.encaps import encapsulate

    path = Path(path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 2])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def copy_into(source: Path | str, folder: Path | str, name: str | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / (name or Path(source).name)
    shutil.copyfile(source, destination)
    return destination


def scratch_folder(prefix: str = "vesalius-dicom-") -> Path:
    """A fresh temporary folder (for hypothesis tests, where function-scoped fixtures do not reset)."""
    return Path(tempfile.mkdtemp(prefix=prefix))
