"""Training one fold (or all cases) of a segmentation plan: DynUNet, deep supervision, Dice + CE, SGD poly.

The loop is deliberately small; what a task owns (data, network, loss, validation) comes from the plan, the
sampler and the predictor. It resumes from its last checkpoint, validates with the same sliding window the
predictor uses, records how long each step waited for data (so a starved GPU shows), and ends by writing a
model package with the best weights, the plan, the metrics and the dataset fingerprint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses.dice import DiceCELoss
from monai.losses.ds_loss import DeepSupervisionLoss

from vesalius.engines.common.checkpoint import resume_checkpoint, save_best, save_checkpoint
from vesalius.engines.common.curves import plot_curves
from vesalius.engines.common.cv import load_or_make_split
from vesalius.engines.common.dataset import SegmentationDataset, read_msd_dataset
from vesalius.engines.common.fingerprint import DatasetFingerprint, compute_fingerprint
from vesalius.engines.common.guidance import Guidance
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import save_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.common.precision import autocast_dtype, pick_device
from vesalius.engines.segmentation.cache import preprocessed_arrays
from vesalius.engines.segmentation.run_layout import stored_cv_metrics, stored_postprocessing
from vesalius.engines.segmentation.sampling import Batch, TrainingLoader, sampler_from_plan, training_case
from vesalius.engines.segmentation.sliding_window import sliding_window_probabilities

Progress = Callable[[dict[str, Any]], None]


@dataclass
class FoldResult:
    fold: int | None
    epochs: int
    best_epoch: int
    best_dice: dict[str, float]
    package: Path
    curves: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def _poly_lr(plan: SegmentationPlan, epoch: int, epochs: int) -> float:
    return float(plan.optimizer.lr * (1.0 - epoch / epochs) ** plan.optimizer.poly_exponent)


def _validation_dice(
    network: torch.nn.Module,
    cases: list[tuple[np.ndarray, np.ndarray]],
    plan: SegmentationPlan,
    device: torch.device,
    dtype: torch.dtype | None,
) -> dict[str, float]:
    """Mean Dice per foreground class over the validation cases, in the preprocessed grid."""
    network.eval()
    per_class: dict[int, list[float]] = {label: [] for label in range(1, plan.num_classes)}
    for image, label in cases:
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))[None]
        probabilities = sliding_window_probabilities(network, tensor, plan.patch_size, device=device, dtype=dtype)
        predicted = probabilities.argmax(dim=1)[0].numpy()
        for value in per_class:
            per_class[value].append(dice(predicted == value, label == value))
    network.train()
    scores = {plan.labels.get(value, str(value)): float(np.mean(v)) for value, v in per_class.items() if v}
    scores["mean"] = float(np.mean(list(scores.values()))) if scores else math.nan
    return scores


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _gpu_utilisation(device: torch.device) -> list[float]:
    """The GPU's busy percentage over the last sample period (NVML); empty when NVML is not available."""
    try:
        return [float(torch.cuda.utilization(device))]
    except (RuntimeError, ModuleNotFoundError):
        return []


def _train_epoch(
    network: torch.nn.Module,
    batches: Iterator[Batch],
    steps: int,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_function: torch.nn.Module,
    target: torch.device,
    dtype: torch.dtype | None,
    guidance: Guidance | None = None,
) -> dict[str, float]:
    """One epoch of SGD steps; returns the mean loss, the time it took and the share spent waiting for data.

    The network runs under autocast when ``dtype`` is set; the loss is computed in float32.
    """
    losses, waited, started = [], 0.0, time.perf_counter()
    utilisation: list[float] = []
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        images = batch["image"].to(target, non_blocking=True)
        labels = batch["label"].to(target, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=target.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = network(images)
        heads = list(torch.unbind(outputs.float(), dim=1)) if outputs.dim() == images.dim() + 1 else [outputs.float()]
        loss = loss_function(heads, labels)
        if guidance is not None:
            with torch.autocast(device_type=target.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = guidance.loss(images, heads[0], loss)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        if target.type == "cuda" and len(losses) % 10 == 0:
            utilisation.extend(_gpu_utilisation(target))
    elapsed = time.perf_counter() - started
    return {
        "loss": float(np.mean(losses)),
        "seconds": elapsed,
        "data_wait_fraction": waited / elapsed if elapsed else 0.0,
        **({"gpu_utilisation": float(np.mean(utilisation))} if utilisation else {}),
    }


def _fingerprint(dataset: SegmentationDataset, cache: Path) -> DatasetFingerprint:
    """The dataset fingerprint, computed once per training folder rather than once per fold."""
    if cache.is_file():
        return DatasetFingerprint.model_validate_json(cache.read_text())
    fingerprint = compute_fingerprint(dataset)
    cache.write_text(fingerprint.model_dump_json(indent=1) + "\n")
    return fingerprint


def _prepare(
    dataset: SegmentationDataset, case_ids: list[str], plan: SegmentationPlan, cache_dir: Path | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    by_id = {case.case_id: case for case in dataset.cases}
    prepared = []
    for case_id in case_ids:
        image, label = preprocessed_arrays(dataset, by_id[case_id], plan, cache_dir)
        prepared.append((case_id, image, label))
    return prepared


def train_fold(
    dataset_dir: Path | str,
    plan: SegmentationPlan,
    fold: int | None,
    output_dir: Path | str,
    *,
    device: str = "auto",
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    workers: int = 0,
    resume: bool = True,
    progress: Progress | None = None,
    precision: str = "auto",
    cache: bool = True,
    guidance: Guidance | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    lineage: Mapping[str, Any] | None = None,
    postprocessing: Mapping[str, Any] | None = None,
) -> FoldResult:
    """Train fold ``fold`` of the stored split (None: every case, no validation) and package the model.

    With ``cache`` the preprocessed cases are kept in ``output_dir/preprocessed`` for the other folds.
    ``initial_state`` starts from given weights, ``guidance`` adds a training signal (a teacher), and
    ``lineage`` (where the model came from) is stored in the package's metrics; ``postprocessing`` is the
    package's when the caller chose it (a student keeps its teacher's).
    """
    dataset = read_msd_dataset(dataset_dir)
    output = Path(output_dir)
    run_dir = output / (f"fold_{fold}" if fold is not None else "all")
    split = load_or_make_split(
        output / "splits.json", [c.case_id for c in dataset.cases], plan.training.folds, plan.training.seed
    )
    train_ids = split.fold(fold).train if fold is not None else split.cases
    validation_ids = split.fold(fold).validation if fold is not None else []
    target = torch.device(pick_device(device))
    torch.manual_seed(plan.training.seed + (fold or 0))
    total_epochs = epochs or plan.training.epochs
    cache_dir = output / "preprocessed" if cache else None
    steps = iterations_per_epoch or plan.training.iterations_per_epoch

    training_cases = [
        training_case(case_id, image, label, seed=plan.training.seed)
        for case_id, image, label in _prepare(dataset, train_ids, plan, cache_dir)
    ]
    validation_cases = [(image, label) for _, image, label in _prepare(dataset, validation_ids, plan, cache_dir)]
    sampler = sampler_from_plan(training_cases, plan, seed=plan.training.seed + (fold or 0))
    loader = TrainingLoader(sampler, workers=workers, pin_memory=target.type == "cuda")

    network = plan.network.build()
    if initial_state is not None:
        network.load_state_dict(initial_state)
    network = network.to(target)
    loss_function = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, batch=True))
    extra = guidance.attach(network) if guidance is not None else []
    optimizer = torch.optim.SGD(
        [*network.parameters(), *extra],
        lr=plan.optimizer.lr,
        momentum=plan.optimizer.momentum,
        nesterov=plan.optimizer.nesterov,
        weight_decay=plan.optimizer.weight_decay,
    )
    dtype = autocast_dtype(target, precision)
    amp = dtype == torch.float16  # only float16 needs loss scaling
    scaler = torch.amp.GradScaler(target.type, enabled=amp)

    history: list[dict[str, Any]] = []
    start_epoch, best_epoch = 0, 0
    best_dice: dict[str, float] = {}
    best_weights: dict[str, torch.Tensor] | None = None
    checkpoint = resume_checkpoint(run_dir / "checkpoint", network, optimizer) if resume else None
    if checkpoint is not None:
        history, start_epoch = checkpoint.state["history"], checkpoint.state["epoch"]
        best_epoch, best_dice = checkpoint.state["best_epoch"], checkpoint.state["best_dice"]
        if amp and checkpoint.state.get("scaler"):
            scaler.load_state_dict(checkpoint.state["scaler"])
        best_weights = checkpoint.best

    (run_dir / "checkpoint").mkdir(parents=True, exist_ok=True)
    try:
        network.train()
        for epoch in range(start_epoch, total_epochs):
            for group in optimizer.param_groups:
                group["lr"] = _poly_lr(plan, epoch, total_epochs)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                **_train_epoch(
                    network,
                    loader.iter_batches(steps),
                    steps,
                    optimizer,
                    scaler,
                    loss_function,
                    target,
                    dtype,
                    guidance,
                ),
            }
            if validation_cases:
                record["validation_dice"] = _validation_dice(network, validation_cases, plan, target, dtype)
                if record["validation_dice"]["mean"] > best_dice.get("mean", -1.0):
                    best_epoch, best_dice = epoch + 1, record["validation_dice"]
                    best_weights = save_best(run_dir / "checkpoint", network)
            history.append(record)
            if progress is not None:
                progress(record)
            state = {
                "epoch": epoch + 1,
                "history": history,
                "best_epoch": best_epoch,
                "best_dice": best_dice,
                "scaler": scaler.state_dict() if amp else {},
            }
            save_checkpoint(run_dir / "checkpoint", network, optimizer, state)
    finally:
        loader.close()  # ends data-loading workers, also when training fails

    final_weights = best_weights if best_weights is not None else network.state_dict()
    if not validation_cases:
        best_epoch, best_dice = len(history), {}  # no validation: the last epoch's weights are the model
    curves = plot_curves(
        run_dir / "training_curves.png",
        [h["loss"] for h in history],
        {"mean Dice": [h.get("validation_dice", {}).get("mean") for h in history]},
        title=f"{dataset.name} {'fold ' + str(fold) if fold is not None else 'all cases'}",
    )
    fingerprint = _fingerprint(dataset, output / "fingerprint.json")
    metrics = {
        "fold": fold,
        "epochs": len(history),
        "iterations_per_epoch": steps,
        "batch_size": plan.batch_size,
        "best_epoch": best_epoch,
        "validation_dice": best_dice,
        "validation_cases": validation_ids,
        "data_wait_fraction": float(np.mean([h["data_wait_fraction"] for h in history])),
        "gpu_utilisation": _mean_or_none([h["gpu_utilisation"] for h in history if "gpu_utilisation" in h]),
        "device": str(target),
        "precision": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
        "training_seconds": float(sum(h["seconds"] for h in history)),
        **({"lineage": dict(lineage)} if lineage else {}),
    }
    chosen: dict[str, Any] = dict(postprocessing or {})
    if fold is None and (cv_metrics := stored_cv_metrics(output)) is not None:
        metrics["cross_validation"] = cv_metrics  # the figures that estimate this model's quality
        kept = [value for value, on in sorted(stored_postprocessing(output).items()) if on]
        chosen = {"keep_largest_component": kept}
    package = save_package(
        run_dir / "model",
        name=dataset.name.lower().replace(" ", "-"),
        version="0.1.0",
        task="segmentation",
        labels=plan.labels,
        plan=plan,
        metrics=metrics,
        data_fingerprint=fingerprint,
        state_dict=final_weights,
        overwrite=True,
        postprocessing=chosen,
        weights_dtype=torch.float16,  # half the size; inference runs in bf16 or fp32 from these values
    )
    return FoldResult(fold, len(history), best_epoch, best_dice, package, curves, history)
