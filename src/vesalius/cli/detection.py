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


def is_detection_package(path: Path) -> bool:
    from vesalius.engines.common.package import MANIFEST, load_package

    # unverified here: predict loads it again, verified, before using it
    return (path / MANIFEST).is_file() and load_package(path, verify=False).manifest.task == "detection"


def train(series: Path, xml: Path | None, output: Path, steps: int | None, device: str) -> None:
    from vesalius.engines.detection.build import build_lung_nodule_model
    from vesalius.engines.detection.recipe import LungNodulePlan

    plan = LungNodulePlan()
    if steps is not None:
        plan = plan.model_copy(update={"detector_training": plan.detector_training.model_copy(update={"steps": steps})})

    def report(record: dict[str, object]) -> None:
        step = record.get("step")
        if "stage" in record or (isinstance(step, int) and step % 100 == 0):
            typer.echo(
                ", ".join(
                    f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                    for key, value in record.items()
                )
            )

    built = build_lung_nodule_model(series, xml or _xml_beside(series), output, plan, device=device, progress=report)
    evaluation = built.evaluation
    typer.echo(
        f"held-out inserted nodules, CPM: detector {evaluation.inserted_detector.cpm.format()}, "
        f"after false-positive reduction {evaluation.inserted_reduced.cpm.format()}"
    )
    for nodule in evaluation.real_nodules:
        typer.echo(
            f"real nodule {nodule.diameter_mm:.1f} mm: found {nodule.found}, score {nodule.probability}, "
            f"{nodule.false_positives_above} false positive(s) scored at least as high"
        )
    typer.echo(f"model package: {built.package}")


def predict(model: Path, inputs: list[Path], output: Path, device: str) -> None:
    from vesalius.engines.detection.model import LungNoduleModel, write_findings
    from vesalius.io.read import read_volume

    detector = LungNoduleModel.from_package(model, device=device)
    for number, source in enumerate(inputs):
        volume = read_volume(source)
        findings = detector.find(volume)
        seriesuid = volume.identity.series_instance_uid or source.name
        target = output if len(inputs) == 1 else output / f"{number:03d}_{source.name}"
        table, document = write_findings(target, seriesuid, findings)
        nodules = sum(f.nodule for f in findings)
        typer.echo(
            f"{source}: {nodules} nodule(s) at the operating point, {len(findings)} candidates; "
            f"wrote {table} and {document}"
        )
