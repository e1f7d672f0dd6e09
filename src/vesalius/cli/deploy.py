"""The deployment side of the ``vesalius`` command: export, quantize, bench, and predict on ONNX Runtime."""

from __future__ import annotations

import csv
from pathlib import Path

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
