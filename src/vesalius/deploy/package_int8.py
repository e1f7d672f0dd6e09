"""``vesalius quantize MODEL --int8``: a package's FP32 graph quantised with real calibration inputs, then
gated on the package's own validation metric (AUC for a classifier, mean foreground Dice for a segmenter)
computed through the whole ONNX Runtime pipeline, and added to the package only when it passes.

Calibration inputs are prepared exactly as for inference: classifier images resized and normalised; for a
segmenter, patch-sized windows of preprocessed cases centred on labelled voxels and on random points, so the
activation ranges cover both the structure and the background. Validation inputs are different items.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from vesalius.core.errors import InputError
from vesalius.deploy.onnx import ONNX_FILE
from vesalius.deploy.quantize import AccuracyGate, check_gate, gate, quantize_int8
from vesalius.deploy.runtime import INT8_FILE, OnnxClassifier, OnnxSegmenter
from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.images import prepare_images
from vesalius.engines.common.dataset import Case, SegmentationDataset, load_case, read_msd_dataset
from vesalius.engines.common.metrics.classification import binary_metrics, multiclass_metrics
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package, resave_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.segmentation.preprocess import preprocess_image, preprocess_label

Method = Literal["minmax", "percentile", "entropy"]

__all__ = ["QuantizeReport", "calibration_patches", "onnx_auc", "quantize_package"]


class QuantizeReport(BaseModel):
    """What was quantised with what, and the gate's verdict; ``path`` is None when the gate refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None
    method: str
    calibration_inputs: int
    validation_items: int
    gate: AccuracyGate
    fp32_bytes: int
    int8_bytes: int


def onnx_auc(classifier: OnnxClassifier, sources: list[Any], labels: npt.NDArray[np.int64]) -> float:
    """AUC of the package's calibrated probabilities, as the runtime computes them, on labelled images."""
    probabilities = np.concatenate([classifier.probabilities(sources[i : i + 64]) for i in range(0, len(sources), 64)])
    if probabilities.shape[1] == 2:
        return float(binary_metrics()["auc"](labels, probabilities[:, 1]))
    names = [str(k) for k in range(probabilities.shape[1])]
    return float(multiclass_metrics(names)["auc"](labels, probabilities))


def _classification(
    folder: Path, calibration: Path, validation: Path | None, count: int, validation_count: int, seed: int
) -> tuple[list[npt.NDArray[np.float32]], Any]:
    """Calibration batches, and a function scoring a graph's AUC on validation items."""
    fp32 = OnnxClassifier(folder)
    pattern = fp32.plan.patient_pattern
    pool = list(read_classification_dataset(calibration, patient_pattern=pattern).items)
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[:count]]
    if validation is not None:
        held = list(read_classification_dataset(validation, patient_pattern=pattern).items)
    else:
        held = [pool[i] for i in order[count:]]
    held = held[:validation_count]
    if not chosen or len({item.label for item in held}) < 2:
        raise InputError(f"{calibration}: need calibration images and validation images of at least two classes")
    images = prepare_images([item.source for item in chosen], fp32.plan)
    batches = [images[i : i + 8] for i in range(0, len(images), 8)]
    labels = np.asarray([item.label for item in held], dtype=np.int64)
    sources = [item.source for item in held]

    def score(package: Path, graph: str) -> float:
        return onnx_auc(OnnxClassifier(package, graph=graph), sources, labels)

    return batches, (score, "AUC", len(held))


def _patch(image: npt.NDArray[np.float32], centre: npt.NDArray[Any], size: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """A patch-sized window (C, *size) around ``centre``, zero-padded where it leaves the image."""
    channels_first = np.moveaxis(image, -1, 0)
    padded = np.pad(channels_first, [(0, 0)] + [(s, s) for s in size])
    starts = [int(c) + s - s // 2 for c, s in zip(centre, size, strict=True)]
    window = (slice(None), *(slice(a, a + s) for a, s in zip(starts, size, strict=True)))
    return np.ascontiguousarray(padded[window], dtype=np.float32)


def calibration_patches(
    dataset: SegmentationDataset, cases: Sequence[Case], plan: SegmentationPlan, rng: np.random.Generator
) -> list[npt.NDArray[np.float32]]:
    """Per case, a patch (1, C, *patch) at a random point and one centred on a random labelled voxel."""
    patches: list[npt.NDArray[np.float32]] = []
    for case in cases:
        loaded = load_case(dataset, case)
        prepared = preprocess_image(loaded.image, plan)
        foreground = np.argwhere(np.asarray(preprocess_label(loaded.label, plan).array) > 0)
        shape = np.asarray(prepared.shape[:3])
        centres = [rng.integers(0, shape)] + ([foreground[rng.integers(len(foreground))]] if len(foreground) else [])
        patches += [_patch(prepared.array, centre, tuple(plan.patch_size))[None] for centre in centres]
    return patches


def _segmentation(
    folder: Path, calibration: Path, validation: Path | None, count: int, validation_count: int, seed: int
) -> tuple[list[npt.NDArray[np.float32]], Any]:
    """Calibration patches, and a function scoring a graph's mean foreground Dice on validation cases."""
    fp32 = OnnxSegmenter(folder)
    plan, rng = fp32.plan, np.random.default_rng(seed)
    dataset = read_msd_dataset(calibration)
    order = rng.permutation(len(dataset.cases))
    patches = calibration_patches(dataset, [dataset.cases[i] for i in order[: max(1, count // 2)]], plan, rng)
    held_data = read_msd_dataset(validation) if validation is not None else dataset
    held_cases = list(held_data.cases) if validation is not None else [dataset.cases[i] for i in order[count // 2 :]]
    held_cases = held_cases[:validation_count]
    if not held_cases:
        raise InputError(f"{calibration}: no cases left for validation; pass --validation or use fewer --count")
    loaded_cases = [load_case(held_data, case) for case in held_cases]
    classes = [c for c in plan.labels if c > 0]

    def score(package: Path, graph: str) -> float:
        segmenter = OnnxSegmenter(package, graph=graph)
        values = []
        for case in loaded_cases:
            labels = segmenter.predict(case.image).array
            values += [dice(labels == c, case.label.array == c) for c in classes]
        return float(np.mean(values))

    return patches, (score, "Dice", len(held_cases))


def quantize_package(
    package_dir: Path | str,
    calibration: Path | str,
    *,
    validation: Path | str | None = None,
    method: Method = "minmax",
    count: int = 64,
    validation_count: int = 200,
    max_drop_points: float = 1.0,
    seed: int = 0,
) -> QuantizeReport:
    """Quantise ``model.onnx`` to INT8 (QDQ) with ``count`` calibration inputs drawn from ``calibration``; add
    ``model.int8.onnx`` only when its validation metric is at most ``max_drop_points`` below FP32's."""
    folder = Path(package_dir)
    package = load_package(folder)
    if ONNX_FILE not in package.manifest.files:
        raise InputError(f"{folder}: no {ONNX_FILE} to quantise; run `vesalius export {folder} --onnx` first")
    build = {"classification": _classification, "segmentation": _segmentation}.get(package.manifest.task)
    if build is None:
        raise InputError(f"{folder}: INT8 quantisation covers classification and segmentation packages")
    if count < 1:
        raise InputError(f"count must be >= 1; got {count}")
    inputs, (score, metric, n_validation) = build(
        folder, Path(calibration), None if validation is None else Path(validation), count, validation_count, seed
    )
    with tempfile.TemporaryDirectory(prefix=".int8-") as scratch:
        int8 = quantize_int8(folder / ONNX_FILE, Path(scratch) / INT8_FILE, inputs, method=method)
        trial = Path(scratch) / "package"  # scored through a copy: the package never holds an ungated graph
        shutil.copytree(folder, trial, ignore=shutil.ignore_patterns(".*"))
        resave_package(load_package(trial), extra_files={INT8_FILE: int8})
        result = gate(metric, score(trial, ONNX_FILE), score(trial, INT8_FILE), max_drop_points)
        int8_bytes = int8.stat().st_size
        if result.passed:
            resave_package(package, extra_files={INT8_FILE: int8})
    report = QuantizeReport(
        path=folder / INT8_FILE if result.passed else None,
        method=method,
        calibration_inputs=sum(len(batch) for batch in inputs),
        validation_items=n_validation,
        gate=result,
        fp32_bytes=(folder / ONNX_FILE).stat().st_size,
        int8_bytes=int8_bytes,
    )
    check_gate(result)
    return report
