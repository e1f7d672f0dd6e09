"""One image plane of a DICOM object (a single-frame instance or one frame of a multi-frame one).

Everything the geometry and pixel steps need is pulled out of the header once, so the datasets
themselves can be dropped after discovery.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


@dataclass(frozen=True)
class Frame:
    """One plane of pixels with its place in the patient, as the header states it."""

    path: Path
    frame_index: int | None
    """Index into a multi-frame object's frames; None for a single-frame instance."""
    sop_instance_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    position: tuple[float, float, float] | None
    """Image Position (Patient) of the centre of the first transmitted pixel, LPS mm."""
    orientation: tuple[float, float, float, float, float, float] | None
    """Image Orientation (Patient): row direction then column direction cosines."""
    pixel_spacing: tuple[float, float] | None
    """(between rows, between columns) in mm, as the DICOM attribute orders them."""
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float
    intercept: float
    instance_number: int | None
    transfer_syntax_uid: str
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    """0 unsigned, 1 two's complement."""
    pixel_data_offset: int | None = None
    """Byte offset of the Pixel Data element in the file, for reading native pixels without a second parse."""

    @property
    def row_direction(self) -> npt.NDArray[np.float64]:
        assert self.orientation is not None
        return np.asarray(self.orientation[:3], dtype=np.float64)

    @property
    def column_direction(self) -> npt.NDArray[np.float64]:
        assert self.orientation is not None
        return np.asarray(self.orientation[3:], dtype=np.float64)


def _floats(value: Any, count: int) -> Any:
    """A tuple of ``count`` floats, or None when the attribute is absent or malformed."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _unconverted(dataset: Dataset, keyword: str) -> RawDataElement | DataElement | None:
    """The element as stored, without pydicom's value conversion (raw bytes until something converts it)."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in dataset:
        return None
    return dataset.get_item(tag)


def _decimals(dataset: Dataset, keyword: str) -> list[float] | None:
    """A DS/IS attribute's numbers, parsed from the raw bytes when pydicom has not converted them yet.

    pydicom's DSfloat conversion dominates header reading for a CT series; this skips it.
    """
    element = _unconverted(dataset, keyword)
    if element is None:
        return None
    value = element.value
    parts: list[Any]
    if isinstance(element, RawDataElement) and isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \x00")
        parts = text.split("\\") if text else []
    elif value is None or value == "":
        parts = []
    else:
        parts = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    try:
        return [float(part) for part in parts] if parts else None
    except (TypeError, ValueError):
        return None


def _unsigned_short(dataset: Dataset, keyword: str) -> int | None:
    """A US attribute, unpacked from the raw bytes when pydicom has not converted it yet."""
    element = _unconverted(dataset, keyword)
    if element is None:
        return None
    value = element.value
    if isinstance(element, RawDataElement) and isinstance(value, bytes):
        if len(value) < 2:
            return None
        little_endian = dataset.original_encoding[1] is not False
        return int(struct.unpack("<H" if little_endian else ">H", value[:2])[0])
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if value else None
    return None if value is None or value == "" else int(value)


def _decimal(dataset: Dataset, keyword: str) -> float | None:
    values = _decimals(dataset, keyword)
    return values[0] if values else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _first_number(*values: Any, default: float) -> float:
    for value in values:
        number = _float(value)
        if number is not None:
            return number
    return default


def _first_item(dataset: Dataset | None, keyword: str) -> Dataset | None:
    if dataset is None:
        return None
    sequence = dataset.get(keyword)
    if sequence is None or len(sequence) == 0:
        return None
    item: Dataset = sequence[0]
    return item


def _group_value(shared: Dataset | None, per_frame: Dataset | None, sequence: str, keyword: str) -> Any:
    """A functional-group attribute: the per-frame value wins over the shared one."""
    for group in (per_frame, shared):
        item = _first_item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _instance_number(dataset: Dataset) -> int | None:
    number = _decimal(dataset, "InstanceNumber")
    return None if number is None else int(number)


def uid_value(dataset: Dataset, keyword: str) -> str:
    """A UI attribute as text, read from the raw bytes when pydicom has not converted it yet."""
    element = _unconverted(dataset, keyword)
    if element is None:
        return ""
    value = element.value
    if isinstance(element, RawDataElement) and isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value)


def sop_instance_uid(dataset: Dataset, path: Path) -> str:
    """The SOP Instance UID, from the file meta when the data set lacks it (as some anonymisers leave it)."""
    uid = uid_value(dataset, "SOPInstanceUID")
    if not uid and hasattr(dataset, "file_meta"):
        uid = str(dataset.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    return uid or f"file:{path}"


def frames_of(dataset: Dataset, path: Path, pixel_data_offset: int | None = None) -> list[Frame]:
    """All frames of one DICOM instance, with geometry taken from functional groups when present."""
    number_of_frames = int(_decimal(dataset, "NumberOfFrames") or 1)
    bits_allocated = _unsigned_short(dataset, "BitsAllocated") or 16
    common: dict[str, Any] = {
        "path": path,
        "sop_instance_uid": sop_instance_uid(dataset, path),
        "rows": _unsigned_short(dataset, "Rows") or 0,
        "columns": _unsigned_short(dataset, "Columns") or 0,
        "samples_per_pixel": _unsigned_short(dataset, "SamplesPerPixel") or 1,
        "instance_number": _instance_number(dataset),
        "transfer_syntax_uid": str(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")),
        "spacing_between_slices": _decimal(dataset, "SpacingBetweenSlices"),
        "bits_allocated": bits_allocated,
        "bits_stored": _unsigned_short(dataset, "BitsStored") or bits_allocated,
        "pixel_representation": _unsigned_short(dataset, "PixelRepresentation") or 0,
        "pixel_data_offset": pixel_data_offset,
    }
    top_spacing = _decimals(dataset, "PixelSpacing") or _decimals(dataset, "ImagerPixelSpacing")
    if "PerFrameFunctionalGroupsSequence" not in dataset and "SharedFunctionalGroupsSequence" not in dataset:
        frame = {
            **common,
            "position": _floats(_decimals(dataset, "ImagePositionPatient"), 3),
            "orientation": _floats(_decimals(dataset, "ImageOrientationPatient"), 6),
            "pixel_spacing": _floats(top_spacing, 2),
            "slice_thickness": _decimal(dataset, "SliceThickness"),
            "slope": _first_number(_decimal(dataset, "RescaleSlope"), default=1.0),
            "intercept": _first_number(_decimal(dataset, "RescaleIntercept"), default=0.0),
        }
        if number_of_frames == 1:
            return [Frame(frame_index=None, **frame)]
        return [Frame(frame_index=index, **frame) for index in range(number_of_frames)]

    shared = _first_item(dataset, "SharedFunctionalGroupsSequence")
    per_frame_groups = dataset.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    for index in range(number_of_frames):
        per_frame = per_frame_groups[index] if index < len(per_frame_groups) else None
        spacing = _group_value(shared, per_frame, "PixelMeasuresSequence", "PixelSpacing") or top_spacing
        slope = _group_value(shared, per_frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _group_value(shared, per_frame, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            Frame(
                frame_index=index,
                position=_floats(_group_value(shared, per_frame, "PlanePositionSequence", "ImagePositionPatient"), 3),
                orientation=_floats(
                    _group_value(shared, per_frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
                ),
                pixel_spacing=_floats(spacing, 2),
                slice_thickness=_float(_group_value(shared, per_frame, "PixelMeasuresSequence", "SliceThickness")),
                slope=_first_number(slope, _decimal(dataset, "RescaleSlope"), default=1.0),
                intercept=_first_number(intercept, _decimal(dataset, "RescaleIntercept"), default=0.0),
                **common,
            )
        )
    return frames
