"""Training a classifier from prepared arrays: balanced batches, batch augmentation, one loss per head.

Inputs are already loaded, resized and normalised (``ImageSet``), so the loop is the same for 2-D, 2.5-D
and 3-D, for one machine or many. Each epoch ends with a validation pass; the weights with the best
validation score (AUC for binary and multi-class, quadratic weighted kappa for ordinal grades, macro AUC
for multi-label) are kept. Checkpoints are safetensors and resume exactly where training stopped.

Heads and losses:
- binary and multi-class: softmax cross-entropy (optionally label-smoothed) or focal loss;
- ordinal (grades 0..K-1): K-1 cumulative logits "grade > k" with binary cross-entropy (CORAL-style), so
  predicting 4 for a 0 costs more than predicting 1; class probabilities are differences of the cumulative
  ones;
- multi-label: one sigmoid per label;
- extra targets (multi-task): a softmax cross-entropy each, added to the main loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from torch.nn import functional
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vesalius.core.errors import InputError, TrainingDivergedError
from vesalius.engines.classification.augment import augment_batch
from vesalius.engines.classification.networks import ClassificationNetwork, MultiHeadClassifier
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.common.checkpoint import (
    AVERAGED,
    load_weights,
    resume_checkpoint,
    save_best,
    save_checkpoint,
    save_weights,
)
from vesalius.engines.common.curves import plot_curves
from vesalius.engines.common.guidance import Guidance
from vesalius.engines.common.precision import pick_device, training_dtype
from vesalius.engines.common.schedule import warmup_cosine

Progress = Callable[[dict[str, Any]], None]

__all__ = [
    "ImageSet",
    "TrainingResult",
    "main_probabilities",
    "predict_logits",
    "probability_score",
    "train_classifier",
    "tta_flip_axes",
]


@dataclass(frozen=True)
class ImageSet:
    """Prepared examples: ``images`` (N, C, *size) float32, ``labels`` (N,) int or (N, L) 0/1 for multi-label,
    ``extra`` name -> (N,) int per extra target, ``ids`` one string per example."""

    ids: list[str]
    images: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    extra: Mapping[str, npt.NDArray[np.int64]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.shape[0] != n or self.labels.shape[0] != n or any(v.shape[0] != n for v in self.extra.values()):
            raise InputError(
                f"image set: {n} ids, {self.images.shape[0]} images, {self.labels.shape[0]} labels, extra "
                f"{ {k: v.shape[0] for k, v in self.extra.items()} }: every array needs one row per id"
            )


@dataclass
class TrainingResult:
    epochs: int
    best_epoch: int
    best_score: float
    state_dict: dict[str, torch.Tensor]
    validation_logits: dict[str, npt.NDArray[np.float32]]
    history: list[dict[str, Any]]
    curves: Path
    seconds: float


def main_probabilities(plan: ClassificationPlan, logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Class probabilities (N, K) from the main head's logits, whatever the task kind."""
    values = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    if plan.kind in ("binary", "multiclass"):
        return torch.softmax(values, dim=1).numpy()
    if plan.kind == "multilabel":
        return torch.sigmoid(values).numpy()
    above = torch.sigmoid(values)  # P(grade > k), k = 0..K-2, made non-increasing
    above = torch.cummin(above, dim=1).values
    ones, zeros = torch.ones(len(values), 1, dtype=values.dtype), torch.zeros(len(values), 1, dtype=values.dtype)
    cumulative = torch.cat([ones, above, zeros], dim=1)
    return (cumulative[:, :-1] - cumulative[:, 1:]).numpy()


def validation_score(plan: ClassificationPlan, labels: npt.NDArray[Any], logits: npt.NDArray[Any]) -> float:
    """The number model selection maximises; nan when the validation set cannot define it."""
    return probability_score(plan, labels, main_probabilities(plan, logits))


def probability_score(plan: ClassificationPlan, labels: npt.NDArray[Any], probabilities: npt.NDArray[Any]) -> float:
    """AUC (binary: of the positive class; multi-class: one-vs-rest; multi-label: macro) or, for ordinal
    grades, quadratic weighted kappa; nan when the labels cannot define it."""
    try:
        if plan.kind == "binary":
            return float(roc_auc_score(labels, probabilities[:, 1]))
        if plan.kind == "multiclass":
            return float(roc_auc_score(labels, probabilities, multi_class="ovr", labels=range(len(plan.class_names))))
        if plan.kind == "ordinal":
            predicted = probabilities.argmax(axis=1)
            return float(cohen_kappa_score(labels, predicted, weights="quadratic"))
        return float(roc_auc_score(labels, probabilities, average="macro"))
    except ValueError:
        return math.nan


def _main_loss(plan: ClassificationPlan, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if plan.kind == "multilabel":
        return functional.binary_cross_entropy_with_logits(logits, labels.float())
    if plan.kind == "ordinal":
        thresholds = torch.arange(logits.shape[1], device=logits.device)
        return functional.binary_cross_entropy_with_logits(logits, (labels[:, None] > thresholds).float())
    if plan.loss == "focal":
        log_p = functional.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
        return (-((1 - log_p.exp()) ** plan.focal_gamma) * log_p).mean()
    return functional.cross_entropy(logits, labels, label_smoothing=plan.label_smoothing)


def _batches(plan: ClassificationPlan, data: ImageSet, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    """One epoch of index batches: a permutation, or inverse-frequency draws when balancing classes."""
    n = len(data.ids)
    if plan.balanced_sampling and data.labels.ndim == 1:
        counts = np.bincount(data.labels, minlength=len(plan.class_names)).astype(np.float64)
        weights = 1.0 / counts[data.labels]
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n)
    usable = (n // plan.batch_size) * plan.batch_size or n  # drop the ragged end (batch norm), keep tiny sets
    return [order[i : i + plan.batch_size] for i in range(0, usable, plan.batch_size)]


def predict_logits(
    network: MultiHeadClassifier,
    images: npt.NDArray[np.float32],
    device: torch.device,
    dtype: torch.dtype | None,
    batch_size: int = 64,
    flip_axes: tuple[int, ...] = (),
) -> dict[str, npt.NDArray[np.float32]]:
    """Logits of every head for every image, optionally averaged over flipped copies (TTA)."""
    network.eval()
    outputs: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).to(device)
            copies = [batch, *[torch.flip(batch, [axis + 2]) for axis in flip_axes]]
            summed: dict[str, torch.Tensor] = {}
            for copy in copies:
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    heads = network.forward_heads(copy)
                for name, value in heads.items():
                    summed[name] = summed[name] + value.float() if name in summed else value.float()
            for name, value in summed.items():
                outputs.setdefault(name, []).append((value / len(copies)).cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float32) for name, parts in outputs.items()}


def tta_flip_axes(plan: ClassificationPlan) -> tuple[int, ...]:
    """The spatial axes predictions are averaged over: the augmentation's flips when the plan asks for TTA."""
    return tuple(plan.augmentation.flip_axes) if plan.tta_flips else ()


def _weight_average(network: MultiHeadClassifier, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights and of the batch-norm statistics, or None when off.

    On a few hundred images the weights of single epochs, and their scores on a small selection set, jump from
    epoch to epoch; their average generalises better and its score is a steadier guide to the best epoch."""
    if decay <= 0:
        return None
    average = get_ema_multi_avg_fn(decay)  # type: ignore[no-untyped-call]
    return AveragedModel(network, multi_avg_fn=average, use_buffers=True)


def _check_finite(
    loss: torch.Tensor, plan: ClassificationPlan, epoch: int, step: int, dtype: torch.dtype | None
) -> None:
    if not torch.isfinite(loss):
        used = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
        raise TrainingDivergedError(
            f"{plan.dataset_name}: the loss became {float(loss)} at epoch {epoch + 1}, step {step + 1} "
            f"(precision {used}); lower learning_rate in the plan or train with --precision fp32"
        )


@dataclass
class _Steps:
    """One epoch of optimisation steps: augment on the device, forward, loss of every head, step, average."""

    plan: ClassificationPlan
    network: MultiHeadClassifier
    averaged: AveragedModel | None
    optimizer: torch.optim.Optimizer
    target: torch.device
    dtype: torch.dtype | None
    guidance: Guidance | None = None

    def run_epoch(self, train: ImageSet, epoch: int, lr_factor: Callable[[int], float], first_step: int) -> list[float]:
        """The losses of the epoch's steps; ``lr_factor`` maps a global step to its learning-rate factor."""
        plan, target = self.plan, self.target
        self.network.train()
        rng = np.random.default_rng([plan.seed, epoch])  # batches and augmentation seeded per epoch: a resumed
        generator = torch.Generator().manual_seed(plan.seed * 1_000_003 + epoch)  # run repeats a straight one
        losses = []
        for step, indices in enumerate(_batches(plan, train, rng)):
            for group in self.optimizer.param_groups:
                group["lr"] = plan.learning_rate * lr_factor(first_step + step)
            images = augment_batch(torch.from_numpy(train.images[indices]).to(target), plan.augmentation, generator)
            with torch.autocast(target.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                heads = self.network.forward_heads(images)
            loss = _main_loss(plan, heads["main"].float(), torch.from_numpy(train.labels[indices]).to(target))
            for name, values in train.extra.items():
                extra = torch.from_numpy(values[indices]).to(target)
                loss = loss + functional.cross_entropy(heads[name].float(), extra)
            if self.guidance is not None:
                with torch.autocast(target.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                    loss = self.guidance.loss(images, heads["main"], loss)
            _check_finite(loss, plan, epoch, step, self.dtype)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            if self.averaged is not None:
                self.averaged.update_parameters(self.network)
            losses.append(float(loss.detach()))
        return losses


def train_classifier(
    plan: ClassificationPlan,
    train: ImageSet,
    validation: ImageSet,
    run_dir: Path | str,
    *,
    device: str = "auto",
    precision: str = "auto",
    epochs: int | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    guidance: Guidance | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainingResult:
    """Train on ``train``, select on ``validation``; checkpoints and curves go to ``run_dir``.

    ``initial_state`` starts from given weights (fine-tuning a pruned model); ``guidance`` adds a training
    signal (a teacher's soft targets)."""
    if len(validation.ids) == 0 or len(train.ids) == 0:
        raise InputError("training needs at least one training and one validation example")
    run = Path(run_dir)
    target = pick_device(device)
    dtype = training_dtype(target, precision, plan.network.spatial_dims)
    torch.manual_seed(plan.seed)
    network = ClassificationNetwork.build(plan.network)
    if initial_state is not None:
        network.load_state_dict(initial_state)
    network = network.to(target)
    averaged = _weight_average(network, plan.weight_averaging)
    scored = cast(MultiHeadClassifier, averaged.module) if averaged is not None else network
    extra = guidance.attach(network) if guidance is not None else []
    optimizer = torch.optim.AdamW(
        [*network.parameters(), *extra], lr=plan.learning_rate, weight_decay=plan.weight_decay
    )
    total_epochs = epochs or plan.epochs
    steps_per_epoch = max(1, len(train.ids) // plan.batch_size)  # as many batches as _batches draws
    total_steps = total_epochs * steps_per_epoch

    def learning_rate_factor(step: int) -> float:
        return warmup_cosine(step, steps_per_epoch, total_steps)  # one epoch of warm-up

    history: list[dict[str, Any]] = []
    start_epoch, best_epoch, best_score = 0, 0, -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_logits: dict[str, npt.NDArray[np.float32]] | None = None
    checkpoint = resume_checkpoint(run / "checkpoint", network, optimizer) if resume else None
    if checkpoint is not None:
        history, start_epoch = checkpoint.state["history"], checkpoint.state["epoch"]
        best_epoch, best_score = checkpoint.state["best_epoch"], checkpoint.state["best_score"]
        best_state = checkpoint.best
        if averaged is not None and (average := load_weights(run / "checkpoint", AVERAGED)) is not None:
            averaged.load_state_dict(average)
    (run / "checkpoint").mkdir(parents=True, exist_ok=True)
    steps = _Steps(plan, network, averaged, optimizer, target, dtype, guidance)
    for epoch in range(start_epoch, total_epochs):
        epoch_started = time.perf_counter()
        losses = steps.run_epoch(train, epoch, learning_rate_factor, first_step=epoch * steps_per_epoch)
        logits = predict_logits(scored, validation.images, target, dtype, flip_axes=tta_flip_axes(plan))
        score = validation_score(plan, validation.labels, logits["main"])
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "validation_score": score,
            "seconds": time.perf_counter() - epoch_started,
        }
        if score > best_score or best_state is None:
            best_epoch, best_score, best_logits = epoch + 1, score, logits
            best_state = save_best(run / "checkpoint", scored)
        history.append(record)
        state = {"epoch": epoch + 1, "history": history, "best_epoch": best_epoch, "best_score": best_score}
        if averaged is not None:
            save_weights(run / "checkpoint", averaged, AVERAGED)
        save_checkpoint(run / "checkpoint", network, optimizer, state)
        if progress is not None:
            progress(record)
    assert best_state is not None
    if best_logits is None:  # the best epoch ran before a resume: score its weights again
        scored.load_state_dict(best_state)
        best_logits = predict_logits(scored, validation.images, target, dtype, flip_axes=tta_flip_axes(plan))
    curves = plot_curves(
        run / "training_curves.png",
        [h["loss"] for h in history],
        {"validation score": [h["validation_score"] for h in history]},
        title=f"{plan.dataset_name} ({plan.kind})",
    )
    return TrainingResult(
        epochs=len(history),
        best_epoch=best_epoch,
        best_score=best_score,
        state_dict=best_state,
        validation_logits=best_logits,
        history=history,
        curves=curves,
        seconds=float(sum(h["seconds"] for h in history)),  # across resumes: the epochs of every run
    )
