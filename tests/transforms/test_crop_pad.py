"""crop, crop_to_foreground and pad: whole-voxel grid changes that move the origin and invert exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.strategies import volumes
from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms import crop, crop_to_foreground, invert, pad


def grid(shape: tuple[int, ...] = (4, 5, 6)) -> Volume:
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    return Volume.from_geometry(array, spacing=(0.5, 1.0, 2.5), origin=(1.0, 2.0, 3.0), direction=direction)


def box_volume(shape: tuple[int, int, int] = (10, 10, 10)) -> Volume:
    """Zeros with a foreground block at [2:5, 3:7, 4:5]."""
    array = np.zeros(shape, dtype=np.int16)
    array[2:5, 3:7, 4] = 100
    return Volume.from_geometry(array, spacing=(1.0, 1.0, 1.0))


# --- crop ------------------------------------------------------------------------------------------------


def test_crop_keeps_the_box_and_moves_the_origin_to_its_first_voxel() -> None:
    volume = grid()
    result = crop(volume, start=(1, 2, 3), stop=(3, 5, 6))
    np.testing.assert_array_equal(result.array, volume.array[1:3, 2:5, 3:6])
    np.testing.assert_allclose(result.origin, volume.index_to_world([1, 2, 3]))
    np.testing.assert_array_equal(result.affine[:3, :3], volume.affine[:3, :3])
    assert result.history[-1].params == {"start": (1, 2, 3), "stop": (3, 5, 6)}


def test_crop_then_invert_restores_the_grid_and_the_values_inside_the_crop() -> None:
    volume = grid()
    cropped = crop(volume, start=(1, 2, 3), stop=(3, 5, 6))
    restored = invert(cropped, kind="image", fill=-1)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    inside = np.zeros(volume.shape, dtype=bool)
    inside[1:3, 2:5, 3:6] = True
    np.testing.assert_array_equal(restored.array[inside], volume.array[inside])
    assert np.all(restored.array[~inside] == -1)


@pytest.mark.parametrize(
    ("start", "stop"),
    [
        ((0, 0, 0), (5, 5, 6)),
        ((-1, 0, 0), (2, 2, 2)),
        ((2, 0, 0), (2, 2, 2)),
        ((0, 0), (2, 2)),
        ((0.5, 0, 0), (2, 2, 2)),
    ],
)
def test_crop_refuses_boxes_outside_the_grid_or_empty(start: tuple[int, ...], stop: tuple[int, ...]) -> None:
    with pytest.raises(TransformError, match="crop"):
        crop(grid(), start=start, stop=stop)


# --- crop_to_foreground ----------------------------------------------------------------------------------


def test_crop_to_foreground_finds_the_bounding_box() -> None:
    result = crop_to_foreground(box_volume())
    assert result.shape == (3, 4, 1)
    assert np.all(result.array == 100)
    np.testing.assert_allclose(result.origin, [2.0, 3.0, 4.0])


def test_crop_to_foreground_margin_is_clamped_to_the_grid() -> None:
    result = crop_to_foreground(box_volume(), margin=(1, 4, 0))
    params = result.history[-1].params
    assert params["start"] == (1, 0, 4)
    assert params["stop"] == (6, 10, 5)


def test_crop_to_foreground_by_threshold_and_by_mask() -> None:
    volume = box_volume()
    array = volume.array.copy()
    array[0, 0, 0] = 10  # below the threshold: ignored
    by_threshold = crop_to_foreground(volume.with_array(array), threshold=50)
    assert by_threshold.shape == (3, 4, 1)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[7:9, 1, 1:3] = True
    by_mask = crop_to_foreground(volume, mask=mask)
    assert by_mask.history[-1].params["start"] == (7, 1, 1)
    assert by_mask.shape == (2, 1, 2)


def test_crop_to_foreground_on_channels_uses_any_channel() -> None:
    array = np.zeros((6, 6, 6, 2))
    array[1, 2, 3, 0] = 1.0
    array[4, 4, 4, 1] = 1.0
    result = crop_to_foreground(Volume.from_geometry(array, spacing=(1, 1, 1)))
    assert result.array.shape == (4, 3, 2, 2)


def test_crop_to_foreground_refuses_an_empty_foreground_and_two_criteria() -> None:
    volume = box_volume()
    with pytest.raises(TransformError, match="no voxel is foreground"):
        crop_to_foreground(volume, threshold=1000)
    with pytest.raises(TransformError, match="not both"):
        crop_to_foreground(volume, threshold=1, mask=volume.array > 0)
    with pytest.raises(TransformError, match="margin"):
        crop_to_foreground(volume, margin=-1)


# --- pad -------------------------------------------------------------------------------------------------


def test_pad_centres_with_the_odd_voxel_at_the_end() -> None:
    volume = grid((4, 5, 6))
    result = pad(volume, shape=(7, 5, 8), value=-1)
    assert result.shape == (7, 5, 8)
    assert result.history[-1].params["before"] == (1, 0, 1)
    assert result.history[-1].params["after"] == (2, 0, 1)
    np.testing.assert_array_equal(result.array[1:5, :, 1:7], volume.array)
    assert np.sum(result.array == -1) == 7 * 5 * 8 - 4 * 5 * 6
    np.testing.assert_allclose(result.origin, volume.index_to_world([-1, 0, -1]))


def test_pad_at_the_end_keeps_the_origin() -> None:
    volume = grid((4, 5, 6))
    result = pad(volume, multiple_of=4, anchor="end")
    assert result.shape == (4, 8, 8)
    np.testing.assert_array_equal(result.affine, volume.affine)
    np.testing.assert_array_equal(result.array[:4, :5, :6], volume.array)


def test_pad_to_multiples_per_axis_and_edge_mode() -> None:
    volume = grid((4, 5, 6))
    result = pad(volume, multiple_of=(1, 3, 16), mode="edge")
    assert result.shape == (4, 6, 16)
    np.testing.assert_array_equal(result.array[:, :, 0], volume.array[:, [0, 1, 2, 3, 4, 4], 0])


def test_pad_leaves_the_channel_axis_alone() -> None:
    volume = Volume.from_geometry(np.ones((3, 3, 3, 2)), spacing=(1, 1, 1))
    assert pad(volume, shape=4).array.shape == (4, 4, 4, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of shape or multiple_of"),
        ({"shape": (8, 8, 8), "multiple_of": 4}, "exactly one of shape or multiple_of"),
        ({"shape": (2, 8, 8)}, "pad never crops"),
        ({"multiple_of": 0}, "multiple_of must be >= 1"),
        ({"shape": 8, "mode": "wrap"}, "pad mode"),
        ({"shape": 8, "anchor": "start"}, "pad anchor"),
    ],
)
def test_pad_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TransformError, match=message):
        pad(grid(), **kwargs)


# --- properties ------------------------------------------------------------------------------------------


@st.composite
def volume_and_box(draw: st.DrawFn) -> tuple[Volume, tuple[int, ...], tuple[int, ...]]:
    volume = draw(volumes(channels=True))
    start = tuple(draw(st.integers(0, n - 1)) for n in volume.shape)
    stop = tuple(draw(st.integers(a + 1, n)) for a, n in zip(start, volume.shape, strict=True))
    return volume, start, stop


@settings(max_examples=50, deadline=None)
@given(volume_and_box())
def test_crop_then_invert_is_exact_inside_the_box(case: tuple[Volume, tuple[int, ...], tuple[int, ...]]) -> None:
    volume, start, stop = case
    cropped = crop(volume, start, stop)
    restored = invert(cropped, kind="label", fill=-1)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    np.testing.assert_array_equal(restored.array[box], volume.array[box])
    assert np.sum(restored.array == -1) == volume.array.size - cropped.array.size
    # every kept voxel stays at its world position
    np.testing.assert_allclose(cropped.index_to_world([0, 0, 0]), volume.index_to_world(start), atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    volumes(channels=True),
    st.tuples(*[st.integers(0, 4)] * 3),
    st.sampled_from(["center", "end"]),
    st.sampled_from(["constant", "edge", "reflect", "symmetric"]),
)
def test_pad_then_invert_is_exact(volume: Volume, extra: tuple[int, int, int], anchor: str, mode: str) -> None:
    target = tuple(n + e for n, e in zip(volume.shape, extra, strict=True))
    padded = pad(volume, shape=target, anchor=anchor, mode=mode)
    assert padded.shape == target
    restored = invert(padded, kind="image")
    np.testing.assert_array_equal(restored.array, volume.array)
    np.testing.assert_array_equal(restored.affine, volume.affine)
    before = padded.history[-1].params["before"]
    np.testing.assert_allclose(padded.index_to_world(before), volume.origin, atol=1e-9)
