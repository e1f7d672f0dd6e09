"""Durable storage of received DICOM instances: one file per SOP instance, fsync-ed before we say "stored".

Layout: ``root/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` in the DICOM file format, in the
transfer syntax the instance arrived in. A file is written to a temporary name in its final folder, flushed and
fsync-ed, renamed into place with ``os.replace`` and the folder is fsync-ed: a crash leaves either nothing or the
whole file, never a half-written instance under its real name.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from vesalius.core.errors import InputError, VesaliusError

__all__ = ["InstanceStore", "StorageFullError", "StoredInstance", "UnsafeUidError", "check_uid"]

LOGGER = logging.getLogger(__name__)
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_UID_LENGTH = 64


class UnsafeUidError(InputError):
    """A UID that would become a path part is missing or not a DICOM UID (digits and dots only)."""

    def __init__(self, attribute: str, value: object) -> None:
        self.attribute = attribute
        shown = repr(value)[:80]
        super().__init__(f"{attribute} {shown} is not a DICOM UID (1-64 digits and dots); instance refused")


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

        return self._store(dataset, str(syntax), write)

    def store_encoded(self, encoded: bytes) -> StoredInstance:
        """Write a complete DICOM file (preamble, file meta, data set) byte for byte, as received from the network.

        The header is parsed (pixels skipped) only to learn the UIDs that place the file.
        """
        try:
            header = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True, force=False)
        except Exception as error:  # untrusted bytes: the parser may fail in many ways, all mean "cannot understand"
            raise InputError(f"received data set cannot be parsed as DICOM: {error}") from error
        syntax = str(header.file_meta.get("TransferSyntaxUID", ""))

        def write(handle: BinaryIO) -> None:
            handle.write(encoded)

        return self._store(header, syntax, write)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; every part is checked to be a UID first."""
        return (
            self.root
            / check_uid("StudyInstanceUID", study_uid)
            / check_uid("SeriesInstanceUID", series_uid)
            / f"{check_uid('SOPInstanceUID', sop_instance_uid)}.dcm"
        )

    def _store(self, header: Dataset, syntax: str, write: Callable[[BinaryIO], None]) -> StoredInstance:
        study = check_uid("StudyInstanceUID", header.get("StudyInstanceUID"))
        series = check_uid("SeriesInstanceUID", header.get("SeriesInstanceUID"))
        sop = check_uid("SOPInstanceUID", header.get("SOPInstanceUID"))
        path = self.path_for(study, series, sop)
        if path.exists():
            LOGGER.info("SOP instance %s already stored; duplicate not written", sop)
            return _record(header, path, syntax, duplicate=True)
        if not self.has_room():
            raise StorageFullError(
                f"{self.root}: {self.free_bytes()} bytes free, below the minimum of {self.min_free_bytes}"
            )
        _make_dirs_durably(path.parent, self.root)
        _write_atomically(path, write)
        return _record(header, path, syntax, duplicate=False)


def _file_meta(dataset: Dataset, syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset(dataset.file_meta) if getattr(dataset, "file_meta", None) is not None else FileMetaDataset()
    meta.TransferSyntaxUID = UID(syntax)
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _record(header: Dataset, path: Path, syntax: str, *, duplicate: bool) -> StoredInstance:
    rows, columns = header.get("Rows"), header.get("Columns")
    return StoredInstance(
        path=path,
        study_uid=path.parent.parent.name,
        series_uid=path.parent.name,
        sop_instance_uid=path.stem,
        sop_class_uid=str(header.get("SOPClassUID", "")),
        transfer_syntax=syntax,
        duplicate=duplicate,
        modality=str(header.get("Modality", "")),
        series_description=str(header.get("SeriesDescription", "")),
        body_part=str(header.get("BodyPartExamined", "")),
        rows=int(rows) if rows is not None else None,
        columns=int(columns) if columns is not None else None,
    )


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
    _fsync_dir(path.parent)
