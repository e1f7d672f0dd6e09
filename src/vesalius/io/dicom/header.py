"""A fast path for reading the header attributes Vesalius needs, for the common encoding only.

Nearly every DICOM image today encodes its data set in Explicit VR Little Endian (all the compressed
transfer syntaxes do too). For those files this module walks the elements with ``struct`` alone, keeps the
few top-level attributes discovery uses as pydicom raw elements (converted lazily by pydicom itself, with the
file's character set), and skips everything else, nested sequences included, without building a pydicom
``Dataset`` per sequence item. That is where pydicom spends most of its parse time; this path is about
three times faster on a 120-file MR study.

Anything unusual returns None, and the caller falls back to pydicom's full parser: another encoding,
functional groups (enhanced multi-frame), a DICOMDIR, undefined-length values other than sequences, a header
longer than the bytes given, or no Pixel Data element.
"""

from __future__ import annotations

import struct

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag, Tag

WANTED_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "SliceThickness",
    "SpacingBetweenSlices",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
)
WANTED = frozenset(int(t) for t in (tag_for_keyword(k) for k in WANTED_KEYWORDS) if t is not None)
FALL_BACK = frozenset({0x52009229, 0x52009230, 0x00041220})
"""Shared/per-frame functional groups and the DICOMDIR record sequence: pydicom parses those files."""
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
NOT_EXPLICIT_LITTLE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"})
_HEADER = struct.Struct("<HH2s")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<I")
_ITEM = struct.Struct("<HHI")


class _UnsupportedError(Exception):
    """This file needs pydicom's full parser."""


def _element(data: bytes, position: int) -> tuple[int, str, int, int]:
    """(tag, VR, value length, value position) of the explicit-VR element at ``position``."""
    group, element, vr = _HEADER.unpack_from(data, position)
    if not vr.isalpha():
        raise _UnsupportedError
    if vr in _LONG_VRS:
        return (group << 16) | element, vr.decode(), _LONG.unpack_from(data, position + 8)[0], position + 12
    return (group << 16) | element, vr.decode(), _SHORT.unpack_from(data, position + 6)[0], position + 8


def _skip_sequence(data: bytes, position: int) -> int:
    """Position after an undefined-length sequence whose items start at ``position``."""
    while True:
        group, element, length = _ITEM.unpack_from(data, position)
        tag, position = (group << 16) | element, position + 8
        if tag == SEQUENCE_END:
            return position
        if tag != ITEM:
            raise _UnsupportedError
        position = position + length if length != UNDEFINED else _skip_item(data, position)


def _skip_item(data: bytes, position: int) -> int:
    """Position after an undefined-length item (its elements, then the item delimiter)."""
    while True:
        group, element = struct.unpack_from("<HH", data, position)
        if (group << 16) | element == ITEM_END:
            return position + 8
        position = _skip_element(data, position)


def _skip_element(data: bytes, position: int) -> int:
    _, vr, length, value = _element(data, position)
    if length != UNDEFINED:
        return value + length
    if vr != "SQ":
        raise _UnsupportedError
    return _skip_sequence(data, value)


def _file_meta(data: bytes) -> tuple[FileMetaDataset, int]:
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _UnsupportedError
    meta, position = FileMetaDataset(), 132
    while position + 8 <= len(data) and data[position : position + 2] == b"\x02\x00":
        tag, vr, length, value = _element(data, position)
        if length == UNDEFINED:
            raise _UnsupportedError
        meta[tag] = RawDataElement(Tag(tag), vr, length, data[value : value + length], value, False, True)
        position = value + length
    if "TransferSyntaxUID" not in meta:
        raise _UnsupportedError
    return meta, position


def parse_header(data: bytes) -> tuple[Dataset, int] | None:
    """(data set with the wanted attributes, Pixel Data offset), or None where pydicom must parse."""
    try:
        meta, position = _file_meta(data)
        if str(meta.TransferSyntaxUID) in NOT_EXPLICIT_LITTLE:
            return None
        raw: dict[BaseTag, RawDataElement | DataElement] = {}
        while position + 8 <= len(data):
            tag, vr, length, value = _element(data, position)
            if tag == PIXEL_DATA:
                dataset = Dataset(raw)
                dataset.file_meta = meta
                dataset.set_original_encoding(False, True, None)
                return dataset, position
            if tag in FALL_BACK:
                return None
            if tag in WANTED:
                if length == UNDEFINED or value + length > len(data):
                    return None
                raw[Tag(tag)] = RawDataElement(Tag(tag), vr, length, data[value : value + length], value, False, True)
                position = value + length
            else:
                position = _skip_element(data, position)
    except (_UnsupportedError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None
