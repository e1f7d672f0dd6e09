"""The classification engine end to end: plan a dataset, train a fold, calibrate, package, predict.

Three disjoint sets per fold, so no reported figure was tuned on the cases it is reported on:
- *training*: the fold's training patients minus a selection share;
- *selection* (15% of the training patients, grouped and stratified): picks the best epoch, fits the
  temperature and chooses the operating point;
- *evaluation*: the fold's held-out patients (``--fold K``), or the source's own validation split
  (``--fold official``, MedMNIST's ``val``); the package's metrics and PNGs are computed on it alone.
Items the source marks ``test`` are never used.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch

from vesalius.core.errors import InputError
from vesalius.engines.classification.dataset import (
    ClassificationDataset,
    ImageSource,
    Item,
    make_folds,
    official_split,
    read_classification_dataset,
    stratum,
)
from vesalius.engines.classification.images import (  # prepare_* re-exported: moved to the torch-free images
    input_sources,
    load_image,
    normalise,  # noqa: F401 - kept importable from here
    prepare_image,  # noqa: F401 - kept importable from here
    prepare_images,
)
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan, TaskKind, make_classification_plan, predicted_label
from vesalius.engines.classification.trainer import (
    ImageSet,
    Progress,
    main_probabilities,
    predict_logits,
    train_classifier,
    tta_flip_axes,
)
from vesalius.engines.common.calibration import apply_temperature, calibration_report, fit_temperature
from vesalius.engines.common.calibration import reliability_diagram as write_reliability_png
from vesalius.engines.common.cv import make_split
from vesalius.engines.common.guidance import Guidance
from vesalius.engines.common.metrics.classification import (
    choose_operating_point,
    classification_report,
    write_confusion_png,
    write_roc_png,
)
from vesalius.engines.common.package import ModelPackage, as_stored, load_package, save_package
from vesalius.engines.common.precision import autocast_dtype, pick_device

WEIGHTS_DTYPE = torch.float16  # what packages store: half the size, no measurable loss (figures are of these)
SELECTION_FOLDS = 7  # one of seven: about 15% of the training patients
GREY_TOLERANCE = 3.0  # 8-bit levels by which the channels of a grey image stored as colour may differ

__all__ = [
    "Classifier",
    "FitResult",
    "evaluate_predictions",
    "fit_classifier",
    "plan_classification",
    "predict_classification",
    "prepare_images",
]


@dataclass
class FitResult:
    package: Path
    metrics: dict[str, Any]
    run_dir: Path


def _kind(dataset: ClassificationDataset, kind: str | None) -> TaskKind:
    """The kind asked for, else the one the dataset suggests (multi-label, binary or multi-class)."""
    if kind is None:
        return dataset.kind
    if kind not in get_args(TaskKind):
        raise InputError(f"unknown task kind {kind!r}: {', '.join(get_args(TaskKind))}")
    return kind  # type: ignore[return-value]


def _is_grey(image: npt.NDArray[np.float32]) -> bool:
    """One channel, or three that agree within JPEG rounding (a grey X-ray saved as RGB)."""
    return image.shape[0] == 1 or bool(np.abs(image - image[:1]).max() <= GREY_TOLERANCE)


def plan_classification(
    dataset: ClassificationDataset,
    kind: str | None = None,
    slices: int = 1,
    architecture: str | None = None,
    sample: int = 64,
    *,
    input_size: Sequence[int] | None = None,
    width: float | None = None,
    batch_size: int | None = None,
    flip_axes: Sequence[int] | None = None,
    patient_pattern: str | None = None,
) -> ClassificationPlan:
    """Median image size and channels from up to ``sample`` items, class counts from all of them; the
    keyword options override the derived input size, network width and batch size."""
    usable = [item for item in dataset.items if item.split != "test"]
    step = max(1, len(usable) // sample)
    images = [load_image(item.source) for item in usable[::step][:sample]]
    shapes = [image.shape for image in images]
    channels = 1 if all(_is_grey(image) for image in images) else int(np.median([s[0] for s in shapes]))
    median = [float(np.median([s[axis] for s in shapes])) for axis in range(1, len(shapes[0]))]
    plan = make_classification_plan(
        dataset_name=dataset.name,
        kind=_kind(dataset, kind),
        class_names=dataset.class_names,
        class_counts=dataset.class_counts(),
        median_size=median,
        channels=1 if channels not in (1, 3) else channels,
        extra_targets=dataset.extra_targets,
        slices=slices,
        architecture=architecture,
        input_size=input_size,
        width=width,
        batch_size=batch_size,
        flip_axes=flip_axes,
    )
    return plan.model_copy(update={"patient_pattern": patient_pattern})  # so a rebuilt split groups alike


def _image_set(items: list[Item], plan: ClassificationPlan) -> ImageSet:
    extra = {name: np.asarray([item.extra.get(name, 0) for item in items], np.int64) for name in plan.extra_targets}
    return ImageSet(
        ids=[item.item_id for item in items],
        images=prepare_images([item.source for item in items], plan),
        labels=np.asarray([item.label for item in items], dtype=np.int64),
        extra=extra,
    )


def _strata(items: list[Item]) -> dict[str, int]:
    return {item.item_id: stratum(item.label) for item in items}


def split_items(
    dataset: ClassificationDataset, plan: ClassificationPlan, fold: int | Literal["official"], run_root: Path
) -> tuple[list[Item], list[Item], list[Item]]:
    """(training, selection, evaluation) items of ``fold``; see the module notes."""
    if fold == "official":
        pool_ids, evaluation_ids = official_split(dataset)
    else:
        split = make_folds(dataset, plan.folds, plan.seed, path=run_root / "splits.json").fold(fold)
        pool_ids, evaluation_ids = split.train, split.validation
    in_pool, in_evaluation = set(pool_ids), set(evaluation_ids)
    pool = [item for item in dataset.items if item.item_id in in_pool]  # in dataset order
    evaluation = [item for item in dataset.items if item.item_id in in_evaluation]
    inner = make_split(
        [item.item_id for item in pool],
        SELECTION_FOLDS,
        plan.seed,
        groups={item.item_id: item.patient_id for item in pool},
        strata=_strata(pool),
    )
    chosen = set(inner.fold(0).validation)
    return [i for i in pool if i.item_id not in chosen], [i for i in pool if i.item_id in chosen], evaluation


def _calibrated(plan: ClassificationPlan, logits: npt.NDArray[np.float32], temperature: float) -> npt.NDArray[Any]:
    if plan.kind in ("binary", "multiclass"):
        return apply_temperature(logits, temperature)
    return main_probabilities(plan, logits)


def fit_classifier(
    dataset: ClassificationDataset | Path | str,
    plan: ClassificationPlan,
    fold: int | Literal["official"],
    output_dir: Path | str,
    *,
    device: str = "auto",
    precision: str = "auto",
    epochs: int | None = None,
    progress: Progress | None = None,
    dataset_options: dict[str, Any] | None = None,
    guidance: Guidance | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train one fold, calibrate and choose the operating point on the selection set, report on evaluation.

    ``dataset`` is a read dataset, or its path (read with ``dataset_options``). ``guidance`` and
    ``initial_state`` go to the trainer (a student's teacher, a pruned model's weights); ``lineage`` (where the
    model came from) is stored in the package's metrics."""
    if not isinstance(dataset, ClassificationDataset):
        options = dataset_options or ({"patient_pattern": plan.patient_pattern} if plan.patient_pattern else {})
        dataset = read_classification_dataset(dataset, **options)
    root = Path(output_dir)
    run = root / (f"fold_{fold}" if fold != "official" else "official")
    training, selection, evaluation = split_items(dataset, plan, fold, root)
    train_set, selection_set = _image_set(training, plan), _image_set(selection, plan)
    result = train_classifier(
        plan,
        train_set,
        selection_set,
        run,
        device=device,
        precision=precision,
        epochs=epochs,
        progress=progress,
        guidance=guidance,
        initial_state=initial_state,
    )
    shipped = as_stored(result.state_dict, WEIGHTS_DTYPE)  # every figure below is of the weights the package holds
    network = ClassificationNetwork.build(plan.network)
    network.load_state_dict(shipped)
    target = pick_device(device)
    network = network.to(target)
    dtype = autocast_dtype(target, precision)
    selection_logits = predict_logits(network, selection_set.images, target, dtype, flip_axes=tta_flip_axes(plan))
    temperature, threshold = 1.0, None
    if plan.kind in ("binary", "multiclass"):
        temperature = fit_temperature(selection_logits["main"], selection_set.labels)
    if plan.kind == "binary":
        calibrated = _calibrated(plan, selection_logits["main"], temperature)
        threshold = choose_operating_point(selection_set.labels, calibrated[:, 1])
    evaluation_set = _image_set(evaluation, plan)
    logits = predict_logits(network, evaluation_set.images, target, dtype, flip_axes=tta_flip_axes(plan))
    probabilities = _calibrated(plan, logits["main"], temperature)
    report = classification_report(evaluation_set.labels, probabilities, plan.kind, plan.class_names, threshold)
    write_roc_png(run / "roc.png", evaluation_set.labels, probabilities, plan.class_names)
    if report.confusion:
        write_confusion_png(run / "confusion.png", report.confusion, plan.class_names)
    metrics: dict[str, Any] = {
        "fold": fold,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "selection_score": result.best_score,
        "training_seconds": result.seconds,
        "cases": {"training": len(training), "selection": len(selection), "evaluation": len(evaluation)},
        "evaluation": json.loads(report.model_dump_json()),
        **({"lineage": dict(lineage)} if lineage else {}),
    }
    if plan.kind in ("binary", "multiclass"):
        calibration = calibration_report(logits["main"], evaluation_set.labels, temperature)
        metrics["calibration"] = calibration.model_dump()
        write_reliability_png(
            run / "reliability.png",
            evaluation_set.labels,
            _calibrated(plan, logits["main"], 1.0),
            probabilities,
        )
    (run / "evaluation.md").write_text(f"# {dataset.name}, fold {fold}: evaluation set\n\n{report.to_table()}\n")
    listing = "\n".join(f"{item.item_id}\t{item.label}" for item in dataset.items)
    fingerprint = {
        "name": dataset.name,
        "items": len(dataset.items),
        "class_counts": dataset.class_counts(),
        "content_hash": "sha256:" + hashlib.sha256(listing.encode()).hexdigest(),
    }
    package = save_package(
        run / "model",
        name=dataset.name.lower().replace(" ", "-").replace("_", "-"),
        version="0.1.0",
        task="classification",
        labels=dict(enumerate(plan.class_names)),
        plan=plan,
        metrics=metrics,
        data_fingerprint=fingerprint,
        state_dict=shipped,
        overwrite=True,
        postprocessing={"temperature": temperature, "threshold": threshold},
        weights_dtype=WEIGHTS_DTYPE,
    )
    return FitResult(package=package, metrics=metrics, run_dir=run)


class Classifier:
    """A classification package loaded once (verified) and ready on a device: calibrated probabilities and
    labels for image sources, as ``predict`` writes them."""

    def __init__(self, package_dir: Path | str, *, device: str = "auto", precision: str = "auto") -> None:
        package: ModelPackage = load_package(package_dir)
        if package.manifest.task != "classification":
            raise InputError(f"{package_dir}: a {package.manifest.task} package, not a classification one")
        self.manifest = package.manifest
        self.plan = ClassificationPlan.model_validate(package.manifest.plan)
        self.temperature = float(package.manifest.postprocessing.get("temperature", 1.0))
        threshold = package.manifest.postprocessing.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.device = pick_device(device)
        network = ClassificationNetwork.build(self.plan.network)
        network.load_state_dict(package.state_dict())
        self.network = network.to(self.device)
        self.dtype = autocast_dtype(self.device, precision)

    def probabilities(self, sources: Sequence[ImageSource]) -> npt.NDArray[Any]:
        """(N, classes): calibrated probabilities (per label for multi-label tasks)."""
        images = prepare_images(sources, self.plan)
        flips = tta_flip_axes(self.plan)
        logits = predict_logits(self.network, images, self.device, self.dtype, flip_axes=flips)["main"]
        return _calibrated(self.plan, logits, self.temperature)

    def label(self, row: npt.NDArray[Any]) -> str:
        """The predicted class: the operating point for binary tasks, labels at 0.5 for multi-label ones."""
        return predicted_label(self.plan, row, self.threshold)


def predict_classification(
    package_dir: Path | str,
    inputs: Sequence[Path | str],
    output_dir: Path | str,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
) -> Path:
    """Write ``predictions.csv``: input, predicted label, one calibrated probability column per class."""
    classifier = Classifier(package_dir, device=device, precision=precision)
    sources = input_sources(inputs)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    file = output / "predictions.csv"
    with file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "predicted", *[f"p_{name}" for name in classifier.plan.class_names]])
        for start in range(0, len(sources), batch_size):
            chunk = sources[start : start + batch_size]
            probabilities = classifier.probabilities([source for _, source in chunk])
            for (name, _), row in zip(chunk, probabilities, strict=True):
                writer.writerow([name, classifier.label(row), *[f"{p:.6f}" for p in row]])
    return file


def _key(name: str) -> str:
    """Inputs match references by resolved path (and array and index inside a .npz)."""
    path, _, rest = name.partition(".npz:")
    return f"{Path(path + '.npz').resolve()}:{rest}" if rest else str(Path(name).resolve())


def evaluate_predictions(
    predictions_csv: Path | str,
    reference: Path | str,
    *,
    kind: str | None = None,
    threshold: float | None = None,
    output: Path | str | None = None,
    dataset_options: dict[str, Any] | None = None,
) -> Any:
    """Score a predictions.csv against a labelled dataset (class folders, CSV or .npz) holding its inputs."""
    dataset = read_classification_dataset(reference, **(dataset_options or {}))
    label_of = {_key(str(item.source)): item.label for item in dataset.items}
    with Path(predictions_csv).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("p_")]
    if not rows or not columns:
        raise InputError(f"{predictions_csv}: expected the columns input, predicted, p_<class>... and one row or more")
    missing = [row["input"] for row in rows if _key(row["input"]) not in label_of]
    if missing:
        raise InputError(f"{predictions_csv}: {len(missing)} input(s) have no label in {reference}, e.g. {missing[0]}")
    labels = np.asarray([label_of[_key(row["input"])] for row in rows], dtype=np.int64)
    probabilities = np.asarray([[float(row[c]) for c in columns] for row in rows])
    chosen = _kind(dataset, kind)
    report = classification_report(labels, probabilities, chosen, dataset.class_names, threshold)
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evaluation.json").write_text(report.model_dump_json(indent=1) + "\n")
        (folder / "evaluation.md").write_text(report.to_table() + "\n")
        write_roc_png(folder / "roc.png", labels, probabilities, dataset.class_names)
        if report.confusion:
            write_confusion_png(folder / "confusion.png", report.confusion, dataset.class_names)
    return report
