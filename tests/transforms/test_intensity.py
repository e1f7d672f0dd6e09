"""Intensity transforms: hand-computed values, recorded parameters, and exact inverses on the kept range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.strategies import volumes
from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms import WINDOW_PRESETS, clip, invert, percentile_normalize, window, zscore


def hu(values: list[float]) -> Volume:
    """A 1 x 1 x n CT volume holding the given HU values."""
    return Volume.from_geometry(
        np.array(values, dtype=np.int16).reshape(1, 1, -1), spacing=(0.8, 0.8, 2.0), modality="CT"
    )


# --- window ---------------------------------------------------------------------------------------------


def test_presets_are_the_usual_ct_windows() -> None:
    assert dict(WINDOW_PRESETS) == {
        "lung": (-600.0, 1500.0),
        "mediastinum": (50.0, 350.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
        "abdomen": (50.0, 400.0),
    }
    assert WINDOW_PRESETS["lung"].level == -600.0
    assert WINDOW_PRESETS["lung"].width == 1500.0


def test_lung_window_maps_level_to_half_and_clips_outside() -> None:
    # lung: level -600, width 1500, so the window is [-1350, 150] HU
    result = window(hu([-2000, -1350, -600, -225, 150, 3000]), preset="lung")
    np.testing.assert_allclose(result.array.ravel(), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-7)
    assert result.array.dtype == np.float32


def test_window_by_level_and_width() -> None:
    result = window(hu([0, 20, 40, 80]), level=40, width=80)
    np.testing.assert_allclose(result.array.ravel(), [0.0, 0.25, 0.5, 1.0], atol=1e-7)


def test_window_records_what_it_did_and_leaves_the_input_alone() -> None:
    volume = hu([-1000, 0, 1000])
    before = volume.array.copy()
    result = window(volume, preset="Bone")
    record = result.history[-1]
    assert record.name == "window"
    assert record.params == {"level": 400.0, "width": 1800.0, "preset": "bone"}
    assert record.source_shape == volume.shape
    np.testing.assert_array_equal(record.source_affine, volume.affine)
    np.testing.assert_array_equal(volume.array, before)
    assert volume.history == ()
    assert result.modality == "CT"
    np.testing.assert_array_equal(result.affine, volume.affine)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "liver"}, "unknown preset 'liver'"),
        ({"level": 40, "width": 0}, "width must be > 0"),
        ({"level": 40, "width": -80}, "width must be > 0"),
        ({"level": 40}, "both level and width"),
        ({}, "both level and width"),
        ({"preset": "lung", "level": 40}, "not both"),
        ({"level": float("nan"), "width": 80}, "finite"),
    ],
)
def test_window_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TransformError, match=message):
        window(hu([0]), **kwargs)


# --- clip ------------------------------------------------------------------------------------------------


def test_clip_limits_and_keeps_values_inside() -> None:
    result = clip(hu([-2000, -1000, 0, 500, 4000]), lower=-1000, upper=1000)
    np.testing.assert_array_equal(result.array.ravel(), [-1000, -1000, 0, 500, 1000])
    assert result.array.dtype == np.float32


def test_clip_refuses_an_empty_range() -> None:
    with pytest.raises(TransformError, match="lower < upper"):
        clip(hu([0]), lower=100, upper=100)


# --- zscore ----------------------------------------------------------------------------------------------


def test_zscore_of_a_known_array() -> None:
    # mean 2.5, population std sqrt(1.25)
    result = zscore(hu([1, 2, 3, 4]))
    expected = (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(result.array.ravel(), expected, rtol=1e-6)
    assert result.history[-1].params == pytest.approx({"mean": 2.5, "std": np.sqrt(1.25)})


def test_zscore_takes_statistics_under_the_mask_and_normalises_everything() -> None:
    volume = hu([10, 20, 1000])
    mask = np.array([True, True, False]).reshape(1, 1, 3)
    result = zscore(volume, mask=mask)
    # mask mean 15, std 5
    np.testing.assert_allclose(result.array.ravel(), [-1.0, 1.0, 197.0], rtol=1e-6)


def test_zscore_with_fixed_statistics() -> None:
    result = zscore(hu([0, 100, 200]), mean=100.0, std=50.0)
    np.testing.assert_allclose(result.array.ravel(), [-2.0, 0.0, 2.0])


def test_zscore_refuses_a_constant_volume_an_empty_mask_and_a_misshaped_mask() -> None:
    with pytest.raises(TransformError, match="standard deviation > 0"):
        zscore(hu([7, 7, 7]))
    with pytest.raises(TransformError, match="standard deviation > 0"):
        zscore(hu([1, 2]), mean=0.0, std=-1.0)
    with pytest.raises(TransformError, match="selects no voxel"):
        zscore(hu([1, 2]), mask=np.zeros((1, 1, 2), dtype=bool))
    with pytest.raises(TransformError, match="spatial shape"):
        zscore(hu([1, 2]), mask=np.ones((2, 1, 1), dtype=bool))


# --- percentile_normalize --------------------------------------------------------------------------------


def test_percentile_normalize_clips_to_percentiles_then_scales() -> None:
    volume = Volume.from_geometry(np.arange(101, dtype=np.float64).reshape(101, 1, 1), spacing=(1, 1, 1))
    result = percentile_normalize(volume, lower=10, upper=90)
    # percentiles of 0..100 are the values themselves: 10 and 90
    np.testing.assert_allclose(result.array[[0, 10, 50, 90, 100], 0, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert result.history[-1].params["low_value"] == 10.0
    assert result.history[-1].params["high_value"] == 90.0


def test_percentile_normalize_refuses_bad_percentiles_and_a_flat_image() -> None:
    volume = hu([1, 2, 3])
    with pytest.raises(TransformError, match="0 <= lower < upper <= 100"):
        percentile_normalize(volume, lower=50, upper=50)
    with pytest.raises(TransformError, match="0 <= lower < upper <= 100"):
        percentile_normalize(volume, lower=-1, upper=99)
    with pytest.raises(TransformError, match="no spread"):
        percentile_normalize(hu([5, 5, 5]))


def test_channels_are_pooled() -> None:
    array = np.stack([np.full((2, 2, 2), 0.0), np.full((2, 2, 2), 10.0)], axis=-1)
    result = zscore(Volume.from_geometry(array, spacing=(1, 1, 1)))
    assert result.array.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(result.array[..., 0], -1.0)
    np.testing.assert_allclose(result.array[..., 1], 1.0)


# --- inverses --------------------------------------------------------------------------------------------

hu_values = st.lists(st.integers(-1024, 3071), min_size=2, max_size=40, unique=True)


def _ct(values: list[int]) -> Volume:
    return Volume.from_geometry(np.array(values, dtype=np.int16).reshape(1, 1, -1), spacing=(1, 1, 1))


@settings(max_examples=40, deadline=None)
@given(hu_values, st.sampled_from(sorted(WINDOW_PRESETS)))
def test_window_then_invert_recovers_hu_inside_the_window(values: list[int], preset: str) -> None:
    volume = _ct(values)
    level, width = WINDOW_PRESETS[preset]
    restored = invert(window(volume, preset=preset), kind="image")
    inside = np.abs(volume.array - level) <= width / 2
    np.testing.assert_allclose(restored.array[inside], volume.array[inside], atol=width * 1e-6)
    low, high = level - width / 2, level + width / 2
    np.testing.assert_allclose(restored.array, np.clip(volume.array, low, high), atol=width * 1e-6)


@settings(max_examples=40, deadline=None)
@given(hu_values, st.booleans())
def test_zscore_then_invert_recovers_every_value(values: list[int], masked: bool) -> None:
    volume = _ct(values)
    # statistics from every other voxel, when that leaves at least two distinct values
    mask = np.arange(len(values)).reshape(1, 1, -1) % 2 == 0 if masked and len(values) >= 3 else None
    restored = invert(zscore(volume, mask=mask), kind="image")
    np.testing.assert_allclose(restored.array, volume.array, atol=1e-6 * 4096)


@settings(max_examples=40, deadline=None)
@given(hu_values, st.floats(0.0, 40.0), st.floats(60.0, 100.0))
def test_percentile_normalize_then_invert_recovers_the_unclipped_range(
    values: list[int], lower: float, upper: float
) -> None:
    volume = _ct(values)
    low, high = np.percentile(volume.array.astype(np.float64), [lower, upper])
    if high <= low:
        return
    restored = invert(percentile_normalize(volume, lower, upper), kind="image")
    np.testing.assert_allclose(restored.array, np.clip(volume.array, low, high), atol=1e-6 * 4096)


@settings(max_examples=25, deadline=None)
@given(volumes())
def test_chained_intensity_transforms_invert_in_reverse_order(volume: Volume) -> None:
    n = volume.array.size
    chained = zscore(clip(volume, lower=-1.0, upper=float(n)), mask=volume.array < n / 2 + 1)
    restored = invert(window(chained, level=0.0, width=100.0), kind="image")
    np.testing.assert_allclose(restored.array, volume.array, atol=1e-4 * n)
    assert restored.history == ()
    np.testing.assert_array_equal(restored.affine, volume.affine)


def test_label_inversion_leaves_intensities_alone() -> None:
    volume = window(hu([-1000, 0, 1000]), preset="lung")
    mask = np.array([0, 1, 2], dtype=np.uint8).reshape(1, 1, 3)
    restored = invert(volume.with_array(mask), kind="label")
    np.testing.assert_array_equal(restored.array, mask)
    assert restored.array.dtype == np.uint8
    assert restored.array is not mask
