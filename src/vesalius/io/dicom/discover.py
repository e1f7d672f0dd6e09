"""Finding the studies and series in a folder of DICOM files at any depth, with non-DICOM files mixed in.

Headers are read once (without pixel data) in parallel; each series is then checked for a regular grid so
that ``vesalius info`` can report problems before anything is decoded.
"""

from __future__ import annotations

import gc
import io
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from vesalius.core.errors import NoDicomFoundError, NotDicomError
from vesalius.core.volume import orientation_code
from vesalius.io.dicom.frames import Frame, frames_of, sop_instance_uid, uid_value
from vesalius.io.dicom.geometry import GeometryProblem, StackGeometry, stack_geometry
from vesalius.io.dicom.header import parse_header
from vesalius.io.dicom.pydicom_tuning import use_fast_vr_decoding

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

use_fast_vr_decoding()


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class SeriesInfo:
    """One series: its frames, and the grid they form (or why they do not)."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    description: str
    series_number: int | None
    frame_of_reference_uid: str | None
    sop_class_uid: str
    frames: list[Frame]
    geometry: StackGeometry

    @property
    def files(self) -> list[Path]:
        return sorted({f.path for f in self.frames})

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        norms = np.linalg.norm(self.geometry.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        return orientation_code(self.geometry.affine[:3, :3] / np.linalg.norm(self.geometry.affine[:3, :3], axis=0))

    @property
    def problems(self) -> list[str]:
        return [p.message for p in self.geometry.problems]

    @property
    def transfer_syntaxes(self) -> list[str]:
        return sorted({UID(f.transfer_syntax_uid).name for f in self.frames})


@dataclass
class StudyInfo:
    study_instance_uid: str
    study_date: str
    description: str
    series: list[SeriesInfo] = field(default_factory=list)


@dataclass
class ScanReport:
    root: Path
    studies: list[StudyInfo]
    skipped: list[SkippedFile]

    @property
    def series(self) -> list[SeriesInfo]:
        return [s for study in self.studies for s in study.series]


def _walk(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (or ``root`` itself), in a stable order."""
    if root.is_file():
        yield root
        return
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file():  # not broken links, sockets or pipes
                yield path


@dataclass(frozen=True)
class _Header:
    dataset: Dataset
    pixel_data_offset: int | None


_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


_HEADER_PREFIX = 1 << 16
"""Bytes read at once to parse a header from memory; nearly every header is shorter."""


def _parse_from(source: BinaryIO, force: bool) -> _Header:
    dataset = pydicom.dcmread(source, stop_before_pixels=True, force=force)
    offset = source.tell()
    offset_valid = source.read(4) in _PIXEL_DATA_TAGS
    return _Header(dataset, offset if offset_valid else None)


def _parse(path: Path, force: bool = False) -> _Header:
    """Parse up to the pixel data; remember where it starts, so native pixels need no second parse.

    The header is read from the file's first 64 KiB held in memory: by the fast path of ``header`` for the
    usual Explicit VR Little Endian files, else by pydicom; a longer header, or one without pixel data, is
    parsed again from the file itself.
    """
    with open(path, "rb") as file:
        prefix = file.read(_HEADER_PREFIX)
        if not force and (fast := parse_header(prefix)) is not None:
            return _Header(*fast)
        if len(prefix) < _HEADER_PREFIX:
            return _parse_from(io.BytesIO(prefix), force)
        try:
            header = _parse_from(io.BytesIO(prefix), force)
        except InvalidDicomError:
            raise
        except Exception:  # the header runs past the prefix
            header = None
        if header is not None and header.pixel_data_offset is not None:
            return header
        file.seek(0)
        return _parse_from(file, force)


def _read_header(path: Path) -> _Header | SkippedFile:
    try:
        header = _parse(path)
    except InvalidDicomError:
        try:
            header = _parse(path, force=True)
        except Exception:
            return SkippedFile(path, "not a DICOM file")
        if "SOPClassUID" not in header.dataset or "Rows" not in header.dataset:
            return SkippedFile(path, "not a DICOM file (no DICOM preamble or image attributes)")
    except Exception as error:  # truncated header, broken value lengths, unreadable file
        return SkippedFile(path, f"unreadable DICOM ({type(error).__name__}: {error})")
    dataset = header.dataset
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in dataset:
        return SkippedFile(path, "DICOMDIR (media directory), not an image")
    if "Rows" not in dataset or "Columns" not in dataset:
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        return SkippedFile(path, f"no pixel data ({name})")
    return header


def _series_key(dataset: Dataset) -> tuple[str, str]:
    return uid_value(dataset, "StudyInstanceUID") or "unknown-study", uid_value(
        dataset, "SeriesInstanceUID"
    ) or "unknown-series"


def _series_info(study_uid: str, series_uid: str, headers: list[tuple[Path, _Header]]) -> SeriesInfo:
    frames: list[Frame] = []
    for path, header in headers:
        frames.extend(frames_of(header.dataset, path, header.pixel_data_offset))
    first = headers[0][1].dataset
    try:
        geometry = stack_geometry(frames)
    except Exception as error:
        problem = GeometryProblem("missing_position", f"geometry could not be derived: {error}")
        geometry = StackGeometry(tuple(range(len(frames))), np.eye(4), (0, 0, len(frames)), 0.0, (problem,))
    number = first.get("SeriesNumber")
    return SeriesInfo(
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        modality=str(first.get("Modality", "")),
        description=str(first.get("SeriesDescription", "")),
        series_number=int(number) if number not in (None, "") else None,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID")) if "FrameOfReferenceUID" in first else None,
        sop_class_uid=str(first.get("SOPClassUID", "")),
        frames=frames,
        geometry=geometry,
    )


@contextmanager
def _parsing_quietly() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing (the many small objects pydicom makes would
    trigger collections that cost a fifth of the parse and free nothing) and keep pydicom's warnings
    about odd files off the terminal: what matters about a file is reported in the scan itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if was_enabled:
            gc.enable()


def _read_headers(paths: list[Path], workers: int, batch: int = 1000) -> list[_Header | SkippedFile]:
    headers: list[_Header | SkippedFile] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        with _parsing_quietly():
            if workers <= 1:
                headers.extend(_read_header(p) for p in chunk)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    headers.extend(pool.map(_read_header, chunk))
    return headers


def scan(path: Path | str, workers: int = 1) -> ScanReport:
    """Group every DICOM image under ``path`` into studies and series; list what was skipped and why.

    Header parsing holds the GIL, so one worker is fastest on local disk; more help on network storage.
    """
    root = Path(path)
    if not root.exists():
        raise NoDicomFoundError(f"{root}: no such file or folder")
    paths = list(_walk(root))
    if not paths:
        raise NoDicomFoundError(f"{root}: the folder is empty")
    headers = _read_headers(paths, workers)
    skipped = [h for h in headers if isinstance(h, SkippedFile)]
    grouped: dict[tuple[str, str], list[tuple[Path, _Header]]] = defaultdict(list)
    duplicates: set[str] = set()
    for file_path, header in zip(paths, headers, strict=True):
        if isinstance(header, SkippedFile):
            continue
        sop = sop_instance_uid(header.dataset, file_path)
        if sop in duplicates:
            skipped.append(SkippedFile(file_path, f"repeats SOP Instance UID {sop} already read"))
            continue
        duplicates.add(sop)
        grouped[_series_key(header.dataset)].append((file_path, header))
    if not grouped:
        if root.is_file() and skipped:
            raise NotDicomError(root, skipped[0].reason)
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
        raise NoDicomFoundError(f"{root}: no DICOM image found among {len(paths)} files ({reasons})")
    studies: dict[str, StudyInfo] = {}
    for (study_uid, series_uid), members in grouped.items():
        first = members[0][1].dataset
        study = studies.setdefault(
            study_uid,
            StudyInfo(study_uid, str(first.get("StudyDate", "")), str(first.get("StudyDescription", ""))),
        )
        study.series.append(_series_info(study_uid, series_uid, members))
    for study in studies.values():
        study.series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid))
    ordered = sorted(studies.values(), key=lambda s: (s.study_date, s.study_instance_uid))
    return ScanReport(root=root, studies=ordered, skipped=skipped)
