"""The lung-nodule side of the ``vesalius`` command: reference standards from LIDC reads."""

from __future__ import annotations

from pathlib import Path

import typer

from vesalius.core.errors import InputError


def _xml_beside(series: Path) -> Path:
    found = sorted(series.glob("*.xml")) if series.is_dir() else []
    if len(found) != 1:
        where = f"{len(found)} XML files in {series}" if series.is_dir() else f"{series} is not a folder"
        raise InputError(f"name the LIDC read with --xml ({where})")
    return found[0]


def reference(
    series: Path, xml: Path | None, output: Path, excluded: Path | None, min_readers: int, min_diameter_mm: float
) -> None:
    from vesalius.engines.detection.reference import reference_standard, to_luna_annotations
    from vesalius.io.annotations.lidc import SeriesGeometry, read_lidc_xml
    from vesalius.io.annotations.luna import write_annotations
    from vesalius.io.read import read_volume

    read = read_lidc_xml(xml or _xml_beside(series))
    volume = read_volume(series, series_uid=read.series_instance_uid)
    standard = reference_standard(read, SeriesGeometry.from_volume(volume), min_readers, min_diameter_mm)
    written = write_annotations(output, to_luna_annotations(standard.nodules))
    typer.echo(
        f"{len(read.sessions)} readers; {len(standard.nodules)} nodule(s) of >= {min_diameter_mm:g} mm marked by "
        f">= {min_readers} readers; {len(standard.irrelevant)} irrelevant finding(s)"
    )
    for nodule in standard.nodules:
        x, y, z = nodule.centre
        malignancy = "not rated" if nodule.malignancy is None else f"{nodule.malignancy:.2f}"
        typer.echo(
            f"  ({x:.1f}, {y:.1f}, {z:.1f}) mm LPS, {nodule.diameter_mm:.1f} mm, {nodule.readers} readers, "
            f"mean malignancy {malignancy}"
        )
    typer.echo(f"wrote {written}")
    if excluded is not None:
        typer.echo(f"wrote {write_annotations(excluded, to_luna_annotations(standard.irrelevant))}")
