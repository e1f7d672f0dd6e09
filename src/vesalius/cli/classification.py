"""The classification side of `vesalius plan / train / predict / evaluate` (dispatched from ``main``).

A dataset is a segmentation one when it holds ``dataset.json`` (the MSD layout); anything else (class
folders, a CSV, a MedMNIST .npz) is a classification dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def is_segmentation_dataset(path: Path) -> bool:
    return (path / "dataset.json").is_file()


def is_classification_package(path: Path) -> bool:
    from vesalius.engines.common.package import MANIFEST, load_package

    # unverified here: predict loads it again, verified, before using it
    return (path / MANIFEST).is_file() and load_package(path, verify=False).manifest.task == "classification"


def _options(patient_pattern: str | None) -> dict[str, Any]:
    return {"patient_pattern": patient_pattern} if patient_pattern else {}


def plan(
    dataset: Path,
    output: Path | None,
    kind: str | None,
    slices: int,
    architecture: str | None,
    patient_pattern: str | None,
    input_size: int | None = None,
    width: float | None = None,
    batch_size: int | None = None,
    flip_axes: list[int] | None = None,
    settings: list[str] | None = None,
) -> None:
    from vesalius.engines.classification.dataset import read_classification_dataset
    from vesalius.engines.classification.engine import plan_classification
    from vesalius.engines.common.plan_file import override_plan

    data = read_classification_dataset(dataset, **_options(patient_pattern))
    derived = plan_classification(
        data,
        kind=kind,
        slices=slices,
        architecture=architecture,
        input_size=None if input_size is None else [input_size],
        width=width,
        batch_size=batch_size,
        flip_axes=flip_axes or None,
        patient_pattern=patient_pattern,
    )
    derived = override_plan(derived, settings or [])
    plan_file = derived.save(output or Path(f"{derived.dataset_name}.plan.json"))
    counts = ", ".join(f"{n} {c}" for n, c in zip(data.class_counts(), data.class_names, strict=True))
    typer.echo(
        f"{derived.dataset_name}: {len(data.items)} images ({counts}); {derived.kind}; input "
        f"{' x '.join(map(str, derived.input_size))}; {derived.network.architecture} "
        f"{derived.spatial_dims}-D width {derived.network.width}; batch {derived.batch_size}; {derived.epochs} epochs; "
        f"{'balanced sampling' if derived.balanced_sampling else 'uniform sampling'}"
    )
    typer.echo(f"wrote {plan_file}")


def train(
    dataset: Path,
    fold: str,
    plan_file: Path | None,
    output: Path,
    epochs: int | None,
    device: str,
    precision: str,
    patient_pattern: str | None,
) -> None:
    from rich.progress import Progress

    from vesalius.engines.classification.dataset import read_classification_dataset
    from vesalius.engines.classification.engine import fit_classifier, plan_classification
    from vesalius.engines.classification.plan import ClassificationPlan

    if fold != "official" and not fold.isdigit():
        raise typer.BadParameter(f"--fold must be a fold number or 'official' for classification, got {fold!r}")
    derived = ClassificationPlan.load(plan_file) if plan_file is not None else None
    pattern = patient_pattern or (derived.patient_pattern if derived is not None else None)
    data = read_classification_dataset(dataset, **_options(pattern))
    if derived is None:
        derived = plan_classification(data, patient_pattern=pattern)
        derived.save(output / "plan.json")
    with Progress(transient=False) as bar:
        task = bar.add_task("training", total=epochs or derived.epochs)

        def report(record: dict[str, Any]) -> None:
            text = f"loss {record['loss']:.3f}, selection score {record['validation_score']:.3f}"
            bar.update(task, completed=int(record["epoch"]), description=text)

        result = fit_classifier(
            data,
            derived,
            "official" if fold == "official" else int(fold),
            output,
            device=device,
            precision=precision,
            epochs=epochs,
            progress=report,
        )
    typer.echo((result.run_dir / "evaluation.md").read_text())
    typer.echo(f"model package: {result.package}; plots: {result.run_dir}")


def predict(model: Path, inputs: list[Path], output: Path, device: str, precision: str) -> None:
    from vesalius.engines.classification.engine import predict_classification

    written = predict_classification(model, inputs, output, device=device, precision=precision)
    typer.echo(f"wrote {written}")


def evaluate(
    predictions: Path,
    references: Path,
    output: Path | None,
    kind: str | None,
    threshold: float | None,
    patient_pattern: str | None,
) -> None:
    from vesalius.engines.classification.engine import evaluate_predictions

    report = evaluate_predictions(
        predictions,
        references,
        kind=kind,
        threshold=threshold,
        output=output,
        dataset_options=_options(patient_pattern),
    )
    typer.echo(report.to_table())
    if output is not None:
        typer.echo(f"wrote {output / 'evaluation.json'} and {output / 'evaluation.md'}")
