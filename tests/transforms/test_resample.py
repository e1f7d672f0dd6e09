"""resample and resample_to_grid: new spacing or any grid, exact where trilinear sampling is exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.strategies import all_indices, directions, origins, spacings, volumes, world_ramp
from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume, make_affine
from vesalius.transforms import invert, resample, resample_to_grid

GRADIENT = (0.7, -1.3, 0.4)


def line(values: list[float], spacing: float) -> Volume:
    """Values along i, one voxel thick in j and k."""
    return Volume.from_geometry(np.array(values, dtype=np.float64).reshape(-1, 1, 1), spacing=(spacing, 1, 1))


# --- resample: hand cases --------------------------------------------------------------------------------


def test_new_shape_keeps_the_field_of_view_and_rounds_halves_up() -> None:
    volume = Volume.from_geometry(np.zeros((4, 5, 6)), spacing=(2.0, 1.0, 1.0), origin=(5, 6, 7))
    result = resample(volume, spacing=(1.0, 2.0, 4.0))
    # 4 * 2 / 1 = 8; 5 * 1 / 2 = 2.5 -> 3; 6 * 1 / 4 = 1.5 -> 2
    assert result.shape == (8, 3, 2)
    np.testing.assert_allclose(result.spacing, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(result.origin, volume.origin)
    assert result.history[-1].params == {"spacing": (1.0, 2.0, 4.0), "interpolation": "linear", "shape": (8, 3, 2)}


def test_linear_upsampling_interpolates_and_repeats_the_edge() -> None:
    result = resample(line([0, 10, 20, 30], spacing=2.0), spacing=1.0)
    # voxel centres at 0..7 mm are source indices 0, 0.5, ..., 3.5; beyond index 3 the edge repeats
    np.testing.assert_allclose(result.array.ravel(), [0, 5, 10, 15, 20, 25, 30, 30])


def test_direction_is_kept_for_an_oblique_volume() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    volume = Volume.from_geometry(np.zeros((4, 4, 4)), spacing=(1, 2, 3), origin=(1, 2, 3), direction=direction)
    result = resample(volume, spacing=1.5)
    np.testing.assert_allclose(result.direction, direction, atol=1e-12)
    np.testing.assert_allclose(result.spacing, [1.5, 1.5, 1.5])


def test_nearest_keeps_label_values_and_dtype() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:4, 2:5, 3:6] = 3
    labels[0, 0, 0] = 7
    result = resample(Volume.from_geometry(labels, spacing=(1, 1, 1)), spacing=0.5, interpolation="nearest")
    assert result.array.dtype == np.uint8
    assert set(np.unique(result.array)) == {0, 3, 7}
    assert result.array[4, 6, 8] == 3  # source (2, 3, 4)


def test_bool_masks_resample_with_nearest() -> None:
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    result = resample(Volume.from_geometry(mask, spacing=(2, 2, 2)), spacing=1.0, interpolation="nearest")
    assert result.array.dtype == np.bool_
    assert result.array.sum() == 8 * 8


def test_images_become_float32_unless_float64() -> None:
    ct = Volume.from_geometry(np.zeros((3, 3, 3), dtype=np.int16), spacing=(1, 1, 1))
    assert resample(ct, 0.5).array.dtype == np.float32
    assert resample(ct.with_array(np.zeros((3, 3, 3))), 0.5).array.dtype == np.float64


def test_bspline_keeps_a_constant_and_follows_a_ramp_in_the_interior() -> None:
    constant = Volume.from_geometry(np.full((6, 6, 6), 42.0), spacing=(2, 2, 2))
    np.testing.assert_allclose(resample(constant, 1.3, "bspline").array, 42.0, rtol=1e-9)
    ramp = world_ramp(Volume.from_geometry(np.zeros((16, 16, 16)), spacing=(2, 2, 2)), GRADIENT, 5.0)
    result = resample(ramp, 1.5, "bspline")
    expected = world_ramp(result, GRADIENT, 5.0).array
    interior = (slice(6, 14),) * 3  # the spline's edge effect fades within a few voxels
    np.testing.assert_allclose(result.array[interior], expected[interior], atol=1e-2)


def test_channels_are_resampled_alike() -> None:
    array = np.stack([np.arange(4.0).reshape(4, 1, 1) * np.ones((4, 2, 2)), np.ones((4, 2, 2))], axis=-1)
    result = resample(Volume.from_geometry(array, spacing=(2, 2, 2)), spacing=1.0)
    assert result.array.shape == (8, 4, 4, 2)
    np.testing.assert_allclose(result.array[:, 0, 0, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])
    np.testing.assert_allclose(result.array[..., 1], 1.0)


@pytest.mark.parametrize(
    ("spacing", "interpolation", "message"),
    [
        (0.0, "linear", "spacing must be positive"),
        ((1.0, -1.0, 1.0), "linear", "spacing must be positive"),
        (float("inf"), "linear", "spacing must be positive"),
        ((1.0, 1.0), "linear", "one value per axis"),
        (1.0, "cubic", "interpolation must be one of"),
    ],
)
def test_resample_refuses_bad_arguments(spacing: object, interpolation: str, message: str) -> None:
    volume = Volume.from_geometry(np.zeros((2, 2, 2)), spacing=(1, 1, 1))
    with pytest.raises(TransformError, match=message):
        resample(volume, spacing, interpolation)


# --- resample_to_grid: hand cases ------------------------------------------------------------------------


def test_a_grid_rotated_a_quarter_turn_reads_the_rotated_array() -> None:
    array = np.arange(3 * 4 * 2, dtype=np.float64).reshape(3, 4, 2)
    volume = Volume.from_geometry(array, spacing=(1, 1, 1))
    # new i points along +y, new j along -x; start at the source's last x so the grids coincide
    target = make_affine((1, 1, 1), (2.0, 0.0, 0.0), [[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    for interpolation in ("nearest", "linear", "bspline"):
        result = resample_to_grid(volume, (4, 3, 2), target, interpolation)
        np.testing.assert_allclose(result.array, np.transpose(array[::-1], (1, 0, 2)), atol=1e-9)


def test_target_voxels_outside_the_source_take_fill() -> None:
    volume = Volume.from_geometry(np.ones((2, 2, 2)), spacing=(1, 1, 1))
    target = make_affine((1, 1, 1), (-2.0, 0.0, 0.0), np.eye(3))
    result = resample_to_grid(volume, (6, 2, 2), target, fill=-1024)
    # target x = -2 .. 3; the source covers x in [-0.5, 1.5]
    np.testing.assert_array_equal(result.array[:, 0, 0], [-1024, -1024, 1, 1, -1024, -1024])


def test_resample_onto_its_own_grid_changes_nothing() -> None:
    volume = Volume.from_geometry(np.arange(27).reshape(3, 3, 3), spacing=(0.7, 0.9, 3.0), origin=(4, 5, 6))
    result = resample_to_grid(volume, volume.shape, volume.affine, "nearest")
    np.testing.assert_array_equal(result.array, volume.array)


@pytest.mark.parametrize(
    ("shape", "affine", "message"),
    [
        ((2, 2, 0), np.eye(4), "shape must be >= 1"),
        ((2, 2), np.eye(4), "one value per axis"),
        ((2, 2, 2), np.eye(3), "must be 4x4"),
        ((2, 2, 2), np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        ((2, 2, 2), np.full((4, 4), np.nan), "non-finite"),
        ((2, 2, 2), np.ones((4, 4)), "last row"),
    ],
)
def test_resample_to_grid_refuses_bad_grids(shape: tuple[int, ...], affine: np.ndarray, message: str) -> None:
    volume = Volume.from_geometry(np.zeros((2, 2, 2)), spacing=(1, 1, 1))
    with pytest.raises(TransformError, match=message):
        resample_to_grid(volume, shape, affine)


# --- properties ------------------------------------------------------------------------------------------

ratios = st.tuples(*[st.floats(0.4, 2.5)] * 3)


@settings(max_examples=40, deadline=None)
@given(volumes(sides=(6, 12)), ratios)
def test_resample_then_invert_returns_to_the_source_grid_and_keeps_a_ramp(
    volume: Volume, ratio: tuple[float, float, float]
) -> None:
    ramp = world_ramp(volume, GRADIENT, 3.0)
    r = np.asarray(ratio)
    resampled = resample(ramp, spacing=volume.spacing * r)
    # forward: exact wherever the new voxel lies within the source voxel centres
    inside = np.all(all_indices(resampled.shape) * r <= np.asarray(volume.shape) - 1 + 1e-9, axis=-1)
    expected = world_ramp(resampled, GRADIENT, 3.0).array
    np.testing.assert_allclose(resampled.array[inside], expected[inside], atol=1e-6)

    restored = invert(resampled, kind="image")
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    assert restored.history == ()
    # back: exact where both neighbouring resampled voxels were exact
    n = np.asarray(volume.shape, dtype=np.float64)
    limit = np.minimum(n - 1 - r, n - 2.5 * r) - 1e-9
    interior = np.all(all_indices(volume.shape) <= limit, axis=-1)
    np.testing.assert_allclose(restored.array[interior], ramp.array[interior], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(volumes(), ratios)
def test_nearest_resampling_keeps_the_label_set(volume: Volume, ratio: tuple[float, float, float]) -> None:
    labels = volume.with_array((volume.array.astype(np.int64) % 5).astype(np.uint8))
    resampled = resample(labels, spacing=volume.spacing * np.asarray(ratio), interpolation="nearest")
    source_labels = set(np.unique(labels.array).tolist())
    assert set(np.unique(resampled.array).tolist()) <= source_labels
    if max(ratio) <= 1.0:  # upsampling hits every source voxel
        assert set(np.unique(resampled.array).tolist()) == source_labels
    restored = invert(resampled, kind="label")
    assert restored.array.dtype == np.uint8
    assert set(np.unique(restored.array).tolist()) <= source_labels
    np.testing.assert_array_equal(restored.affine, volume.affine)


@st.composite
def target_grids(draw: st.DrawFn, volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
    """A random grid whose centre lies near the volume's centre, so the two overlap."""
    shape = draw(st.tuples(*[st.integers(2, 8)] * 3))
    spacing = np.asarray(draw(spacings))
    direction = draw(directions)
    centre = volume.index_to_world((np.asarray(volume.shape) - 1) / 2) + np.asarray(draw(origins)) / 100
    origin = centre - direction @ (spacing * (np.asarray(shape) - 1) / 2)
    return shape, make_affine(spacing, origin, direction)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_resample_to_grid_then_invert_returns_to_the_source_grid(data: st.DataObject) -> None:
    volume = data.draw(volumes())
    shape, affine = data.draw(target_grids(volume))
    ramp = world_ramp(volume, GRADIENT, -2.0)
    moved = resample_to_grid(ramp, shape, affine, "linear", fill=np.nan)
    # forward: exact at every target voxel inside the hull of the source voxel centres
    source_index = volume.world_to_index(moved.index_to_world(all_indices(shape)))
    hull = np.all((source_index >= -1e-9) & (source_index <= np.asarray(volume.shape) - 1 + 1e-9), axis=-1)
    expected = world_ramp(moved, GRADIENT, -2.0).array
    np.testing.assert_allclose(moved.array[hull], expected[hull], atol=1e-6)

    restored = invert(moved.with_array(np.ones(shape, dtype=np.uint8)), kind="label", fill=0)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    # voxels the target grid never covered are fill; those well inside it are covered
    target_index = moved.world_to_index(volume.index_to_world(all_indices(volume.shape)))
    upper = np.asarray(shape) - 0.5
    outside = np.any((target_index < -0.5 - 1e-6) | (target_index > upper + 1e-6), axis=-1)
    well_inside = np.all((target_index > -0.5 + 1e-6) & (target_index < upper - 1e-6), axis=-1)
    assert np.all(restored.array[outside] == 0)
    assert np.all(restored.array[well_inside] == 1)
