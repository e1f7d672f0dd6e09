"""The ``vesalius`` command: parses arguments, calls the Python API, formats the answer.

Errors Vesalius raises on purpose are printed as one precise message and a non-zero exit, never as a
traceback; set VESALIUS_DEBUG=1 to see the traceback of an unexpected failure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from vesalius import __version__
from vesalius.cli import deploy as deploy_commands
from vesalius.cli.formatting import format_scan, format_volume, scan_summary, volume_summary
from vesalius.core.errors import VesaliusError

app = typer.Typer(
    name="vesalius",
    help="Vesalius: medical images from the hospital archive to a usable diagnosis and back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DATASET_HELP = "Segmentation: an MSD folder (dataset.json). Classification: class folders, a CSV or a MedMNIST .npz."
KIND_HELP = "Classification task: binary, multiclass, ordinal or multilabel [default: from the labels]."
PATIENT_HELP = "Regular expression with a group 'patient' in file names, so no patient spans two folds."
PRECISION_HELP = "'auto' (bf16 on GPUs and on CPUs with native bf16, else fp32), 'fp32', 'bf16' or 'fp16' (GPU)."


def friendly_errors(command: F) -> F:
    """Turn errors into one line on stderr and an exit code: 2 for bad input, 1 for anything else."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VesaliusError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Exception as error:
            if os.environ.get("VESALIUS_DEBUG"):
                raise
            typer.echo(f"internal error: {type(error).__name__}: {error} (set VESALIUS_DEBUG=1 for details)", err=True)
            raise typer.Exit(code=1) from None

    return run  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vesalius {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Vesalius: medical images from the hospital archive to a usable diagnosis and back."""


@app.command()
@friendly_errors
def info(
    path: Annotated[Path, typer.Argument(help="A DICOM file or folder (any depth), or a NIfTI/NRRD/MHA file.")],
    show_skipped: Annotated[int, typer.Option(help="How many skipped files to list with their reason.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
) -> None:
    """List the studies and series found (modality, size, spacing, orientation) and every problem seen."""
    from vesalius.io.dicom import scan
    from vesalius.io.itk import is_itk_image
    from vesalius.io.nifti import is_nifti
    from vesalius.io.read import read_volume

    if path.is_file() and (is_nifti(path) or is_itk_image(path)):
        volume = read_volume(path)
        typer.echo(json.dumps(volume_summary(volume, path), indent=2) if as_json else format_volume(volume, path))
        return
    report = scan(path)
    typer.echo(json.dumps(scan_summary(report), indent=2) if as_json else format_scan(report, show_skipped))


@app.command()
@friendly_errors
def convert(
    path: Annotated[Path, typer.Argument(help="A DICOM file or folder, or a NIfTI/NRRD/MHA file.")],
    output: Annotated[Path, typer.Argument(help="Output NIfTI file (.nii or .nii.gz).")],
    series: Annotated[
        str | None, typer.Option("--series", help="Series Instance UID to convert when PATH holds several.")
    ] = None,
    on_tilt: Annotated[
        str, typer.Option(help="Gantry tilt: 'resample' onto an orthogonal grid, or 'refuse' the series.")
    ] = "resample",
) -> None:
    """Convert one series (or image) to NIfTI with its exact geometry."""
    from vesalius.io.nifti import write_nifti
    from vesalius.io.read import read_volume

    if on_tilt not in ("resample", "refuse"):
        raise typer.BadParameter("--on-tilt must be 'resample' or 'refuse'")
    volume = read_volume(path, series_uid=series, on_tilt=on_tilt)  # type: ignore[arg-type]
    written = write_nifti(volume, output)
    typer.echo(f"wrote {written}: {volume.describe()}")
    if volume.metadata.get("resampled_for_tilt"):
        typer.echo(f"note: resampled for a gantry tilt of {volume.metadata['gantry_tilt_degrees']:.2f} degrees")


@app.command()
@friendly_errors
def plan(
    dataset: Annotated[Path, typer.Argument(help=DATASET_HELP)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Plan file to write [default: ./<dataset name>.plan.json].")
    ] = None,
    memory_budget_gb: Annotated[float, typer.Option(help="GPU memory the patch and batch size must fit.")] = 8.0,
    workers: Annotated[int, typer.Option(help="Processes reading cases for the fingerprint.")] = 1,
    base_filters: Annotated[int, typer.Option(help="Filters of the first stage, doubling per stage.")] = 32,
    batch_size: Annotated[
        int | None, typer.Option(help="Patches per step [default: from the memory budget and dataset size].")
    ] = None,
    kind: Annotated[str | None, typer.Option(help=KIND_HELP)] = None,
    slices: Annotated[int, typer.Option(help="Classification of volumes as 2.5-D: slices stacked as channels.")] = 1,
    architecture: Annotated[
        str | None, typer.Option(help="Classification backbone: resnet18, densenet121, efficientnet-b0, vit...")
    ] = None,
    patient_pattern: Annotated[str | None, typer.Option(help=PATIENT_HELP)] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Classification: side of the network input in pixels [default: from the images].")
    ] = None,
    width: Annotated[
        float | None, typer.Option(help="Classification: ResNet width multiplier [default: 1 in 2-D, 0.5 in 3-D].")
    ] = None,
    flip_axis: Annotated[
        list[int] | None,
        typer.Option(help="Classification: an axis images may be mirrored on (repeat); also averaged at test time."),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any plan field as field=value (repeat), e.g. --set network.width=0.5."),
    ] = None,
) -> None:
    """Fingerprint a dataset and write the plan derived from it (a readable, editable JSON file)."""
    from vesalius.cli import classification
    from vesalius.engines.common.plan import plan_dataset
    from vesalius.engines.common.plan_file import override_plan

    if not classification.is_segmentation_dataset(dataset):
        classification.plan(
            dataset,
            output,
            kind,
            slices,
            architecture,
            patient_pattern,
            input_size,
            width,
            batch_size,
            flip_axis,
            settings,
        )
        return

    fingerprint, derived = plan_dataset(
        dataset, memory_budget_gb=memory_budget_gb, workers=workers, base_filters=base_filters, batch_size=batch_size
    )
    derived = override_plan(derived, settings or [])
    plan_file = output or Path(f"{derived.dataset_name}.plan.json")
    derived.save(plan_file)
    fingerprint_file = plan_file.parent / f"{derived.dataset_name}.fingerprint.json"
    fingerprint_file.write_text(fingerprint.model_dump_json(indent=2) + "\n")
    spacing = " x ".join(f"{v:.4g}" for v in derived.target_spacing)
    patch = " x ".join(str(v) for v in derived.patch_size)
    typer.echo(
        f"{derived.dataset_name}: {len(fingerprint.cases)} cases, {derived.num_classes} classes; "
        f"target spacing {spacing} mm; patch {patch}; batch {derived.batch_size}; "
        f"{len(derived.network.strides)} resolution stages"
    )
    typer.echo(f"wrote {plan_file} and {fingerprint_file}")


@app.command()
@friendly_errors
def evaluate(
    predictions: Annotated[
        Path, typer.Argument(help="Folder of predicted label maps, or a classification predictions.csv.")
    ],
    references: Annotated[
        Path, typer.Argument(help="Folder of reference label maps, or the labelled classification dataset.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for evaluation.json and evaluation.md.")
    ] = None,
    tolerance_mm: Annotated[float, typer.Option(help="Surface Dice tolerance in millimetres.")] = 1.0,
    kind: Annotated[str | None, typer.Option(help=KIND_HELP)] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Binary operating point (the package's postprocessing.threshold).")
    ] = None,
    patient_pattern: Annotated[str | None, typer.Option(help=PATIENT_HELP)] = None,
) -> None:
    """Segmentation: Dice, HD95 and surface Dice per class; classification: AUC, accuracy, sensitivity,
    specificity, F1 (QWK for grades); each with mean and bootstrap 95% CI."""
    from vesalius.cli import classification
    from vesalius.engines.common.evaluate import evaluate_folders

    if predictions.is_file() and predictions.suffix.lower() == ".csv":
        classification.evaluate(predictions, references, output, kind, threshold, patient_pattern)
        return

    report = evaluate_folders(predictions, references, tolerance_mm=tolerance_mm, output=output)
    typer.echo(report.to_table())
    if output is not None:
        typer.echo(f"wrote {output / 'evaluation.json'} and {output / 'evaluation.md'}")


@app.command()
@friendly_errors
def train(
    dataset: Annotated[Path, typer.Argument(help=DATASET_HELP)],
    fold: Annotated[
        str,
        typer.Option(
            help="Fold 0..K-1; segmentation: 'cv' for every fold plus the summary, 'all' for every case; "
            "classification: 'official' for the source's own train/val split."
        ),
    ] = "0",
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Plan to use [default: derive one and save OUTPUT/plan.json].")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, curves and packages.")] = Path(
        "runs"
    ),
    epochs: Annotated[int | None, typer.Option(help="Override the plan's number of epochs.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override the plan's iterations per epoch.")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    workers: Annotated[int, typer.Option(help="Data-loading worker processes (0: in the main process).")] = 0,
    restart: Annotated[bool, typer.Option(help="Ignore an existing checkpoint instead of resuming it.")] = False,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    patient_pattern: Annotated[str | None, typer.Option(help=PATIENT_HELP)] = None,
) -> None:
    """Train one fold (resuming its checkpoint) and write a model package."""
    from rich.progress import Progress

    from vesalius.cli import classification

    if not classification.is_segmentation_dataset(dataset):
        classification.train(dataset, fold, plan_file, output, epochs, device, precision, patient_pattern)
        return

    from vesalius.engines.common.plan import SegmentationPlan, plan_dataset
    from vesalius.engines.segmentation.trainer import train_fold

    if fold not in ("all", "cv") and not fold.isdigit():
        raise typer.BadParameter(f"--fold must be a fold number, 'all' or 'cv', got {fold!r}")
    chosen = int(fold) if fold.isdigit() else None
    if plan_file is not None:
        derived = SegmentationPlan.load(plan_file)
    else:
        _, derived = plan_dataset(dataset)
        derived.save(output / "plan.json")
    if fold == "cv":
        from vesalius.engines.segmentation.crossval import cross_validate

        outcome = cross_validate(
            dataset,
            derived,
            output,
            device=device,
            epochs=epochs,
            iterations_per_epoch=iterations,
            workers=workers,
            precision=precision,
        )
        typer.echo(outcome.summary_table.read_text())
        typer.echo(f"wrote {outcome.summary_json} and {outcome.summary_table}")
        return
    total = epochs or derived.training.epochs
    with Progress(transient=False) as bar:
        task = bar.add_task("training", total=total)

        def report(record: dict[str, object]) -> None:
            dice_scores = record.get("validation_dice")
            shown = f", val Dice {dice_scores['mean']:.3f}" if isinstance(dice_scores, dict) else ""
            bar.update(task, completed=int(str(record["epoch"])), description=f"loss {record['loss']:.3f}{shown}")

        result = train_fold(
            dataset,
            derived,
            chosen,
            output,
            device=device,
            epochs=epochs,
            iterations_per_epoch=iterations,
            workers=workers,
            resume=not restart,
            progress=report,
            precision=precision,
        )
    best = ", ".join(f"{name} {value:.3f}" for name, value in result.best_dice.items())
    typer.echo(f"trained {result.epochs} epochs; best epoch {result.best_epoch}: {best or 'no validation'}")
    typer.echo(f"model package: {result.package}; curves: {result.curves}")


@app.command()
@friendly_errors
def predict(
    model: Annotated[
        Path, typer.Argument(help="A model package, or a training folder whose fold_*/model packages are ensembled.")
    ],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="NIfTI/NRRD/MHA files or DICOM folders; for classification also images, image folders, .npz."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the label maps (NIfTI) or predictions.csv.")
    ],
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    tta: Annotated[bool, typer.Option(help="Average over mirrored inputs (test-time augmentation).")] = True,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    overlap: Annotated[
        float, typer.Option(help="Overlap of neighbouring windows, 0 to <1; 0.5 as nnU-Net, lower is faster.")
    ] = 0.5,
    explain_: Annotated[
        bool, typer.Option("--explain", help="Also write Grad-CAM maps, overlays and a case report to OUTPUT/trust.")
    ] = False,
    uncertainty: Annotated[
        bool, typer.Option("--uncertainty", help="Also write TTA uncertainty maps and scores to OUTPUT/trust.")
    ] = False,
    policy: Annotated[Path | None, typer.Option(help="Abstain-policy JSON: flag uncertain cases for review.")] = None,
    backend: Annotated[
        str, typer.Option(help="torch, onnxruntime (the package's model.onnx) or onnxruntime-int8 (model.int8.onnx).")
    ] = "torch",
) -> None:
    """Segment each input with the model (or the ensemble of folds); each label map lies on its input's grid.
    A classification package writes OUTPUT/predictions.csv instead; a lung-nodule package writes
    OUTPUT/nodules.csv and nodules.json (world LPS mm, diameter, probability) per chest CT.
    --explain and --uncertainty add OUTPUT/trust: maps, overlays, DICOM objects, case reports and trust.csv."""
    from vesalius.cli import classification, deploy, detection, trust

    if backend != "torch":
        if backend not in ("onnxruntime", "onnxruntime-int8"):
            raise typer.BadParameter(f"--backend must be torch, onnxruntime or onnxruntime-int8; got {backend!r}")
        deploy.predict_onnx(model, inputs, output, backend.endswith("int8"), overlap, tta)
        return
    if explain_ or uncertainty:
        trust.explain(
            model,
            inputs,
            output / "trust",
            method="gradcam" if explain_ else None,
            layer=None,
            sanity_check=explain_,
            uncertainty="tta" if uncertainty else None,
            passes=10,
            policy=policy,
            device=device,
        )

    if classification.is_classification_package(model):
        classification.predict(model, inputs, output, device, precision)
        return
    if detection.is_detection_package(model):
        detection.predict(model, inputs, output, "cpu" if device == "auto" else device)
        return
    from vesalius.engines.common.precision import pick_device
    from vesalius.engines.segmentation.predict import predict_files
    from vesalius.engines.segmentation.run_layout import model_packages, stored_postprocessing

    packages = model_packages(model)

    postprocessing = stored_postprocessing(model) if packages != [model] else None  # None: the package's own
    written = predict_files(
        packages,
        inputs,
        output,
        device=pick_device(device),
        tta=tta,
        postprocessing=postprocessing,
        precision=precision,
        overlap=overlap,
    )
    typer.echo(f"{len(packages)} model package(s): {', '.join(str(p) for p in packages)}")
    for path in written:
        typer.echo(f"wrote {path}")


@app.command()
@friendly_errors
def explain(
    model: Annotated[Path, typer.Argument(help="A classification or segmentation package (or fold_*/model folder).")],
    inputs: Annotated[list[Path], typer.Argument(help="Images, volumes or DICOM folders, as for predict.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for maps, overlays, reports, trust.csv.")],
    method: Annotated[
        str, typer.Option(help="gradcam, gradcam++, occlusion, integrated_gradients, or none.")
    ] = "gradcam",
    layer: Annotated[str | None, typer.Option(help="Grad-CAM layer (dotted name); default: last conv stage.")] = None,
    sanity_check: Annotated[
        bool, typer.Option(help="Compare the map with a weight-randomised model's (Adebayo et al. 2018).")
    ] = True,
    uncertainty: Annotated[str, typer.Option(help="tta, mc_dropout, softmax (classification), or none.")] = "tta",
    passes: Annotated[int, typer.Option(help="MC-dropout passes.")] = 10,
    policy: Annotated[Path | None, typer.Option(help="Abstain-policy JSON: flag uncertain cases for review.")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
) -> None:
    """Explain each prediction, check the explanation, score its uncertainty, and write a case report per input:
    NIfTI maps, PNG overlays, DICOM Parametric Map / Secondary Capture for DICOM inputs, HTML, trust.csv."""
    from vesalius.cli import trust

    trust.explain(
        model,
        inputs,
        output,
        method=None if method == "none" else method,
        layer=layer,
        sanity_check=sanity_check and method != "none",
        uncertainty=None if uncertainty == "none" else uncertainty,
        passes=passes,
        policy=policy,
        device=device,
    )


@app.command()
@friendly_errors
def export(
    model: Annotated[Path, typer.Argument(help="A classification or segmentation model package.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Add model.onnx (dynamic batch and spatial axes).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest |ONNX - torch| logit difference accepted.")] = 1e-3,
) -> None:
    """Add an ONNX graph to the package, checked against torch on inputs of several sizes."""
    from vesalius.cli import deploy

    deploy.export(model, onnx, opset, tolerance)


@app.command()
@friendly_errors
def quantize(
    model: Annotated[Path, typer.Argument(help="A package with model.onnx (vesalius export --onnx).")],
    calibration: Annotated[Path, typer.Option(help="Dataset to draw calibration inputs from (as for train).")],
    int8: Annotated[bool, typer.Option("--int8", help="Static INT8, QDQ format.")] = False,
    validation: Annotated[
        Path | None, typer.Option(help="Labelled dataset for the accuracy gate; default: calibration items not drawn.")
    ] = None,
    method: Annotated[str, typer.Option(help="Calibration: minmax, percentile or entropy.")] = "minmax",
    count: Annotated[int, typer.Option(help="Calibration inputs (images or patches).")] = 64,
    max_drop: Annotated[float, typer.Option(help="Largest metric drop accepted, in points (AUC or Dice x 100).")] = 1.0,
) -> None:
    """Quantise to INT8 with real calibration data; add model.int8.onnx only if the metric drop is within limit."""
    from vesalius.cli import deploy

    deploy.quantize(model, int8, calibration, validation, method, count, max_drop)


@app.command()
@friendly_errors
def bench(
    model: Annotated[Path, typer.Argument(help="A classification or segmentation model package.")],
    backend: Annotated[
        list[str] | None, typer.Option(help="torch, torch-bf16, onnxruntime, onnxruntime-int8; repeat; default all.")
    ] = None,
    input_size: Annotated[
        list[int] | None, typer.Option(help="Spatial size, one per axis; default the plan's.")
    ] = None,
    batch: Annotated[int, typer.Option(help="Inputs per call.")] = 1,
    runs: Annotated[int, typer.Option(help="Timed calls after 3 warm-up calls.")] = 20,
    threads: Annotated[int | None, typer.Option(help="Intra-op threads; default the backend's.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the reports as JSON.")] = None,
) -> None:
    """Latency p50/p95, throughput and peak memory of the package's network per backend (warm-up excluded)."""
    from vesalius.cli import deploy

    deploy.bench(model, backend, input_size, batch, runs, threads, output)


@app.command()
@friendly_errors
def reference(
    series: Annotated[Path, typer.Argument(help="The CT series folder the LIDC read annotates (DICOM).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="LUNA16-style CSV of the reference nodules.")],
    xml: Annotated[Path | None, typer.Option(help="The LIDC XML read [default: the one XML file in SERIES].")] = None,
    excluded: Annotated[
        Path | None, typer.Option(help="CSV of the irrelevant findings (LUNA16's annotations_excluded).")
    ] = None,
    min_readers: Annotated[int, typer.Option(help="Readers who must have marked a nodule.")] = 3,
    min_diameter: Annotated[float, typer.Option(help="Smallest nodule diameter in mm.")] = 3.0,
) -> None:
    """Build the LUNA16 reference standard of a chest CT from its LIDC reader marks (world LPS mm)."""
    from vesalius.cli import detection

    detection.reference(series, xml, output, excluded, min_readers, min_diameter)


@app.command("train-nodules")
@friendly_errors
def train_nodules(
    series: Annotated[Path, typer.Argument(help="An LIDC chest CT series folder (DICOM) with its XML read.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: checkpoints, evaluation, model/.")],
    xml: Annotated[Path | None, typer.Option(help="The LIDC XML read [default: the one XML file in SERIES].")] = None,
    steps: Annotated[int | None, typer.Option(help="Detector training steps [default: the plan's].")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
) -> None:
    """Make the lung-nodule model: train on nodules inserted in one lung, score on the other, package it."""
    from vesalius.cli import detection

    detection.train(series, xml, output, steps, device)


CONFIG_HELP = "The gateway configuration (vesalius.toml); see examples/vesalius.toml."


@app.command()
@friendly_errors
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help=CONFIG_HELP)] = Path("vesalius.toml"),
    backend: Annotated[
        str | None, typer.Option(help="torch, onnxruntime or onnxruntime-int8; overrides [workers] backend.")
    ] = None,
) -> None:
    """Run the PACS gateway: DICOM listener, REST API and inference workers, until Ctrl-C or SIGTERM."""
    from vesalius.cli import gateway

    gateway.serve(config, backend)


@app.command()
@friendly_errors
def pull(
    study: Annotated[str, typer.Option("--study", help="Study Instance UID to fetch.")],
    source: Annotated[str, typer.Option("--from", help="The archive as AE@host:port.")],
    config: Annotated[Path, typer.Option("--config", "-c", help=CONFIG_HELP)] = Path("vesalius.toml"),
    wait: Annotated[bool, typer.Option("--wait", help="Run the job here and print where its results are.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait may take before giving up.")] = 3600.0,
) -> None:
    """Fetch a study from an archive (C-FIND, C-GET) into the gateway's store and queue it for its models."""
    from vesalius.cli import gateway

    record = gateway.pull(config, study, source, wait=wait, timeout=timeout, echo=typer.echo)
    if wait and record is not None and record.state.value != "done":
        raise typer.Exit(code=1)


app.command()(friendly_errors(deploy_commands.distill))
app.command()(friendly_errors(deploy_commands.prune))


def run() -> None:  # pragma: no cover - console entry point alias
    sys.exit(app())
