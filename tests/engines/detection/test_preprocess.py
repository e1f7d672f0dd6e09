"""Detection preprocessing: lungs cropped at the detection spacing, with an exact way back to LPS mm."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tests.engines.detection.test_lung_mask import (
    ORIGIN,
    SERIES_UID,
    SHAPE,
    SPACING,
    chest_phantom,
    head_phantom,
    world_grid,
)
from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.detection.lung_mask import lung_mask, lung_volume_ml
from vesalius.engines.detection.preprocess import (
    AIR_HU,
    DetectionGeometry,
    PreparedCT,
    extract_patch,
    extract_patches,
    prepare_ct,
)

GEOMETRY = DetectionGeometry(spacing_mm=(2.0, 2.0, 2.5))
"""Coarser than the default 1 mm so each test runs in well under a second."""


def ramp(points: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A linear HU field in lung range: linear interpolation reproduces it exactly, so values locate voxels."""
    p = np.asarray(points, dtype=np.float64)
    return -850.0 + 0.3 * p[..., 0] + 0.2 * p[..., 1] - 0.25 * (p[..., 2] + 120.0)


def ramp_chest(layout: str = "LPS") -> tuple[Volume, npt.NDArray[np.bool_]]:
    """The chest phantom without noise, its plain lung voxels holding ``ramp``; stored LPS or RAS (i, j flipped)."""
    phantom = chest_phantom(noise_hu=0.0)
    array = phantom.volume.array.copy()
    plain = phantom.lungs & (array == -850.0)
    array[plain] = ramp(world_grid()[plain])
    if layout == "LPS":
        return phantom.volume.with_array(array), plain
    far = (ORIGIN[0] + SPACING[0] * (SHAPE[0] - 1), ORIGIN[1] + SPACING[1] * (SHAPE[1] - 1), ORIGIN[2])
    flipped = Volume.from_geometry(array[::-1, ::-1, :].copy(), SPACING, far, np.diag([-1.0, -1.0, 1.0]), modality="CT")
    return flipped, plain[::-1, ::-1, :]


@pytest.fixture(scope="module")
def prepared() -> PreparedCT:
    return prepare_ct(chest_phantom().volume, GEOMETRY)


def test_the_crop_is_at_the_detection_spacing_and_holds_the_whole_lung_mask(prepared: PreparedCT) -> None:
    volume = chest_phantom().volume
    assert np.allclose(prepared.image.spacing, GEOMETRY.spacing_mm)
    assert prepared.image.same_grid(prepared.hu)
    assert prepared.image.same_grid(prepared.lung_mask)
    assert prepared.image.orientation == "LPS"
    assert lung_volume_ml(prepared.lung_mask) == pytest.approx(lung_volume_ml(lung_mask(volume)), rel=0.03)
    mask = prepared.lung_mask.array.astype(bool)
    margin = np.floor(GEOMETRY.crop_margin_mm / np.asarray(GEOMETRY.spacing_mm)).astype(int)
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        at_start = prepared.crop_start[axis] == 0
        at_end = prepared.crop_start[axis] + mask.shape[axis] == prepared.resampled_shape[axis]
        assert at_start or hits[0] >= margin[axis] - 1
        assert at_end or mask.shape[axis] - 1 - hits[-1] >= margin[axis] - 1
    assert mask.size < 0.6 * np.prod(prepared.resampled_shape)  # the crop keeps about the lungs only


def test_the_image_is_the_hu_window_scaled_to_unit_range(prepared: PreparedCT) -> None:
    low, high = GEOMETRY.hu_window
    expected = (np.clip(prepared.hu.array, low, high) - low) / (high - low)
    assert prepared.image.array.dtype == np.float32
    assert np.allclose(prepared.image.array, expected, atol=1e-6)
    assert [record.name for record in prepared.image.history][-2:] == ["resample_to_grid", "window"]


def test_zscore_normalises_the_lungs_to_zero_mean_and_unit_std() -> None:
    geometry = DetectionGeometry(spacing_mm=(2.0, 2.0, 2.5), normalization="zscore")
    result = prepare_ct(chest_phantom().volume, geometry)
    lungs = result.image.array[result.lung_mask.array.astype(bool)]
    assert float(lungs.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(lungs.std()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("layout", ["LPS", "RAS"])
def test_every_crop_voxel_holds_the_ct_at_its_world_position(layout: str) -> None:
    volume, plain = ramp_chest(layout)
    result = prepare_ct(volume, GEOMETRY)
    indices = np.indices(result.hu.shape).reshape(3, -1).T
    source = result.source_index(indices)
    corners = [np.floor(source) + np.asarray(c) for c in np.ndindex(2, 2, 2)]
    inside = np.all((source >= 0) & (source <= np.asarray(volume.shape) - 1), axis=1)
    usable = inside.copy()
    for corner in corners:  # voxels whose interpolation reads plain lung only, where the ramp is exact
        clipped = np.clip(corner, 0, np.asarray(volume.shape) - 1).astype(int)
        usable &= plain[tuple(clipped.T)]
    assert usable.sum() > 10_000
    world = result.index_to_world(indices[usable])
    assert np.abs(result.hu.array.reshape(-1)[usable] - ramp(world)).max() < 0.01
    assert np.allclose(result.world_to_index(world), indices[usable], atol=1e-9)
    assert np.allclose(volume.index_to_world(source[usable]), world, atol=1e-9)


def test_a_marker_found_in_the_crop_maps_back_to_its_world_position() -> None:
    phantom = chest_phantom(noise_hu=0.0)
    marker = (60.0, -20.0, -110.0)
    array = phantom.volume.array.copy()
    index = tuple(np.round(phantom.volume.world_to_index(marker)).astype(int))
    array[index] = 3000.0
    result = prepare_ct(phantom.volume.with_array(array), DetectionGeometry(spacing_mm=(1.2, 1.2, 1.25)))
    peak = np.unravel_index(int(np.argmax(result.hu.array)), result.hu.shape)
    assert np.allclose(result.index_to_world(peak), phantom.volume.index_to_world(index), atol=0.61)


def linear_volume() -> Volume:
    """A small anisotropic CT whose HU are a linear function of LPS mm."""
    spacing, origin = (0.8, 0.9, 2.5), (-20.0, -15.0, 30.0)
    axes = [origin[a] + spacing[a] * np.arange(n) for a, n in enumerate((40, 36, 16))]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    values = 2.0 * points[..., 0] - points[..., 1] + 0.5 * points[..., 2]
    return Volume.from_geometry(values.astype(np.float64), spacing, origin, modality="CT")


def test_a_patch_is_centred_exactly_on_its_world_point() -> None:
    volume = linear_volume()
    centre = (-4.37, 3.21, 47.9)  # between voxel centres on every axis
    patch = extract_patch(volume, centre, (9, 9, 5))
    assert patch.shape == (9, 9, 5)
    assert np.allclose(patch.index_to_world((4, 4, 2)), centre)
    assert np.allclose(patch.spacing, volume.spacing)
    assert patch.array[4, 4, 2] == pytest.approx(2.0 * centre[0] - centre[1] + 0.5 * centre[2])
    even = extract_patch(volume, centre, (8, 8, 4), spacing=1.0)
    corners = even.index_to_world([(0, 0, 0), (7, 7, 3)])
    assert np.allclose(corners.mean(axis=0), centre)


def test_a_patch_leaving_the_volume_is_padded_with_the_fill_value() -> None:
    volume = linear_volume()
    corner = volume.index_to_world((0, 0, 0))
    patch = extract_patch(volume, corner, (5, 5, 3))
    assert np.all(patch.array[:2] == AIR_HU)  # i = -2, -1 lie outside the scanned field
    assert np.all(patch.array[2:, 2:, 1:] != AIR_HU)
    assert patch.array[2, 2, 1] == pytest.approx(volume.array[0, 0, 0])
    zero = extract_patch(volume, corner, (5, 5, 3), fill=0.0)
    assert np.all(zero.array[:2] == 0.0)


def test_patches_for_many_points_stack_into_a_batch() -> None:
    volume = linear_volume()
    centres = volume.index_to_world([(10, 10, 8), (20.5, 5.25, 3.0)])
    batch = extract_patches(volume, centres, 7)
    assert batch.shape == (2, 7, 7, 7)
    assert batch.dtype == np.float32
    assert np.allclose(batch[1], extract_patch(volume, centres[1], 7).array)
    with pytest.raises(InputError, match="patch centre"):
        extract_patch(volume, (1.0, np.nan, 2.0), 5)


def test_a_ct_without_lungs_is_refused_with_its_series_named() -> None:
    with pytest.raises(InputError, match=rf"series {SERIES_UID}: no lung found"):
        prepare_ct(head_phantom(), GEOMETRY)
    with pytest.raises(InputError, match="hu_window"):
        DetectionGeometry(hu_window=(400.0, -1000.0))
