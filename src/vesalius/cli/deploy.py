"""The deployment side of the ``vesalius`` command: export, quantize, bench, distill, prune, and predict on ONNX
Runtime. ``distill`` and ``prune`` are declared here in full and registered by ``vesalius.cli.main``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import typer

from vesalius.core.errors import InputError


def export(model: Path, onnx: bool, opset: int, tolerance: float) -> None:
    from vesalius.deploy.onnx import export_onnx

    if not onnx:
        raise InputError("name the format to export: --onnx")
    report = export_onnx(model, opset=opset, tolerance=tolerance)
    for checked in report.inputs:
        typer.echo(f"  input {list(checked.shape)}: max |onnx - torch| = {checked.max_abs_diff:.2e}")
    typer.echo(
        f"{report.exporter} exporter, opset {report.opset}: max difference {report.max_abs_diff:.2e} "
        f"(limit {report.tolerance:.0e}); {report.size_bytes / 1e6:.1f} MB"
    )
    typer.echo(f"wrote {report.path} (listed and hashed in {model / 'package.json'})")


def quantize(
    model: Path,
    int8: bool,
    calibration: Path,
    validation: Path | None,
    method: str,
    count: int,
    max_drop: float,
) -> None:
    from vesalius.deploy.package_int8 import quantize_package

    if not int8:
        raise InputError("name the precision to quantize to: --int8")
    if method not in ("minmax", "percentile", "entropy"):
        raise InputError(f"--method must be minmax, percentile or entropy; got {method!r}")
    report = quantize_package(
        model,
        calibration,
        validation=validation,
        method=method,  # type: ignore[arg-type]  # checked above
        count=count,
        max_drop_points=max_drop,
    )
    typer.echo(
        f"{report.calibration_inputs} calibration inputs ({report.method}); {report.gate.describe()}; "
        f"{report.fp32_bytes / 1e6:.1f} MB -> {report.int8_bytes / 1e6:.1f} MB"
    )
    typer.echo(f"wrote {report.path}")


def bench(
    model: Path,
    backends: list[str] | None,
    input_size: list[int] | None,
    batch: int,
    runs: int,
    threads: int | None,
    output: Path | None,
) -> None:
    from vesalius.deploy.bench import latency_table, write_reports_json
    from vesalius.deploy.package_bench import BACKENDS, bench_package
    from vesalius.engines.common.manifest import load_manifest

    files = load_manifest(model).files
    chosen = backends or [
        b for b in BACKENDS if not b.startswith("onnx") or ("model.int8.onnx" if "int8" in b else "model.onnx") in files
    ]
    reports = bench_package(model, chosen, input_size=input_size, batch=batch, runs=runs, threads=threads)
    typer.echo(latency_table(reports))
    if output is not None:
        typer.echo(f"wrote {write_reports_json(output, reports)}")


def predict_onnx(model: Path, inputs: list[Path], output: Path, int8: bool, overlap: float, tta: bool) -> None:
    """predict --backend onnxruntime: the same outputs as the torch path, from the package's ONNX graph."""
    from vesalius.deploy.runtime import INT8_FILE, ONNX_FILE, OnnxClassifier, OnnxSegmenter
    from vesalius.engines.common.manifest import load_manifest

    graph = INT8_FILE if int8 else ONNX_FILE
    task = load_manifest(model).task
    output.mkdir(parents=True, exist_ok=True)
    if task == "classification":
        from vesalius.engines.classification.images import input_sources

        classifier = OnnxClassifier(model, graph=graph)
        file = output / "predictions.csv"
        with file.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["input", "predicted", *[f"p_{name}" for name in classifier.plan.class_names]])
            sources = input_sources(inputs)
            for start in range(0, len(sources), 64):
                chunk = sources[start : start + 64]
                for (name, _), row in zip(chunk, classifier.probabilities([s for _, s in chunk]), strict=True):
                    writer.writerow([name, classifier.label(row), *[f"{p:.6f}" for p in row]])
        typer.echo(f"wrote {file}")
        return
    if task != "segmentation":
        raise InputError(f"{model}: --backend onnxruntime runs classification and segmentation packages")
    from vesalius.engines.segmentation.postprocess import output_name
    from vesalius.io import read_volume
    from vesalius.io.nifti import write_nifti

    segmenter = OnnxSegmenter(model, graph=graph, overlap=overlap, tta=tta)
    for source in inputs:
        typer.echo(f"wrote {write_nifti(segmenter.predict(read_volume(source)), output / output_name(source))}")


DATASET = "The dataset to train on: class folders, a CSV or a .npz (classification), an MSD folder (segmentation)."
FOLD = "Fold of the original's split to train on; its held-out cases score both models."
EPOCHS = "Training epochs (default: as many as the original was trained for; pruning: a quarter of them)."
ITERATIONS = "Segmentation: iterations per epoch (default: the original's)."
RUNS = "Timed calls for each model's latency."


def _print_report(report: object, output: Path) -> None:
    from vesalius.deploy.compress import REPORT_JSON, CompressionReport

    assert isinstance(report, CompressionReport)
    typer.echo(report.to_table())
    typer.echo(f"wrote {report.package} and {output / REPORT_JSON}")


def distill(
    teacher: Annotated[Path, typer.Argument(help="The teacher: a classification or segmentation package.")],
    dataset: Annotated[Path, typer.Argument(help=DATASET)],
    student: Annotated[
        str, typer.Option(help="The student's network: 'resnet10,width=0.25' (classification), 'filters=8:16:32:64'.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the student's run and package.")],
    temperature: Annotated[
        float | None, typer.Option(help="Softening of both outputs (default: 4 classification, 1 segmentation).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the teacher's soft targets (1 - alpha: the labels).")] = 0.5,
    hint_weight: Annotated[float, typer.Option(help="Weight of the feature hint (0: no hint).")] = 0.0,
    student_layer: Annotated[
        str | None, typer.Option(help="Hint layer of the student (default: its last stage).")
    ] = None,
    teacher_layer: Annotated[
        str | None, typer.Option(help="Hint layer of the teacher (default: its last stage).")
    ] = None,
    fold: Annotated[int, typer.Option(help=FOLD)] = 0,
    epochs: Annotated[int | None, typer.Option(help=EPOCHS)] = None,
    iterations: Annotated[int | None, typer.Option(help=ITERATIONS)] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    precision: Annotated[str, typer.Option(help="'auto', 'fp32', 'bf16' or 'fp16' (GPU).")] = "auto",
    runs: Annotated[int, typer.Option(help=RUNS)] = 20,
    baseline: Annotated[
        bool, typer.Option("--baseline", help="Also train the same student on the labels alone, for comparison.")
    ] = False,
) -> None:
    """Train a smaller student on the teacher's soft targets (and feature hints); report size, speed and metric."""
    from vesalius.deploy.compress import distill_package
    from vesalius.deploy.distill import DistillationSettings

    settings = DistillationSettings(temperature, alpha, hint_weight, student_layer, teacher_layer)
    report = distill_package(
        teacher, student, dataset, output, settings=settings, fold=fold, epochs=epochs, iterations=iterations,
        device=device, precision=precision, runs=runs, baseline=baseline,
    )  # fmt: skip
    _print_report(report, output)


def prune(
    model: Annotated[Path, typer.Argument(help="A ResNet classification or a DynUNet segmentation package.")],
    ratio: Annotated[float, typer.Option(help="Share of every layer's channels to remove, e.g. 0.5.")],
    data: Annotated[Path, typer.Option("--data", help=DATASET + " Used to fine-tune and to score.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the pruned and fine-tuned packages.")],
    fold: Annotated[int, typer.Option(help=FOLD)] = 0,
    epochs: Annotated[int | None, typer.Option(help=EPOCHS + " 0: prune only.")] = None,
    iterations: Annotated[int | None, typer.Option(help=ITERATIONS)] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    precision: Annotated[str, typer.Option(help="'auto', 'fp32', 'bf16' or 'fp16' (GPU).")] = "auto",
    runs: Annotated[int, typer.Option(help=RUNS)] = 20,
) -> None:
    """Remove the weakest channels (L1, whole groups), fine-tune, and report size, speed and metric."""
    from vesalius.deploy.compress import prune_package

    report = prune_package(
        model, ratio, data, output, fold=fold, epochs=epochs, iterations=iterations, device=device,
        precision=precision, runs=runs,
    )  # fmt: skip
    _print_report(report, output)
