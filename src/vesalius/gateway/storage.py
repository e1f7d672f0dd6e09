"""Durable storage of received DICOM instances: one file per SOP instance, fsync-ed before we say "stored".

Layout: ``root/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` in the DICOM file format, in the
transfer syntax the instance arrived in. A file is written to a temporary name in its final folder, flushed and
fsync-ed, renamed into place with ``os.replace`` and the folder is fsync-ed: a crash leaves either nothing or the
whole file, never a half-written instance under its real name.

Received bytes are checked before anything is written (:func:`check_encoded`): the whole data set is parsed (pixel
data read as bytes, never decoded), every element's value must fit in the bytes received and decode, the data set
must end where its last element ends, and the pixel data must have the length its header gives (native transfer
syntaxes) or be well-formed fragments closed by a sequence delimiter (encapsulated ones). The attributes the
:class:`StoredInstance` record needs are read and checked before writing too, so a refused instance leaves nothing
on disk and a stored one always gets its record.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, DeflatedExplicitVRLittleEndian

from vesalius.core.errors import InputError, VesaliusError

__all__ = [
    "InstanceStore",
    "MalformedInstanceError",
    "StorageFullError",
    "StoredInstance",
    "UnsafeUidError",
    "check_encoded",
    "check_uid",
]

LOGGER = logging.getLogger(__name__)
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_UID_LENGTH = 64
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = BaseTag(0x7FE00010)
_FLOAT_PIXEL_DATA = BaseTag(0x7FE00008)
_DOUBLE_FLOAT_PIXEL_DATA = BaseTag(0x7FE00009)
_PIXEL_DATA_PROVIDER_URL = BaseTag(0x00287FE0)
_ITEM = 0xFFFEE000


class UnsafeUidError(InputError):
    """A UID that would become a path part is missing or not a DICOM UID (digits and dots only)."""

    def __init__(self, attribute: str, value: object) -> None:
        self.attribute = attribute
        shown = repr(value)[:80]
        super().__init__(f"{attribute} {shown} is not a DICOM UID (1-64 digits and dots); instance refused")


class MalformedInstanceError(InputError):
    """Received bytes that are not a whole, consistent DICOM data set (truncated, or an unusable header value)."""

    def __init__(self, sop_instance_uid: str, problem: str) -> None:
        self.sop_instance_uid = sop_instance_uid
        self.problem = problem
        super().__init__(f"SOP instance {sop_instance_uid}: {problem}; instance refused")


class StorageFullError(VesaliusError):
    """The storage folder has less free space than the configured minimum."""


def check_uid(attribute: str, value: object) -> str:
    """Return ``value`` as a UID string, or raise: UIDs name folders and files, so '..' or '/' must never pass."""
    text = str(value).strip().rstrip("\0") if value is not None else ""
    if not text or len(text) > _MAX_UID_LENGTH or _UID_PATTERN.fullmatch(text) is None:
        raise UnsafeUidError(attribute, value)
    return text


@dataclass(frozen=True)
class StoredInstance:
    """One instance safely on disk, with the series attributes that study completion and routing need."""

    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    duplicate: bool
    """True when the SOP Instance UID was already stored: nothing was written, ``path`` is the first copy."""
    modality: str = ""
    series_description: str = ""
    body_part: str = ""
    rows: int | None = None
    columns: int | None = None


class InstanceStore:
    """Writes instances under ``root`` and refuses to when less than ``min_free_bytes`` is free."""

    def __init__(self, root: Path | str, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_bytes)
        self.root.mkdir(parents=True, exist_ok=True)

    def free_bytes(self) -> int:
        return int(shutil.disk_usage(self.root).free)

    def has_room(self) -> bool:
        """True when at least ``min_free_bytes`` is free where instances are written."""
        return self.free_bytes() >= self.min_free_bytes

    def store(self, dataset: Dataset) -> StoredInstance:
        """Write a decoded dataset in its original transfer syntax (taken from its file meta)."""
        meta = getattr(dataset, "file_meta", None)
        syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
        if syntax is None:
            raise InputError(f"SOP instance {dataset.get('SOPInstanceUID', '?')}: no TransferSyntaxUID in file meta")

        def write(handle: BinaryIO) -> None:
            copy = Dataset(dataset)
            copy.file_meta = _file_meta(dataset, str(syntax))
            copy.preamble = b"\0" * 128
            copy.save_as(handle, enforce_file_format=True)

        return self._store(_Header.of(dataset, str(syntax)), write)

    def store_encoded(self, encoded: bytes) -> StoredInstance:
        """Write a complete DICOM file (preamble, file meta, data set) byte for byte, as received from the network.

        The bytes are checked first (:func:`check_encoded`); a truncated or inconsistent file raises
        :class:`MalformedInstanceError` (an :class:`InputError`) and nothing is written.
        """
        header = _Header.of(check_encoded(encoded), None)

        def write(handle: BinaryIO) -> None:
            handle.write(encoded)

        return self._store(header, write)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; every part is checked to be a UID first."""
        return (
            self.root
            / check_uid("StudyInstanceUID", study_uid)
            / check_uid("SeriesInstanceUID", series_uid)
            / f"{check_uid('SOPInstanceUID', sop_instance_uid)}.dcm"
        )

    def _store(self, header: _Header, write: Callable[[BinaryIO], None]) -> StoredInstance:
        path = self.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
        if path.exists():
            LOGGER.info("SOP instance %s already stored; duplicate not written", header.sop_instance_uid)
            return header.record(path, duplicate=True)
        if not self.has_room():
            raise StorageFullError(
                f"{self.root}: {self.free_bytes()} bytes free, below the minimum of {self.min_free_bytes}"
            )
        record = header.record(path, duplicate=False)  # built before writing: nothing below can refuse the instance
        _make_dirs_durably(path.parent, self.root)
        _write_atomically(path, write)
        return record


def _file_meta(dataset: Dataset, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset(dataset.file_meta) if getattr(dataset, "file_meta", None) is not None else FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


@dataclass(frozen=True)
class _Header:
    """Every attribute a :class:`StoredInstance` needs, read and checked before anything is written."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    series_description: str
    body_part: str
    rows: int | None
    columns: int | None

    @classmethod
    def of(cls, dataset: Dataset, syntax: str | None) -> _Header:
        """Read the record's attributes; UIDs must be safe path parts, Rows and Columns whole numbers 0-65535."""
        study = check_uid("StudyInstanceUID", dataset.get("StudyInstanceUID"))
        series = check_uid("SeriesInstanceUID", dataset.get("SeriesInstanceUID"))
        sop = check_uid("SOPInstanceUID", dataset.get("SOPInstanceUID"))
        if syntax is None:
            meta = getattr(dataset, "file_meta", None)
            syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        try:
            texts = [_text(dataset, keyword) for keyword in _TEXT_KEYWORDS]
        except Exception as error:  # a value that does not decode: the header is corrupt
            raise MalformedInstanceError(sop, f"a header value does not decode ({type(error).__name__})") from error
        return cls(
            study_uid=study,
            series_uid=series,
            sop_instance_uid=sop,
            sop_class_uid=texts[0],
            transfer_syntax=syntax,
            modality=texts[1],
            series_description=texts[2],
            body_part=texts[3],
            rows=_dimension(dataset, "Rows", sop),
            columns=_dimension(dataset, "Columns", sop),
        )

    def record(self, path: Path, *, duplicate: bool) -> StoredInstance:
        return StoredInstance(
            path=path,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            transfer_syntax=self.transfer_syntax,
            duplicate=duplicate,
            modality=self.modality,
            series_description=self.series_description,
            body_part=self.body_part,
            rows=self.rows,
            columns=self.columns,
        )


_TEXT_KEYWORDS = ("SOPClassUID", "Modality", "SeriesDescription", "BodyPartExamined")


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value)


def _whole_number(dataset: Dataset, keyword: str) -> int | None:
    """An integer attribute's value, None when absent or empty; raises ValueError/TypeError on anything else."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{type(value).__name__} value")


def _dimension(dataset: Dataset, keyword: str, sop: str) -> int | None:
    try:
        number = _whole_number(dataset, keyword)
    except Exception as error:
        raise MalformedInstanceError(sop, f"{keyword} is not a number ({type(error).__name__})") from error
    if number is not None and not 0 <= number <= 0xFFFF:
        raise MalformedInstanceError(sop, f"{keyword} {number} is outside 0-65535")
    return number


def check_encoded(encoded: bytes) -> Dataset:
    """Parse received Part 10 bytes completely and check that they are one whole, consistent data set.

    Returns the parsed dataset (pixel data as raw bytes, never decoded). Raises :class:`InputError` when the bytes
    are not DICOM at all, and :class:`MalformedInstanceError` (naming the SOP Instance UID when it can be read)
    when an element's value runs past the end of the bytes or does not decode, the data set does not end where its
    last element ends, image pixel data is missing, native pixel data does not have Rows x Columns x Samples per
    Pixel x bytes per sample x Number of Frames bytes (packed bits for Bits Allocated 1), or encapsulated pixel data
    is not a run of items closed by a sequence delimiter.
    """
    stream = io.BytesIO(encoded)
    try:
        dataset = pydicom.dcmread(stream, force=False, defer_size=None)
    except Exception as error:  # untrusted bytes: the parser may fail in many ways, all mean "cannot understand"
        uid = _uid_from_meta(encoded)
        where = f"SOP instance {uid}: " if uid != "?" else ""
        raise InputError(f"{where}received data set cannot be parsed as DICOM: {error}") from error
    sop = _readable_uid(dataset)
    if len(dataset) == 0:
        raise MalformedInstanceError(sop, "truncated: the file has no data set after its file meta")
    meta = getattr(dataset, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    if not syntax.is_transfer_syntax:
        raise MalformedInstanceError(sop, f"the file meta has no known Transfer Syntax UID ({str(syntax)[:64]!r})")
    _check_structure(encoded, dataset, sop)
    _check_pixel_data(dataset, syntax, sop)
    return dataset


def _uid_from_meta(encoded: bytes) -> str:
    """The file meta's Media Storage SOP Instance UID, for the message when the data set cannot be parsed; '?'."""
    walker = _Walker(encoded, explicit=True, little=True, sop="?")
    offset = _META_START
    try:
        while offset + 8 <= len(encoded) and encoded[offset : offset + 2] == b"\x02\x00":
            end = walker.element(offset, len(encoded))
            if encoded[offset + 2 : offset + 4] == b"\x03\x00":  # (0002,0003): a short VR, so the value is at +8
                return check_uid("MediaStorageSOPInstanceUID", encoded[offset + 8 : end].decode("ascii"))
            offset = end
    except (InputError, UnicodeDecodeError):
        pass
    return "?"


def _readable_uid(dataset: Dataset) -> str:
    """The SOP Instance UID for messages: the data set's, else the file meta's, else '?' (never other values)."""
    meta = getattr(dataset, "file_meta", None)
    candidates = [dataset.get_item(BaseTag(0x00080018)), meta.get("MediaStorageSOPInstanceUID") if meta else None]
    for candidate in candidates:
        try:
            value = candidate.value if isinstance(candidate, RawDataElement) else candidate
            if isinstance(value, bytes):
                value = value.decode("ascii")
            return check_uid("SOPInstanceUID", value)
        except Exception:
            continue
    return "?"


def _check_structure(encoded: bytes, dataset: Dataset, sop: str) -> None:
    """Walk every element header of the file: each value, item and delimiter must fit where it is, and the last
    element must end at the last byte received. pydicom itself stops silently at a cut inside an element header
    and keeps a short last value, so this walk is what finds a truncation; it reads headers only, never values."""
    offset = _META_START
    meta_walker = _Walker(encoded, explicit=True, little=True, sop=sop)
    while offset + 8 <= len(encoded) and encoded[offset : offset + 2] == b"\x02\x00":  # group 0002: the file meta
        offset = meta_walker.element(offset, len(encoded))
    data: bytes = encoded
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        try:
            data, offset = zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded[offset:]), 0
        except zlib.error as error:
            raise MalformedInstanceError(sop, f"the deflated data set does not inflate ({error})") from error
    implicit, little = _encoding_read(dataset)
    _Walker(data, explicit=not implicit, little=little, sop=sop).elements(offset, len(data))


def _encoding_read(dataset: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) as the data set was actually encoded: pydicom detects an implicit VR data set
    under an explicit VR transfer syntax (and reads it so), and records that on the elements it read."""
    for raw in dataset.elements():
        if isinstance(raw, RawDataElement):
            return bool(raw.is_implicit_VR), bool(raw.is_little_endian)
    implicit, little = dataset.original_encoding[:2]
    return bool(implicit), little is not False


_META_START = 132  # the 128-byte preamble and "DICM"
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD


class _Walker:
    """Skips DICOM elements by their headers (PS3.5 7.1, 7.5), checking that every length fits its container."""

    def __init__(self, data: bytes, *, explicit: bool, little: bool, sop: str) -> None:
        self.data, self.explicit, self.little, self.sop = data, explicit, little, sop
        order = "<" if little else ">"
        self.tag_format = struct.Struct(f"{order}HH")
        self.short_length = struct.Struct(f"{order}H")
        self.long_length = struct.Struct(f"{order}L")
        self.item_format = struct.Struct(f"{order}HHL")

    def fail(self, problem: str) -> MalformedInstanceError:
        return MalformedInstanceError(self.sop, problem)

    def elements(self, offset: int, end: int, *, until_delimiter: bool = False) -> int:
        """Skip the elements from ``offset`` to exactly ``end``, or (an undefined-length item) past its item
        delimiter. Returns where they end."""
        while offset < end:
            if offset + 8 > end:
                raise self.fail(f"truncated: an element header is cut at byte {offset}")
            group, element = self.tag_format.unpack_from(self.data, offset)
            if until_delimiter and (group << 16 | element) == _ITEM_DELIMITER:
                return offset + 8
            offset = self.element(offset, end)
        if until_delimiter:
            raise self.fail("truncated: a sequence item has no item delimiter")
        return offset

    def element(self, offset: int, end: int) -> int:
        """Skip one element (its items too, for a sequence) that must fit before ``end``; returns where it ends."""
        group, number = self.tag_format.unpack_from(self.data, offset)
        tag = BaseTag(group << 16 | number)
        if group == 0xFFFE:
            raise self.fail(f"an item or delimiter tag {tag} where an element belongs, at byte {offset}")
        vr = self.data[offset + 4 : offset + 6] if self.explicit else b""
        length: int
        if vr in _LONG_VRS:
            if offset + 12 > end:
                raise self.fail(f"truncated: the header of element {tag} is cut")
            (length,) = self.long_length.unpack_from(self.data, offset + 8)
            offset += 12
        elif self.explicit:
            (length,) = self.short_length.unpack_from(self.data, offset + 6)
            offset += 8
        else:
            (length,) = self.long_length.unpack_from(self.data, offset + 4)
            offset += 8
        if length != _UNDEFINED_LENGTH and offset + length > end:
            raise self.fail(f"truncated: element {tag} declares {length} bytes, {max(end - offset, 0)} remain")
        if tag == _PIXEL_DATA and length == _UNDEFINED_LENGTH and vr != b"UN":
            return self.fragments(offset, end, tag)
        if vr == b"UN" and length == _UNDEFINED_LENGTH:  # a sequence in implicit VR little endian (PS3.5 6.2.2)
            inner = _Walker(self.data, explicit=False, little=True, sop=self.sop)
            return inner.sequence(offset, end, tag, delimited=True)
        if length == _UNDEFINED_LENGTH or vr == b"SQ" or (not self.explicit and _is_sequence(tag)):
            stop = end if length == _UNDEFINED_LENGTH else offset + length
            return self.sequence(offset, stop, tag, delimited=length == _UNDEFINED_LENGTH)
        return offset + length

    def sequence(self, offset: int, stop: int, tag: BaseTag, *, delimited: bool) -> int:
        """Skip a sequence's items: up to ``stop`` exactly, or past the sequence delimiter when ``delimited``."""
        while delimited or offset < stop:
            if offset + 8 > stop:
                raise self.fail(f"truncated: sequence {tag} is cut inside an item header")
            group, element, length = self.item_format.unpack_from(self.data, offset)
            offset += 8
            item_tag = group << 16 | element
            if item_tag == _SEQUENCE_DELIMITER and delimited:
                return offset
            if item_tag != _ITEM:
                raise self.fail(f"sequence {tag}: no item at byte {offset - 8}")
            if length == _UNDEFINED_LENGTH:
                offset = self.elements(offset, stop, until_delimiter=True)
            elif offset + length > stop:
                raise self.fail(f"truncated: an item of sequence {tag} runs past its end")
            else:
                offset = self.elements(offset, offset + length)
        return offset

    def fragments(self, offset: int, end: int, tag: BaseTag) -> int:
        """Skip encapsulated pixel data: items of defined length (opaque bytes) up to the sequence delimiter."""
        while True:
            if offset + 8 > end:
                raise self.fail(f"truncated: encapsulated {tag} has no sequence delimiter")
            group, element, length = self.item_format.unpack_from(self.data, offset)
            offset += 8
            if (group << 16 | element) == _SEQUENCE_DELIMITER:
                return offset
            if (group << 16 | element) != _ITEM or length == _UNDEFINED_LENGTH:
                raise self.fail(f"encapsulated {tag}: no fragment item at byte {offset - 8}")
            if offset + length > end:
                raise self.fail(f"truncated: a fragment of encapsulated {tag} runs past the end")
            offset += length


def _is_sequence(tag: BaseTag) -> bool:
    """In implicit VR only the data dictionary tells a sequence; private and unknown tags are opaque values."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _check_pixel_data(dataset: Dataset, syntax: UID, sop: str) -> None:
    present = [tag for tag in (_PIXEL_DATA, _FLOAT_PIXEL_DATA, _DOUBLE_FLOAT_PIXEL_DATA) if tag in dataset]
    if not present:
        sop_class = UID(str(dataset.get("SOPClassUID", "")))
        is_image = "Image Storage" in sop_class.name or "Rows" in dataset
        if is_image and _PIXEL_DATA_PROVIDER_URL not in dataset:
            raise MalformedInstanceError(sop, "truncated: an image with no Pixel Data")
        return
    for tag in present:
        raw = dataset.get_item(tag)
        value = dataset[tag].value
        undefined = raw.length == _UNDEFINED_LENGTH if isinstance(raw, RawDataElement) else raw.is_undefined_length
        if tag == _PIXEL_DATA and syntax.is_encapsulated:
            if not undefined:
                raise MalformedInstanceError(sop, "encapsulated Pixel Data with a defined length")
            _check_fragments(value, syntax.is_little_endian, sop)
        else:
            _check_native_length(dataset, tag, len(value) if value is not None else 0, sop)


def _check_native_length(dataset: Dataset, tag: BaseTag, length: int, sop: str) -> None:
    numbers: dict[str, int | None] = {}
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames"):
        try:
            numbers[keyword] = _whole_number(dataset, keyword)
        except Exception as error:
            raise MalformedInstanceError(sop, f"{keyword} is not a number ({type(error).__name__})") from error
    rows, columns, bits = numbers["Rows"], numbers["Columns"], numbers["BitsAllocated"]
    samples, frames = numbers["SamplesPerPixel"] or 1, numbers["NumberOfFrames"]
    if rows is None or columns is None or bits is None:
        raise MalformedInstanceError(sop, "Pixel Data without Rows, Columns and Bits Allocated")
    frames = 1 if frames is None else frames
    if frames < 1 or samples < 1 or not (bits == 1 or (bits > 0 and bits % 8 == 0)):
        raise MalformedInstanceError(
            sop, f"unusable image attributes (Number of Frames {frames}, Samples per Pixel {samples}, Bits {bits})"
        )
    pixels = rows * columns * frames
    if samples == 3 and str(dataset.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        expected = pixels * 2 * (bits // 8)  # two chroma samples shared by each pair of pixels
    elif bits == 1:
        expected = (pixels * samples + 7) // 8
    else:
        expected = pixels * samples * (bits // 8)
    # Fewer bytes than the header promises is a truncated or corrupt image and is refused. More is accepted:
    # some modalities pad Pixel Data (pydicom's MR_small_padded.dcm), readers ignore the excess, and refusing a
    # real instance would lose it.
    if length < expected:
        raise MalformedInstanceError(
            sop,
            f"truncated or a wrong header: element {tag} has {length} bytes, the header gives {expected} "
            f"({rows} x {columns} x {samples} x {frames} frames, {bits} bits allocated)",
        )


def _check_fragments(value: bytes | None, little_endian: bool, sop: str) -> None:
    """Encapsulated pixel data: a Basic Offset Table item then at least one fragment, every item whole.

    pydicom keeps the element only when it found the sequence delimiter, and leaves the delimiter out of the value:
    the items must fill the value exactly.
    """
    data = value or b""
    item = struct.Struct("<HHL" if little_endian else ">HHL")
    offset, items = 0, 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise MalformedInstanceError(sop, f"encapsulated Pixel Data: item header cut at byte {offset}")
        group, element, length = item.unpack_from(data, offset)
        if (group << 16 | element) != _ITEM or length == _UNDEFINED_LENGTH:
            raise MalformedInstanceError(sop, f"encapsulated Pixel Data: no fragment item at byte {offset}")
        offset += 8 + length
        if offset > len(data):
            raise MalformedInstanceError(sop, f"truncated: encapsulated Pixel Data item {items} runs past its end")
        items += 1
    if items < 2:
        raise MalformedInstanceError(sop, "encapsulated Pixel Data has no fragments")


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a new file or subfolder, a rename) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_fsync_dir = fsync_dir  # looked up at call time below, so a test may patch it


def _make_dirs_durably(folder: Path, root: Path) -> None:
    """Create missing folders below ``root`` and fsync each parent, so a new study folder survives a crash."""
    missing: list[Path] = []
    current = folder
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        _fsync_dir(created.parent)


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=".incoming-", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        _fsync_dir(path.parent)
    except BaseException:
        path.unlink(missing_ok=True)  # not known durable: do not leave a file the caller is told was refused
        raise
