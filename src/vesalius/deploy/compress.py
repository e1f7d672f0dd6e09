"""``vesalius distill`` and ``vesalius prune``: a smaller model from a package, trained with the task's own engine,
reported against the original on size, speed and metric.

Both train one fold of the original's split (``fold``, 0 by default): the split is rebuilt from the plan's seed,
so the fold's held-out cases are the ones the original's own figures came from, and the metric of both models is
computed on them by the same code (classification: the package's calibrated probabilities, AUC or quadratic
kappa; segmentation: the predict path on each case's own grid without TTA, mean foreground Dice). A model
trained on every case (the shipped hippocampus) has seen those cases; the report says so.

Speed is the network alone in torch FP32 on one input of the plan's size, warm-up excluded (``bench_package``);
``vesalius export``/``quantize``/``bench`` then work on the result as on any package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from vesalius.core.errors import InputError
from vesalius.deploy.distill import Distillation, DistillationSettings
from vesalius.deploy.onnx import package_network
from vesalius.deploy.package_bench import bench_package
from vesalius.deploy.prune import ForwardFunction, pruned_state
from vesalius.deploy.student import Plan, narrower_plan, student_plan
from vesalius.engines.common.guidance import Guidance
from vesalius.engines.common.package import ModelPackage, load_package, resave_package

Method = Literal["distillation", "pruning"]
DEFAULT_TEMPERATURE = {"classification": 4.0, "segmentation": 1.0}  # see DistillationSettings
REPORT_JSON, REPORT_TABLE, PRUNED_DIR, BASELINE_DIR = "compression.json", "compression.md", "pruned", "baseline"

__all__ = ["CompressionReport", "ModelFigures", "distill_package", "prune_package"]


class ModelFigures(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: str
    package: str
    parameters: int
    weights_mb: float
    p50_ms: float
    metric: float


class CompressionReport(BaseModel):
    """The original and what was made from it, measured alike; ``seen_by_original`` is true when the original was
    trained on the evaluation cases (its figure is then optimistic)."""

    model_config = ConfigDict(frozen=True)

    method: Method
    task: str
    metric: str
    evaluation: str
    evaluation_items: int
    seen_by_original: bool
    settings: dict[str, Any]
    models: list[ModelFigures]

    @property
    def package(self) -> Path:
        """The final model: the last row."""
        return Path(self.models[-1].package)

    def to_table(self) -> str:
        base = self.models[0]
        lines = [
            f"| Model | Parameters | Weights MB | Torch FP32 p50 ms | Speed-up | {self.metric} | Change (points) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.models:
            change = 100 * (row.metric - base.metric)
            lines.append(
                f"| {row.role} | {row.parameters:,} | {row.weights_mb:.2f} | {row.p50_ms:.2f} | "
                f"{base.p50_ms / row.p50_ms:.2f}x | {row.metric:.4f} | {change:+.2f} |"
            )
        note = (
            " (the original was trained on these cases, so its figure is optimistic)" if self.seen_by_original else ""
        )
        lines += ["", f"{self.metric} on {self.evaluation_items} {self.evaluation}{note}."]
        return "\n".join(lines)


@dataclass
class _Task:
    """What distillation and pruning need from a task engine."""

    name: str
    plan: Plan
    network: Callable[[Plan], torch.nn.Module]
    example_shape: tuple[int, ...]
    activation: Literal["softmax", "sigmoid"]
    keep: tuple[str, ...]  # output layers: their channels are the classes
    train: Callable[..., Path]  # (plan, epochs, iterations, folder, **trainer options) -> package
    score: Callable[[Path], tuple[float, int]]
    metric: str
    evaluation: str
    seen_by_original: bool
    plan_epochs: int
    forward: ForwardFunction | None = None  # how to trace every output layer, when not a plain call


def _classification_task(
    original: ModelPackage, dataset: Path, fold: int, output: Path, device: str, precision: str
) -> _Task:
    from vesalius.engines.classification.dataset import read_classification_dataset
    from vesalius.engines.classification.engine import Classifier, fit_classifier, split_items
    from vesalius.engines.classification.networks import ClassificationNetwork
    from vesalius.engines.classification.plan import ClassificationPlan
    from vesalius.engines.classification.trainer import probability_score

    plan = ClassificationPlan.model_validate(original.manifest.plan)
    data = read_classification_dataset(dataset, patient_pattern=plan.patient_pattern)
    evaluation = split_items(data, plan, fold, output)[2]
    labels = np.asarray([item.label for item in evaluation])

    def score(package: Path) -> tuple[float, int]:
        model = Classifier(package, device=device, precision=precision)
        sources = [item.source for item in evaluation]
        probabilities = np.concatenate([model.probabilities(sources[i : i + 64]) for i in range(0, len(sources), 64)])
        return probability_score(model.plan, labels, probabilities), len(evaluation)

    def train(plan: Plan, epochs: int | None, iterations: int | None, folder: Path, **extra: Any) -> Path:
        del iterations  # classification counts epochs
        assert isinstance(plan, ClassificationPlan)
        fitted = fit_classifier(data, plan, fold, folder, device=device, precision=precision, epochs=epochs, **extra)
        return fitted.package

    return _Task(
        name="classification",
        plan=plan,
        network=lambda p: ClassificationNetwork.build(p.network),  # type: ignore[arg-type]
        example_shape=(1, plan.network.in_channels, *plan.input_size),
        activation="softmax" if plan.kind in ("binary", "multiclass") else "sigmoid",
        keep=("heads",),
        train=train,
        score=score,
        metric="quadratic kappa" if plan.kind == "ordinal" else "AUC",
        evaluation=f"held-out images of fold {fold}",
        seen_by_original=original.manifest.metrics.get("fold") != fold,
        plan_epochs=plan.epochs,
    )


def _segmentation_task(
    original: ModelPackage, dataset: Path, fold: int, output: Path, device: str, precision: str
) -> _Task:
    from vesalius.engines.common.cv import load_or_make_split
    from vesalius.engines.common.dataset import load_case, read_msd_dataset
    from vesalius.engines.common.metrics.segmentation import dice
    from vesalius.engines.common.plan import SegmentationPlan
    from vesalius.engines.common.precision import pick_device
    from vesalius.engines.segmentation.predict import Predictor
    from vesalius.engines.segmentation.trainer import train_fold

    plan = SegmentationPlan.model_validate(original.manifest.plan)
    data = read_msd_dataset(dataset)
    by_id = {case.case_id: case for case in data.cases}
    split = load_or_make_split(output / "splits.json", list(by_id), plan.training.folds, plan.training.seed)
    held_out = split.fold(fold).validation
    validated_on = original.manifest.metrics.get("validation_cases") or []

    def score(package: Path) -> tuple[float, int]:
        predictor = Predictor(load_package(package), device=pick_device(device), tta=False, precision=precision)
        values = []
        for case_id in held_out:
            case = load_case(data, by_id[case_id])
            predicted = predictor.predict(case.image).array
            values += [dice(predicted == k, case.label.array == k) for k in plan.labels if k != 0]
        return float(np.mean(values)), len(held_out)

    def train(plan: Plan, epochs: int | None, iterations: int | None, folder: Path, **extra: Any) -> Path:
        result = train_fold(
            dataset, plan, fold, folder, device=device, epochs=epochs, iterations_per_epoch=iterations,  # type: ignore[arg-type]
            precision=precision, postprocessing=original.manifest.postprocessing, **extra,
        )  # fmt: skip
        return result.package

    def forward(network: torch.nn.Module, images: torch.Tensor) -> object:
        """Every output a U-Net trains, deep-supervision heads included (they read decoder features)."""
        out = network.output_block(network.skip_layers(images))  # type: ignore[operator]
        return [out, *network.heads]  # type: ignore[misc]

    return _Task(
        name="segmentation",
        plan=plan,
        network=lambda p: p.network.build(),  # type: ignore[union-attr]
        example_shape=(1, plan.network.in_channels, *plan.patch_size),
        activation="softmax",
        keep=("output_block", "deep_supervision_heads"),
        train=train,
        score=score,
        metric="Dice",
        evaluation=f"cases of fold {fold}'s validation set",
        seen_by_original=not set(held_out) <= set(validated_on),
        plan_epochs=plan.training.epochs,
        forward=forward,
    )


def _task(original: ModelPackage, dataset: Path, fold: int, output: Path, device: str, precision: str) -> _Task:
    builders = {"classification": _classification_task, "segmentation": _segmentation_task}
    if original.manifest.task not in builders:
        raise InputError(f"{original.folder}: distil and prune take classification and segmentation packages")
    return builders[original.manifest.task](original, dataset, fold, output, device, precision)


def _trained_length(original: ModelPackage) -> tuple[int | None, int | None]:
    """(epochs, iterations per epoch) the original was trained for, as its package records them."""
    metrics = original.manifest.metrics
    epochs, iterations = metrics.get("epochs"), metrics.get("iterations_per_epoch")
    return (int(epochs) if epochs else None), (int(iterations) if iterations else None)


def _figures(role: str, package: Path, metric: float, runs: int) -> ModelFigures:
    parameters = sum(p.numel() for p in package_network(package).parameters())  # shared tensors once
    latency = bench_package(package, ["torch"], runs=runs)[0]
    return ModelFigures(
        role=role,
        package=str(package),
        parameters=parameters,
        weights_mb=(package / "weights.safetensors").stat().st_size / 1e6,
        p50_ms=latency.p50_ms,
        metric=metric,
    )


def _origin(original: ModelPackage) -> dict[str, Any]:
    manifest = original.manifest
    return {"name": manifest.name, "version": manifest.version, "manifest_sha256": manifest.manifest_sha256}


def _start(
    source: Path | str, dataset: Path | str, fold: int, output: Path | str, device: str, precision: str
) -> tuple[ModelPackage, Path, _Task, torch.nn.Module]:
    """The original package, the output folder (made), the task, and the original's network with its weights."""
    original = load_package(source)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    return original, out, _task(original, Path(dataset), fold, out, device, precision), package_network(source)


def _write(
    method: Method, task: _Task, settings: dict[str, Any], models: list[ModelFigures], items: int, output: Path
) -> CompressionReport:
    """The report, also as ``OUTPUT/compression.json`` and ``.md``."""
    report = CompressionReport(
        method=method,
        task=task.name,
        metric=task.metric,
        evaluation=task.evaluation,
        evaluation_items=items,
        seen_by_original=task.seen_by_original,
        settings=settings,
        models=models,
    )
    (output / REPORT_JSON).write_text(report.model_dump_json(indent=1) + "\n")
    (output / REPORT_TABLE).write_text(f"# {method.capitalize()}\n\n{report.to_table()}\n")
    return report


def distill_package(
    teacher: Path | str,
    student: str,
    dataset: Path | str,
    output: Path | str,
    *,
    settings: DistillationSettings | None = None,
    fold: int = 0,
    epochs: int | None = None,
    iterations: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    runs: int = 20,
    baseline: bool = False,
) -> CompressionReport:
    """Train the ``student`` network (a spec, see ``vesalius.deploy.student``) on ``dataset`` with the teacher's
    soft targets (and hints); the student package is ``OUTPUT/fold_K/model``. With ``baseline`` the same student
    is also trained on the labels alone (``OUTPUT/baseline``), which shows what the teacher added."""
    original, out, task, network = _start(teacher, dataset, fold, output, device, precision)
    chosen = settings or DistillationSettings()
    if chosen.temperature is None:
        chosen = replace(chosen, temperature=DEFAULT_TEMPERATURE[task.name])
    plan = student_plan(task.plan, student)
    guidance: Guidance = Distillation(network, chosen, task.activation, task.example_shape)
    lineage = {"method": "distillation", "teacher": _origin(original), "student": student, **chosen.__dict__}
    trained_epochs, trained_iterations = _trained_length(original)
    epochs, iterations = epochs or trained_epochs, iterations or trained_iterations
    package = task.train(plan, epochs, iterations, out, guidance=guidance, lineage=lineage)
    metric, items = task.score(Path(teacher))
    rows = [_figures("teacher", Path(teacher), metric, runs)]
    if baseline:
        alone = task.train(plan, epochs, iterations, out / BASELINE_DIR, lineage={"method": "labels only"})
        rows.append(_figures("same student, labels only", alone, task.score(alone)[0], runs))
    rows.append(_figures(f"student ({student})", package, task.score(package)[0], runs))
    return _write("distillation", task, lineage, rows, items, out)


def prune_package(
    model: Path | str,
    ratio: float,
    dataset: Path | str,
    output: Path | str,
    *,
    fold: int = 0,
    epochs: int | None = None,
    iterations: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    runs: int = 20,
) -> CompressionReport:
    """Remove ``ratio`` of the channels (``OUTPUT/pruned``), then fine-tune on ``dataset`` (``OUTPUT/fold_K/model``);
    ``epochs=0`` stops after pruning."""
    original, out, task, network = _start(model, dataset, fold, output, device, precision)
    plan = narrower_plan(task.plan, ratio)
    example = torch.zeros(task.example_shape)
    state = pruned_state(network, task.network(plan), example, keep=task.keep, forward=task.forward)
    lineage: dict[str, Any] = {"method": "pruning", "original": _origin(original), "ratio": ratio, "importance": "L1"}
    pruned = resave_package(  # the original's labels, post-processing and data fingerprint
        original,
        out / PRUNED_DIR,
        state_dict=state,
        weights_dtype=torch.float16,
        plan=json.loads(plan.model_dump_json()),
        metrics={"lineage": lineage},
    )
    metric, items = task.score(Path(model))
    rows = [
        _figures("original", Path(model), metric, runs),
        _figures(f"pruned {ratio:.0%}", pruned, task.score(pruned)[0], runs),
    ]
    trained_epochs, trained_iterations = _trained_length(original)
    if epochs is None:
        epochs = max(1, (trained_epochs or task.plan_epochs) // 4)
    iterations = iterations or trained_iterations
    if epochs > 0:
        lineage["fine_tune_epochs"] = epochs
        tuned = task.train(plan, epochs, iterations, out, initial_state=state, lineage=lineage)
        rows.append(_figures(f"pruned {ratio:.0%}, fine-tuned", tuned, task.score(tuned)[0], runs))
    return _write("pruning", task, lineage, rows, items, out)
