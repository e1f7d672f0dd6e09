"""The Volume carries geometry: spacing, origin and direction derive from one LPS affine."""

from __future__ import annotations

import numpy as np
import pytest

from tests.dicom_factory import oblique
from vesalius.core import LPS_TO_RAS, Volume, make_affine


def test_geometry_properties_come_from_the_affine() -> None:
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    volume = Volume.from_geometry(
        np.zeros((4, 5, 6)), spacing=(0.5, 0.75, 2.0), origin=(10, -20, 30), direction=direction
    )
    assert np.allclose(volume.spacing, [0.5, 0.75, 2.0])
    assert np.allclose(volume.origin, [10, -20, 30])
    assert np.allclose(volume.direction, direction)
    assert volume.shape == (4, 5, 6)
    assert volume.orientation == "PIL"


def test_index_and_world_are_inverse_maps() -> None:
    volume = Volume(array=np.zeros((3, 4, 5)), affine=oblique())
    indices = np.array([[0, 0, 0], [2, 3, 4], [1.5, 0.25, 3.0]])
    assert np.allclose(volume.world_to_index(volume.index_to_world(indices)), indices)
    assert np.allclose(volume.index_to_world([0, 0, 0]), volume.origin)


def test_ras_affine_flips_the_first_two_world_axes() -> None:
    volume = Volume(array=np.zeros((2, 2, 2)), affine=make_affine((1, 2, 3), (4, 5, 6), np.eye(3)))
    assert np.allclose(volume.ras_affine, LPS_TO_RAS @ volume.affine)
    assert np.allclose(volume.ras_affine[:3, 3], [-4, -5, 6])


def test_axial_dicom_orientation_code_is_lps() -> None:
    assert Volume.from_geometry(np.zeros((2, 2, 2)), (1, 1, 1)).orientation == "LPS"


def test_with_array_keeps_the_grid_and_refuses_another_shape() -> None:
    volume = Volume(array=np.zeros((3, 4, 5)), affine=oblique(), modality="CT")
    mask = volume.with_array(np.ones((3, 4, 5), dtype=np.uint8))
    assert mask.same_grid(volume)
    assert mask.modality == "CT"
    with pytest.raises(ValueError, match="does not match"):
        volume.with_array(np.zeros((3, 4, 6)))


@pytest.mark.parametrize(
    ("array", "affine", "message"),
    [
        (np.zeros((2, 2)), np.eye(4), "3-D"),
        (np.zeros((2, 2, 2)), np.eye(3), "4x4"),
        (np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]), "singular"),
    ],
)
def test_invalid_geometry_is_refused(array: np.ndarray, affine: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Volume(array=array, affine=affine)


def test_volume_is_immutable() -> None:
    volume = Volume.from_geometry(np.zeros((2, 2, 2)), (1, 1, 1))
    with pytest.raises(AttributeError):
        volume.modality = "MR"  # type: ignore[misc]


def test_oblique_orientation_code_has_three_distinct_axes() -> None:
    # Rotated 50 degrees about x and 40 about z: j and k both lean most towards S; k gets its second best.
    direction = np.array([[0.766, -0.413, 0.492], [0.643, 0.492, -0.587], [0.0, 0.766, 0.643]])
    code = Volume.from_geometry(np.zeros((2, 2, 2)), (1, 1, 1), direction=direction).orientation
    assert code == "LSA"


def test_affine_is_copied_and_read_only() -> None:
    affine = np.eye(4)
    volume = Volume(array=np.zeros((2, 2, 2)), affine=affine)
    affine[0, 0] = 5.0
    assert volume.spacing[0] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        volume.affine[0, 0] = 2.0
