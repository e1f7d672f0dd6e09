"""Plain-text rendering of scan reports and volumes for the terminal (no patient names: no PHI)."""

from __future__ import annotations

from pathlib import Path

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
