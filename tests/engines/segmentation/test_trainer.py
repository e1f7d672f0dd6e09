"""Training a fold end to end on a tiny synthetic dataset: it learns, resumes, and packages its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.engines.common.msd_factory import blob_case, write_msd
from vesalius.engines.common.package import load_package
from vesalius.engines.common.plan import SegmentationPlan, plan_dataset
from vesalius.engines.segmentation.trainer import train_fold

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny_plan(dataset: Path) -> SegmentationPlan:
    """The derived plan, made small enough to train on a CPU in seconds."""
    _, plan = plan_dataset(dataset, memory_budget_gb=0.05)
    network = plan.network.model_copy(update={"filters": [4, 8, 16][: len(plan.network.filters)]})
    training = plan.training.model_copy(update={"folds": 3})
    optimizer = plan.optimizer.model_copy(update={"lr": 0.05})
    return plan.model_copy(update={"network": network, "training": training, "optimizer": optimizer, "batch_size": 2})


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    cases = [blob_case(f"case_{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    return write_msd(tmp_path / "Blobs", cases)


def test_a_fold_learns_the_blobs_and_writes_a_package(dataset: Path, tmp_path: Path) -> None:
    plan = tiny_plan(dataset)
    result = train_fold(dataset, plan, 0, tmp_path / "run", epochs=6, iterations_per_epoch=10)
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < losses[0]
    assert result.best_dice["outer"] > 0.6
    assert result.curves.is_file()
    package = load_package(result.package)
    assert package.manifest.task == "segmentation"
    assert len(package.manifest.metrics["validation_cases"]) == 2
    assert package.manifest.plan["patch_size"] == list(plan.patch_size)
    network = SegmentationPlan.model_validate(package.manifest.plan).network.build()
    network.load_state_dict(package.state_dict())
    assert (tmp_path / "run" / "splits.json").is_file()


def test_training_resumes_from_its_checkpoint(dataset: Path, tmp_path: Path) -> None:
    plan = tiny_plan(dataset)
    first = train_fold(dataset, plan, 1, tmp_path / "run", epochs=2, iterations_per_epoch=3)
    assert [r["epoch"] for r in first.history] == [1, 2]
    resumed = train_fold(dataset, plan, 1, tmp_path / "run", epochs=4, iterations_per_epoch=3)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history
    restarted = train_fold(dataset, plan, 1, tmp_path / "run", epochs=1, iterations_per_epoch=3, resume=False)
    assert [r["epoch"] for r in restarted.history] == [1]


def test_fold_all_trains_on_every_case_without_validation(dataset: Path, tmp_path: Path) -> None:
    plan = tiny_plan(dataset)
    result = train_fold(dataset, plan, None, tmp_path / "run", epochs=1, iterations_per_epoch=2)
    assert result.best_dice == {}
    assert result.best_epoch == 1
    assert torch.is_tensor(next(iter(load_package(result.package).state_dict().values())))
