"""The classification plan: sizes, network, imbalance handling and schedule follow from the dataset summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from vesalius.core.errors import PlanFileError
from vesalius.engines.classification.plan import ClassificationPlan, make_classification_plan


def test_chest_xrays_get_224_px_a_2d_resnet_and_balanced_batches() -> None:
    plan = make_classification_plan(
        dataset_name="cxr",
        kind="binary",
        class_names=["NORMAL", "PNEUMONIA"],
        class_counts=[1341, 3875],
        median_size=[1100, 1400],
        channels=1,
    )
    assert plan.input_size == [224, 224]
    assert (plan.network.architecture, plan.network.spatial_dims, plan.network.heads) == ("resnet18", 2, {"main": 2})
    assert plan.balanced_sampling  # 1341 < half of 3875
    assert plan.augmentation.flip_axes == []  # left and right are not interchangeable on a chest X-ray
    assert 20 <= plan.epochs <= 100


def test_medmnist_keeps_its_small_size_rounded_to_16() -> None:
    plan = make_classification_plan(
        dataset_name="breast",
        kind="binary",
        class_names=["0", "1"],
        class_counts=[147, 399],
        median_size=[28, 28],
        channels=1,
    )
    assert plan.input_size == [32, 32]
    assert plan.epochs == 55  # 30,000 images seen


def test_volumes_get_a_half_width_3d_network_and_2_5d_stacks_slices() -> None:
    common = {"dataset_name": "adrenal", "kind": "binary", "class_names": ["0", "1"], "class_counts": [800, 300]}
    volume = make_classification_plan(**common, median_size=[64, 64, 64], channels=1)  # type: ignore[arg-type]
    assert (volume.network.spatial_dims, volume.network.width, volume.input_size) == (3, 0.5, [64, 64, 64])
    stacked = make_classification_plan(**common, median_size=[64, 64, 64], channels=1, slices=5)  # type: ignore[arg-type]
    assert (stacked.network.spatial_dims, stacked.network.in_channels, stacked.input_size) == (2, 5, [64, 64])
    with pytest.raises(PlanFileError, match="odd"):
        make_classification_plan(**common, median_size=[64, 64, 64], channels=1, slices=4)  # type: ignore[arg-type]


def test_ordinal_and_multitask_heads() -> None:
    plan = make_classification_plan(
        dataset_name="dr",
        kind="ordinal",
        class_names=[str(g) for g in range(5)],
        class_counts=[50, 10, 20, 5, 5],
        median_size=[512, 512],
        channels=3,
        extra_targets={"haemorrhage": ["no", "yes"]},
    )
    assert plan.network.heads == {"main": 4, "haemorrhage": 2}
    assert plan.network.in_channels == 3


def test_a_plan_round_trips_and_an_edited_bad_value_is_named(tmp_path: Path) -> None:
    plan = make_classification_plan(
        dataset_name="x",
        kind="multiclass",
        class_names=["a", "b", "c"],
        class_counts=[5, 5, 5],
        median_size=[40, 40],
        channels=1,
    )
    path = plan.save(tmp_path / "plan.json")
    assert ClassificationPlan.load(path) == plan
    path.write_text(path.read_text().replace('"batch_size": 32', '"batch_size": 0'))
    with pytest.raises(PlanFileError, match="batch_size"):
        ClassificationPlan.load(path)


def test_input_size_width_and_batch_can_be_set_for_a_cpu_sized_plan() -> None:
    common = {"dataset_name": "cxr", "kind": "binary", "class_names": ["N", "P"], "class_counts": [1341, 3875]}
    plan = make_classification_plan(
        **common,  # type: ignore[arg-type]
        median_size=[1100, 1400],
        channels=1,
        input_size=[120],
        width=0.5,
        batch_size=48,
    )
    assert (plan.input_size, plan.network.input_size) == ([128, 128], [128, 128])  # rounded up to 16
    assert (plan.network.width, plan.batch_size) == (0.5, 48)
    volume = make_classification_plan(**common, median_size=[64, 64, 64], channels=1, input_size=[48])  # type: ignore[arg-type]
    assert volume.input_size == [48, 48, 48]
    with pytest.raises(PlanFileError, match="2 sides"):
        make_classification_plan(**common, median_size=[64, 64], channels=1, input_size=[64, 64, 64])  # type: ignore[arg-type]


def test_flip_axes_are_a_choice_of_the_plan_and_turn_on_test_time_flips() -> None:
    common = {"dataset_name": "breast", "kind": "binary", "class_names": ["0", "1"], "class_counts": [147, 399]}
    plan = make_classification_plan(**common, median_size=[28, 28], channels=1, flip_axes=[1])  # type: ignore[arg-type]
    assert (plan.augmentation.flip_axes, plan.tta_flips) == ([1], True)
    assert not make_classification_plan(**common, median_size=[28, 28], channels=1).tta_flips  # type: ignore[arg-type]
    with pytest.raises(PlanFileError, match="flip axes"):
        make_classification_plan(**common, median_size=[28, 28], channels=1, flip_axes=[2])  # type: ignore[arg-type]
