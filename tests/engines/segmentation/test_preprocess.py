"""Preprocessing: per-channel normalization with known numbers, and an image and label on one grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.common.dataset import Case, LoadedCase
from vesalius.engines.common.plan import (
    AugmentationPlan,
    CTNormalization,
    NetworkPlan,
    SegmentationPlan,
    ZScoreNormalization,
)
from vesalius.engines.segmentation.preprocess import preprocess_case, preprocess_image, preprocess_label
from vesalius.transforms import invert

CT = CTNormalization(clip=(-100.0, 200.0), mean=50.0, std=25.0)


def tiny_plan(
    target_spacing: Sequence[float] = (1.0, 1.0, 2.0),
    normalization: Sequence[CTNormalization | ZScoreNormalization] = (CT,),
    num_classes: int = 3,
    mirror_axes: Sequence[int] = (0, 1, 2),
) -> SegmentationPlan:
    """A plan with a 3-stage, 4..16-filter DynUNet and a 16^3 patch: fast on a CPU."""
    channels = len(normalization)
    return SegmentationPlan(
        dataset_name="Tiny",
        fingerprint_hash="sha256:" + "0" * 64,
        modalities=["CT"] * channels,
        labels={c: ("background" if c == 0 else f"class{c}") for c in range(num_classes)},
        num_classes=num_classes,
        target_spacing=(target_spacing[0], target_spacing[1], target_spacing[2]),
        anisotropic=False,
        anisotropic_axis=None,
        median_shape=(16, 16, 16),
        normalization=list(normalization),
        patch_size=(16, 16, 16),
        batch_size=2,
        memory_budget_gb=0.01,
        network=NetworkPlan(
            in_channels=channels,
            out_channels=num_classes,
            kernel_size=[(3, 3, 3)] * 3,
            strides=[(1, 1, 1), (2, 2, 2), (2, 2, 2)],
            filters=[4, 8, 16],
            deep_supr_num=1,
        ),
        augmentation=AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0), mirror_axes=list(mirror_axes)),
    )


def oblique_affine(spacing: Sequence[float] = (0.8, 0.9, 2.5)) -> np.ndarray:
    angle = np.deg2rad(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    tilt = np.deg2rad(-12.0)
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ about_x * np.asarray(spacing)[None, :]
    affine[:3, 3] = (-30.25, 12.5, 40.0)
    return affine


def test_ct_channel_is_clipped_then_standardised_with_the_plan_numbers() -> None:
    values = np.array([-1000.0, -100.0, 0.0, 50.0, 100.0, 200.0, 3000.0, 75.0], dtype=np.float32)
    array = np.resize(values, (4, 4, 4)).astype(np.float32)
    image = Volume.from_geometry(array, spacing=(1.0, 1.0, 2.0))
    result = preprocess_image(image, tiny_plan())
    expected = (np.clip(array, -100.0, 200.0) - 50.0) / 25.0
    assert result.array.shape == (4, 4, 4, 1)
    assert result.array.dtype == np.float32
    np.testing.assert_allclose(result.array[..., 0], expected, atol=1e-5)
    assert result.array.min() == pytest.approx(-6.0)
    assert result.array.max() == pytest.approx(6.0)


def test_channels_are_normalized_separately() -> None:
    rng = np.random.default_rng(0)
    array = np.stack([rng.normal(500.0, 10.0, (6, 6, 4)), rng.normal(-3.0, 0.1, (6, 6, 4))], axis=-1)
    image = Volume.from_geometry(array.astype(np.float32), spacing=(1.0, 1.0, 2.0))
    plan = tiny_plan(normalization=(CT, ZScoreNormalization()))
    result = preprocess_image(image, plan)
    np.testing.assert_allclose(result.array[..., 0], (np.clip(array[..., 0], -100, 200) - 50) / 25, atol=1e-5)
    assert result.array[..., 1].mean() == pytest.approx(0.0, abs=1e-5)
    assert result.array[..., 1].std() == pytest.approx(1.0, abs=1e-4)


def test_wrong_channel_count_names_the_plan() -> None:
    image = Volume.from_geometry(np.zeros((4, 4, 4, 2), dtype=np.float32), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="expects 1"):
        preprocess_image(image, tiny_plan())


def test_image_and_label_share_the_target_grid_and_invert_to_the_input() -> None:
    shape = (20, 18, 9)
    rng = np.random.default_rng(1)
    image = Volume(array=rng.normal(0.0, 50.0, shape).astype(np.float32), affine=oblique_affine())
    label = image.with_array((rng.random(shape) > 0.7).astype(np.int16))
    plan = tiny_plan()
    loaded = LoadedCase(case=Case("c", (Path("i.nii.gz"),), Path("l.nii.gz")), image=image, label=label)
    prepared, prepared_label = preprocess_case(loaded, plan)
    assert prepared.same_grid(prepared_label)
    assert prepared.shape == (16, 16, 11)
    np.testing.assert_allclose(prepared.spacing, plan.target_spacing)
    np.testing.assert_allclose(prepared.direction, image.direction, atol=1e-12)
    assert prepared_label.array.dtype == np.int16
    assert set(np.unique(prepared_label.array)) <= {0, 1}
    back = invert(prepared.with_array(prepared_label.array), kind="label")
    assert back.shape == image.shape
    assert np.array_equal(back.affine, image.affine)
    assert preprocess_label(label, plan).same_grid(prepared)
