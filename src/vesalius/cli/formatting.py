"""Plain-text rendering of scan reports and volumes for the terminal (no patient names: no PHI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vesalius.core.volume import Volume
from vesalius.io.dicom import ScanReport, SeriesInfo


def _spacing(values: tuple[float, float, float] | list[float]) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _series_line(series: SeriesInfo) -> list[str]:
    size = " x ".join(str(s) for s in series.shape)
    number = "-" if series.series_number is None else str(series.series_number)
    lines = [
        f"  series {number:>4}  {series.modality or '?':<3} {series.description or '(no description)'}",
        f"      uid {series.series_instance_uid}",
        f"      {len(series.files)} files, {len(series.frames)} frames; {size} voxels; "
        f"{_spacing(series.spacing)} mm; orientation {series.orientation}; {', '.join(series.transfer_syntaxes)}",
    ]
    lines += [f"      problem: {message}" for message in series.problems]
    return lines


def format_scan(report: ScanReport, show_skipped: int = 10) -> str:
    studies = report.studies
    series_count = sum(len(s.series) for s in studies)
    lines = [f"{report.root}: {len(studies)} studies, {series_count} series, {len(report.skipped)} files skipped"]
    for study in studies:
        lines.append(f"study {study.study_instance_uid}  {study.study_date}  {study.description}".rstrip())
        for series in study.series:
            lines += _series_line(series)
    if report.skipped:
        lines.append("skipped:")
        lines += [f"  {s.path}: {s.reason}" for s in report.skipped[:show_skipped]]
        if len(report.skipped) > show_skipped:
            lines.append(f"  ... and {len(report.skipped) - show_skipped} more")
    return "\n".join(lines)


def format_volume(volume: Volume, path: Path) -> str:
    origin = ", ".join(f"{v:.4g}" for v in volume.origin)
    return (
        f"{path}: {volume.describe()}\n"
        f"  dtype {volume.array.dtype}; origin (LPS) {origin} mm; "
        f"value range {volume.array.min():.6g} to {volume.array.max():.6g}"
    )


def _series_summary(series: SeriesInfo) -> dict[str, Any]:
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "modality": series.modality,
        "description": series.description,
        "files": len(series.files),
        "frames": len(series.frames),
        "shape": list(series.shape),
        "spacing_mm": [round(v, 6) for v in series.spacing],
        "orientation": series.orientation,
        "transfer_syntaxes": series.transfer_syntaxes,
        "problems": series.problems,
        "readable": not series.geometry.blocking_problems,
    }


def scan_summary(report: ScanReport) -> dict[str, Any]:
    """The scan as plain data, for scripts and hospital IT tooling (`vesalius info --json`)."""
    return {
        "root": str(report.root),
        "studies": [
            {
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date,
                "description": study.description,
                "series": [_series_summary(s) for s in study.series],
            }
            for study in report.studies
        ],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
    }


def volume_summary(volume: Volume, path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "shape": list(volume.shape),
        "spacing_mm": [round(float(v), 6) for v in volume.spacing],
        "origin_lps_mm": [round(float(v), 6) for v in volume.origin],
        "orientation": volume.orientation,
        "dtype": str(volume.array.dtype),
    }
