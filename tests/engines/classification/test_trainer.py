"""The classifier trainer learns a separable toy task, resumes, and handles ordinal, multi-label and multi-task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vesalius.core.errors import TrainingDivergedError
from vesalius.engines.classification.plan import ClassificationPlan, make_classification_plan
from vesalius.engines.classification.trainer import (
    ImageSet,
    main_probabilities,
    train_classifier,
    validation_score,
)
from vesalius.engines.common.checkpoint import AVERAGED, MODEL

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def toy_set(n: int, seed: int, classes: int = 2) -> ImageSet:
    """Class c is a bright square at a class-specific place: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.normal(0, 0.3, (n, 1, 32, 32)).astype(np.float32)
    for index, label in enumerate(labels):
        row = 4 + 8 * int(label)
        images[index, 0, row : row + 8, 12:20] += 2.0
    return ImageSet(ids=[f"{seed}-{i}" for i in range(n)], images=images, labels=labels.astype(np.int64))


def toy_plan(kind: str = "binary", classes: int = 2, **extra: object) -> ClassificationPlan:
    plan = make_classification_plan(
        dataset_name="toy",
        kind=kind,  # type: ignore[arg-type]
        class_names=[str(c) for c in range(classes)],
        class_counts=[10] * classes,
        median_size=[32, 32],
        channels=1,
        **extra,  # type: ignore[arg-type]
    )
    network = plan.network.model_copy(update={"architecture": "resnet10", "width": 0.25})
    return plan.model_copy(update={"network": network, "batch_size": 16, "epochs": 4, "learning_rate": 3e-3})


def test_a_separable_task_is_learnt_and_the_best_epoch_kept(tmp_path: Path) -> None:
    plan = toy_plan()
    result = train_classifier(plan, toy_set(96, 0), toy_set(48, 1), tmp_path / "run", device="cpu")
    assert result.best_score > 0.95
    assert result.best_score == max(h["validation_score"] for h in result.history)
    assert result.validation_logits["main"].shape == (48, 2)
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 0


def test_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    plan = toy_plan()
    first = train_classifier(plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "run", epochs=2, device="cpu")
    assert first.epochs == 2
    resumed = train_classifier(plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "run", epochs=3, device="cpu")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history
    assert resumed.seconds == sum(h["seconds"] for h in resumed.history)  # the first run's epochs count too
    assert resumed.seconds > first.seconds


def test_ordinal_grades_give_probabilities_and_a_kappa(tmp_path: Path) -> None:
    plan = toy_plan("ordinal", classes=3)
    assert plan.network.heads == {"main": 2}
    result = train_classifier(plan, toy_set(96, 0, 3), toy_set(48, 1, 3), tmp_path / "run", device="cpu")
    probabilities = main_probabilities(plan, result.validation_logits["main"])
    assert probabilities.shape == (48, 3)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert result.best_score > 0.5  # quadratic weighted kappa


def test_multitask_heads_train_together(tmp_path: Path) -> None:
    plan = toy_plan(extra_targets={"side": ["left", "right"]})
    train, validation = toy_set(64, 0), toy_set(16, 1)
    train = ImageSet(train.ids, train.images, train.labels, {"side": (train.labels + 1) % 2})
    validation = ImageSet(validation.ids, validation.images, validation.labels, {"side": validation.labels})
    result = train_classifier(plan, train, validation, tmp_path / "run", epochs=2, device="cpu")
    assert set(result.validation_logits) == {"main", "side"}
    assert result.validation_logits["side"].shape == (16, 2)


def test_multilabel_and_focal_losses_are_finite(tmp_path: Path) -> None:
    plan = toy_plan("multilabel", classes=2)
    data = toy_set(32, 0)
    both = ImageSet(data.ids, data.images, np.stack([data.labels, 1 - data.labels], axis=1))
    result = train_classifier(plan, both, both, tmp_path / "ml", epochs=1, device="cpu")
    assert np.isfinite(result.history[0]["loss"])
    focal = toy_plan().model_copy(update={"loss": "focal"})
    result = train_classifier(focal, data, data, tmp_path / "focal", epochs=1, device="cpu")
    assert np.isfinite(result.history[0]["loss"])


def test_a_one_class_validation_set_scores_nan_rather_than_failing() -> None:
    plan = toy_plan()
    assert np.isnan(validation_score(plan, np.zeros(4, dtype=np.int64), np.zeros((4, 2))))


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(Exception, match="one row per id"):
        ImageSet(ids=["a"], images=np.zeros((2, 1, 4, 4), np.float32), labels=np.zeros(2, np.int64))


def test_a_diverging_run_stops_with_a_clear_error(tmp_path: Path) -> None:
    data = toy_set(32, 0)
    poisoned = ImageSet(data.ids, np.full_like(data.images, np.nan), data.labels)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 1, step 1"):
        train_classifier(toy_plan(), poisoned, data, tmp_path / "run", epochs=1, device="cpu")


class SimulatedCrashError(Exception):
    """Stands for a worker killed after a checkpoint was written."""


def crash_after_epoch_2(record: dict[str, object]) -> None:
    if record["epoch"] == 2:
        raise SimulatedCrashError


def test_weight_averaging_validates_and_keeps_the_average_and_a_crashed_run_resumes_exactly(tmp_path: Path) -> None:
    plan = toy_plan().model_copy(update={"weight_averaging": 0.9, "epochs": 3})
    with pytest.raises(SimulatedCrashError):
        train_classifier(
            plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "run", device="cpu", progress=crash_after_epoch_2
        )
    folder = tmp_path / "run" / "checkpoint"
    average, raw = load_file(str(folder / AVERAGED)), load_file(str(folder / MODEL))
    name = next(key for key in raw if key.endswith("weight") and raw[key].ndim == 4)
    assert not torch.equal(average[f"module.{name}"], raw[name])  # the average is not the last step's weights
    resumed = train_classifier(plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "run", device="cpu")
    straight = train_classifier(plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "once", device="cpu")
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-5)
    one = train_classifier(plan, toy_set(32, 0), toy_set(16, 1), tmp_path / "one", epochs=1, device="cpu")
    folder = tmp_path / "one" / "checkpoint"
    average, raw = load_file(str(folder / AVERAGED)), load_file(str(folder / MODEL))
    # one epoch, so it is the best: what is kept and shipped is the average, not the raw weights
    assert torch.equal(one.state_dict[name], average[f"module.{name}"])
    assert not torch.equal(one.state_dict[name], raw[name])
