"""LUNA16-style CSV: nodule annotations and detector candidates, one finding per row, in world mm.

Coordinates are DICOM patient coordinates (LPS: +x towards the patient's left, +y posterior, +z superior), the
frame of Image Position (Patient) and of ``Volume.affine``; LUNA16's own files use the same frame (its MHD
origins are DICOM positions). A NIfTI/RAS point is (-x, -y, z) of these.

Annotations: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` and optional ``malignancy``, ``readers``,
``volume_mm3``; any other column is kept as text. A diameter of -1 means unknown (LUNA16's
``annotations_excluded.csv`` writes non-nodules so) and reads as None. Candidates: ``seriesuid, coordX,
coordY, coordZ, probability`` and optional ``diameter_mm``. Errors name the file, the line and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vesalius.core.errors import InputError

COORDINATE_SYSTEM = "LPS"
"""The frame of coordX/coordY/coordZ: DICOM patient coordinates, as Image Position (Patient)."""
UNKNOWN_DIAMETER = -1.0
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
_OPTIONAL_ANNOTATION_COLUMNS = ("malignancy", "readers", "volume_mm3")

__all__ = [
    "ANNOTATION_COLUMNS",
    "CANDIDATE_COLUMNS",
    "COORDINATE_SYSTEM",
    "LunaAnnotation",
    "LunaCandidate",
    "read_annotations",
    "read_candidates",
    "write_annotations",
    "write_candidates",
]


@dataclass(frozen=True)
class LunaAnnotation:
    """One reference finding: a nodule (or, in an excluded list, an irrelevant finding) of one series."""

    seriesuid: str
    coord_x: float
    coord_y: float
    coord_z: float
    diameter_mm: float | None
    """None when unknown (written as -1)."""
    malignancy: float | None = None
    readers: int | None = None
    volume_mm3: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def centre(self) -> tuple[float, float, float]:
        return (self.coord_x, self.coord_y, self.coord_z)


@dataclass(frozen=True)
class LunaCandidate:
    """One detector output: a suspected nodule's centre and the detector's probability."""

    seriesuid: str
    coord_x: float
    coord_y: float
    coord_z: float
    probability: float
    diameter_mm: float | None = None

    @property
    def centre(self) -> tuple[float, float, float]:
        return (self.coord_x, self.coord_y, self.coord_z)


class _Row:
    """One CSV row with its place, so that every error says where."""

    def __init__(self, path: Path, line: int, cells: Mapping[str, str | None]) -> None:
        self.path, self.line, self.cells = path, line, cells

    def text(self, column: str) -> str:
        value = (self.cells.get(column) or "").strip()
        if not value:
            raise InputError(f"{self.path}, line {self.line}, column {column!r}: value missing")
        return value

    def number(self, column: str) -> float:
        text = self.text(column)
        try:
            value = float(text)
        except ValueError:
            raise InputError(
                f"{self.path}, line {self.line}, column {column!r}: expected a number, found {text!r}"
            ) from None
        if not math.isfinite(value):
            raise InputError(
                f"{self.path}, line {self.line}, column {column!r}: expected a finite number, found {text!r}"
            )
        return value

    def optional(self, column: str) -> float | None:
        return self.number(column) if (self.cells.get(column) or "").strip() else None


def _rows(path: Path | str, required: Sequence[str]) -> tuple[list[_Row], list[str]]:
    source = Path(path)
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            missing = [column for column in required if column not in header]
            if missing:
                raise InputError(
                    f"{source}, line 1: missing column(s) {', '.join(missing)}; the header is {', '.join(header)!r}"
                )
            rows = [
                _Row(source, reader.line_num, cells)
                for cells in reader
                if any((value or "").strip() for value in cells.values() if isinstance(value, str))
            ]
    except OSError as error:
        raise InputError(f"{source}: cannot read the file ({error.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"{source}: not a readable CSV file ({error})") from None
    return rows, header


def read_annotations(path: Path | str) -> list[LunaAnnotation]:
    """Nodule annotations (LUNA16 ``annotations.csv`` or ``annotations_excluded.csv`` layout)."""
    rows, header = _rows(path, ANNOTATION_COLUMNS)
    known = set(ANNOTATION_COLUMNS) | set(_OPTIONAL_ANNOTATION_COLUMNS)
    annotations = []
    for row in rows:
        diameter = row.number("diameter_mm")
        readers = row.optional("readers")
        if readers is not None and (readers != int(readers) or readers < 0):
            raise InputError(f"{row.path}, line {row.line}, column 'readers': expected a count, found {readers}")
        annotations.append(
            LunaAnnotation(
                seriesuid=row.text("seriesuid"),
                coord_x=row.number("coordX"),
                coord_y=row.number("coordY"),
                coord_z=row.number("coordZ"),
                diameter_mm=None if diameter < 0 else diameter,
                malignancy=row.optional("malignancy"),
                readers=None if readers is None else int(readers),
                volume_mm3=row.optional("volume_mm3"),
                extra={name: (row.cells.get(name) or "") for name in header if name not in known},
            )
        )
    return annotations


def read_candidates(path: Path | str) -> list[LunaCandidate]:
    """Detector candidates (LUNA16 submission layout)."""
    rows, _ = _rows(path, CANDIDATE_COLUMNS)
    return [
        LunaCandidate(
            seriesuid=row.text("seriesuid"),
            coord_x=row.number("coordX"),
            coord_y=row.number("coordY"),
            coord_z=row.number("coordZ"),
            probability=row.number("probability"),
            diameter_mm=row.optional("diameter_mm"),
        )
        for row in rows
    ]


def _cell(value: float | int | str | None) -> str:
    """Shortest text that reads back as the same number (repr), empty for None."""
    if value is None:
        return ""
    return value if isinstance(value, str) else repr(value)


def _write(path: Path | str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return target


def write_annotations(path: Path | str, annotations: Sequence[LunaAnnotation]) -> Path:
    """Write annotations; optional columns appear when any row has them, extra columns after those."""
    optional = [name for name in _OPTIONAL_ANNOTATION_COLUMNS if any(getattr(a, name) is not None for a in annotations)]
    extra = list(dict.fromkeys(name for a in annotations for name in a.extra))
    header = [*ANNOTATION_COLUMNS, *optional, *extra]
    rows = [
        [
            a.seriesuid,
            _cell(float(a.coord_x)),
            _cell(float(a.coord_y)),
            _cell(float(a.coord_z)),
            _cell(UNKNOWN_DIAMETER if a.diameter_mm is None else float(a.diameter_mm)),
            *(_cell(getattr(a, name)) for name in optional),
            *(a.extra.get(name, "") for name in extra),
        ]
        for a in annotations
    ]
    return _write(path, header, rows)


def write_candidates(path: Path | str, candidates: Sequence[LunaCandidate]) -> Path:
    """Write candidates; ``diameter_mm`` appears when any candidate has one."""
    with_diameter = any(c.diameter_mm is not None for c in candidates)
    header = [*CANDIDATE_COLUMNS, *(["diameter_mm"] if with_diameter else [])]
    rows = [
        [
            c.seriesuid,
            _cell(float(c.coord_x)),
            _cell(float(c.coord_y)),
            _cell(float(c.coord_z)),
            _cell(float(c.probability)),
            *([_cell(c.diameter_mm)] if with_diameter else []),
        ]
        for c in candidates
    ]
    return _write(path, header, rows)
