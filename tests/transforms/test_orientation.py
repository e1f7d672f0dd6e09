"""to_canonical: axes permuted and flipped towards a code, never interpolated, every voxel kept in place."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.strategies import all_indices, volumes
from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms import invert, to_canonical

RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])
"""Axes pointing Right, Anterior, Superior, written in LPS: how NIfTI files usually lie."""


def ras_volume() -> Volume:
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    return Volume.from_geometry(array, spacing=(0.5, 0.75, 2.0), origin=(10.0, 20.0, -30.0), direction=RAS_DIRECTION)


def test_ras_volume_becomes_lps_by_flipping_i_and_j() -> None:
    volume = ras_volume()
    result = to_canonical(volume)
    np.testing.assert_array_equal(result.direction, np.eye(3))
    assert result.orientation == "LPS"
    np.testing.assert_array_equal(result.array, volume.array[::-1, ::-1, :])
    # the new first voxel is the old voxel (1, 2, 0): 10 - 1 * 0.5 and 20 - 2 * 0.75
    np.testing.assert_allclose(result.origin, [9.5, 18.5, -30.0])
    np.testing.assert_allclose(result.spacing, [0.5, 0.75, 2.0])
    assert result.history[-1].params == {"code": "LPS", "perm": (0, 1, 2), "flips": (True, True, False)}


def test_ras_code_on_a_ras_volume_changes_nothing() -> None:
    volume = ras_volume()
    result = to_canonical(volume, code="ras")
    np.testing.assert_array_equal(result.array, volume.array)
    np.testing.assert_array_equal(result.affine, volume.affine)
    assert result.orientation == "RAS"


def test_sagittal_series_is_permuted_into_lps() -> None:
    # i points Posterior, j Inferior, k Left: a sagittal acquisition
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    volume = Volume.from_geometry(array, spacing=(1.0, 2.0, 3.0), direction=direction)
    assert volume.orientation == "PIL"
    result = to_canonical(volume)
    np.testing.assert_array_equal(result.direction, np.eye(3))
    assert result.shape == (4, 2, 3)
    np.testing.assert_allclose(result.spacing, [3.0, 1.0, 2.0])
    np.testing.assert_array_equal(result.array, np.transpose(array, (2, 0, 1))[:, :, ::-1])


def test_oblique_axes_sharing_a_dominant_direction_still_get_distinct_axes() -> None:
    # both i and j lean mostly towards L; the best assignment still uses every axis once
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))
    direction = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume.from_geometry(np.zeros((2, 3, 4)), spacing=(1, 1, 1), direction=direction)
    result = to_canonical(volume)
    assert sorted(result.history[-1].params["perm"]) == [0, 1, 2]
    assert np.all(np.diag(result.direction) > 0)


def test_channel_axis_stays_last() -> None:
    array = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    volume = Volume.from_geometry(array, spacing=(1, 1, 1), direction=RAS_DIRECTION)
    result = to_canonical(volume)
    np.testing.assert_array_equal(result.array, array[::-1, ::-1, :, :])


def test_any_valid_code_is_allowed_even_a_permuted_one() -> None:
    result = to_canonical(ras_volume(), code="PIL")
    assert result.orientation == "PIL"
    assert result.shape == (3, 4, 2)


@pytest.mark.parametrize("code", ["LPX", "LLS", "PSI", "LP", "LPSS", ""])
def test_invalid_codes_are_refused(code: str) -> None:
    with pytest.raises(TransformError, match="orientation code"):
        to_canonical(ras_volume(), code=code)


codes = st.sampled_from(["LPS", "RAS"])


@settings(max_examples=50, deadline=None)
@given(volumes(channels=True), codes)
def test_to_canonical_then_invert_is_exact(volume: Volume, code: str) -> None:
    restored = invert(to_canonical(volume, code), kind="image")
    np.testing.assert_array_equal(restored.array, volume.array)
    np.testing.assert_array_equal(restored.affine, volume.affine)
    assert restored.history == ()


@settings(max_examples=50, deadline=None)
@given(volumes(), codes)
def test_every_voxel_keeps_its_world_position(volume: Volume, code: str) -> None:
    result = to_canonical(volume, code)
    # values are flat indices of the input, so each output voxel says where it came from
    source_index = np.stack(np.unravel_index(result.array.astype(int), volume.shape), axis=-1)
    np.testing.assert_allclose(
        result.index_to_world(all_indices(result.shape)), volume.index_to_world(source_index), atol=1e-9
    )


@settings(max_examples=50, deadline=None)
@given(volumes(), codes)
def test_axes_point_towards_the_code_and_a_second_call_does_nothing(volume: Volume, code: str) -> None:
    result = to_canonical(volume, code)
    target_signs = np.array([1.0, 1.0, 1.0]) if code == "LPS" else np.array([-1.0, -1.0, 1.0])
    assert np.all(np.diag(result.direction) * target_signs >= 0)
    again = to_canonical(result, code)
    assert again.history[-1].params["perm"] == (0, 1, 2)
    assert again.history[-1].params["flips"] == (False, False, False)
    np.testing.assert_array_equal(again.array, result.array)
