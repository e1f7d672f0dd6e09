"""Nodule insertion: exact ground truth, HU by kind, placement by attachment, reproducible, non-overlapping."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from tests.engines.detection.test_lung_mask import SERIES_UID, Phantom, chest_phantom
from vesalius.core.errors import InputError
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.engines.detection.insertion import (
    Attachment,
    InsertedNodule,
    InsertionSettings,
    NoduleKind,
    insert_nodules,
    lung_noise_std,
    nodule_label_map,
    occupancy_map,
)
from vesalius.engines.detection.lung_mask import lung_mask

LUNG_HU = -850.0


def uniform_lung(spacing: tuple[float, float, float] = (0.8, 0.8, 1.6)) -> tuple[Volume, npt.NDArray[np.bool_]]:
    """A block of noiseless lung at -850 HU inside soft tissue: the difference image is the nodule alone."""
    shape = (80, 80, 40)
    array = np.full(shape, 40.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[4:-4, 4:-4, 3:-3] = True
    array[mask] = LUNG_HU
    volume = Volume.from_geometry(
        array, spacing, (-30.0, -20.0, -100.0), modality="CT", identity=DicomIdentity(series_instance_uid=SERIES_UID)
    )
    return volume, mask


def only(
    kind: NoduleKind = "solid",
    attachment: Attachment = "isolated",
    diameter: tuple[float, float] | None = None,
    **changes: object,
) -> InsertionSettings:
    """Settings that draw one kind and attachment; noise and texture off unless asked for."""
    options: dict[str, object] = {"noise_std_hu": 0.0, "texture_hu": 0.0, **changes}
    if diameter is not None:
        options["diameter_range_mm"] = diameter
    kinds: Mapping[NoduleKind, float] = {kind: 1.0}
    attachments: Mapping[Attachment, float] = {attachment: 1.0}
    return InsertionSettings(kind_weights=kinds, attachment_weights=attachments, **options)


def box(nodule: InsertedNodule) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(nodule.offset, nodule.occupancy.shape, strict=True))


@pytest.fixture(scope="module")
def chest() -> tuple[Phantom, Volume]:
    phantom = chest_phantom(seed=3)
    return phantom, lung_mask(phantom.volume)


@pytest.mark.parametrize(("diameter", "seed"), [(3.5, 0), (8.0, 1), (16.0, 2), (28.0, 3)])
def test_the_recorded_centre_and_diameter_are_those_of_the_rendered_nodule(diameter: float, seed: int) -> None:
    volume, mask = uniform_lung()
    out, (nodule,) = insert_nodules(volume, mask, 1, rng=seed, settings=only(diameter=(diameter, diameter)))
    difference = out.array.astype(np.float64) - volume.array
    assert nodule.solid_hu is not None
    fraction = difference / (nodule.solid_hu - LUNG_HU)  # what a reader of the image would measure
    assert fraction.min() > -1e-5
    assert fraction.max() < 1.0 + 1e-5
    indices = np.indices(volume.shape).reshape(3, -1).T
    centroid = volume.index_to_world(fraction.reshape(-1) @ indices / fraction.sum())
    assert np.linalg.norm(centroid - nodule.centre) < 0.01 * min(volume.spacing)
    measured = (6.0 * fraction.sum() * np.prod(volume.spacing) / math.pi) ** (1.0 / 3.0)
    assert measured == pytest.approx(nodule.diameter_mm, rel=1e-4)
    assert nodule.diameter_mm == pytest.approx(diameter, rel=0.15)  # lobulated, but about the drawn size


def test_a_smooth_sphere_has_the_volume_of_a_sphere() -> None:
    volume, mask = uniform_lung()
    sphere = only(diameter=(7.0, 7.0), lobulation=0.0, spiculation_probability=0.0, axis_ratio=(1.0, 1.0))
    _out, (nodule,) = insert_nodules(volume, mask, 1, rng=4, settings=sphere)
    assert nodule.volume_mm3 == pytest.approx(math.pi * 7.0**3 / 6.0, rel=0.02)
    assert nodule.diameter_mm == pytest.approx(7.0, rel=0.01)
    assert nodule.nominal_diameter_mm == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("kind", "solid", "ground_glass"),
    [("solid", True, False), ("ground-glass", False, True), ("part-solid", True, True)],
)
def test_each_kind_has_its_hu(kind: NoduleKind, solid: bool, ground_glass: bool) -> None:
    volume, mask = uniform_lung()
    out, (nodule,) = insert_nodules(volume, mask, 1, rng=5, settings=only(kind, diameter=(14.0, 14.0)))
    full = out.array[box(nodule)][nodule.occupancy >= 0.999]
    assert full.size > 50
    in_solid = (full >= -100.0) & (full <= 100.0)
    in_ground_glass = (full >= -750.0) & (full <= -500.0)
    assert bool(in_solid.any()) == solid
    assert bool(in_ground_glass.any()) == ground_glass
    # a part-solid nodule's voxels on the core's edge mix both, so they lie in between
    assert np.all(in_solid | in_ground_glass) if kind != "part-solid" else np.all((full >= -750.0) & (full <= 100.0))
    assert (nodule.solid_hu is not None) == solid
    assert (nodule.ground_glass_hu is not None) == ground_glass


def pleura(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Lung voxels with a face on a voxel outside the mask."""
    return np.asarray(mask & ~ndimage.binary_erosion(mask, border_value=0), dtype=bool)


def test_juxtapleural_nodules_touch_the_mask_boundary_and_isolated_ones_do_not(chest: tuple[Phantom, Volume]) -> None:
    phantom, mask = chest
    boundary = pleura(mask.array.astype(bool))
    for attachment, touching in (("juxtapleural", True), ("isolated", False)):
        settings = only(attachment=attachment, diameter=(4.0, 12.0))
        _, nodules = insert_nodules(phantom.volume, mask, 4, rng=6, settings=settings)
        for nodule in nodules:
            occupied = nodule.occupancy > 0
            assert bool((boundary[box(nodule)] & occupied).any()) == touching, nodule
            assert np.all(mask.array[box(nodule)][occupied] == 1)  # never outside the lung mask


def test_vascular_nodules_sit_on_a_vessel(chest: tuple[Phantom, Volume]) -> None:
    phantom, mask = chest
    vessels = (phantom.volume.array > -300.0) & mask.array.astype(bool)
    _, nodules = insert_nodules(phantom.volume, mask, 3, rng=8, settings=only(attachment="vascular"))
    for nodule in nodules:
        assert vessels[box(nodule)][nodule.occupancy > 0].any()
        assert nodule.attachment == "vascular"


def test_the_same_seed_gives_the_same_volume_and_another_seed_another(chest: tuple[Phantom, Volume]) -> None:
    phantom, mask = chest
    first, truth = insert_nodules(phantom.volume, mask, 3, rng=11)
    again, repeated = insert_nodules(phantom.volume, mask, 3, rng=np.random.default_rng(11))
    other, _ = insert_nodules(phantom.volume, mask, 3, rng=12)
    assert np.array_equal(first.array, again.array)
    assert [n.centre for n in truth] == [n.centre for n in repeated]
    assert not np.array_equal(first.array, other.array)


def test_count_gaps_and_nodules_to_avoid_are_respected(chest: tuple[Phantom, Volume]) -> None:
    phantom, mask = chest
    avoid = [((65.0, -10.0, -120.0), 30.0), ((-65.0, -10.0, -120.0), 30.0)]  # the middle of both lungs
    out, nodules = insert_nodules(phantom.volume, mask, 10, rng=13, avoid=avoid)
    assert len(nodules) == 10
    assert out.same_grid(phantom.volume)
    assert out.array.dtype == np.float32
    overlap = sum(occupancy_map(phantom.volume, [n]).array > 0 for n in nodules)
    assert overlap.max() == 1  # no voxel is shared by two nodules
    labels = nodule_label_map(phantom.volume, nodules)
    assert set(np.unique(labels.array)) <= set(range(11))
    for nodule in nodules:
        for centre, diameter in avoid:
            assert np.linalg.norm(np.subtract(nodule.centre, centre)) > diameter / 2.0 + nodule.diameter_mm / 2.0
        index = tuple(np.round(phantom.volume.world_to_index(nodule.centre)).astype(int))
        assert mask.array[index] == 1
    kinds = {n.kind for n in nodules} | {n.attachment for n in nodules}
    assert len(kinds) >= 4  # the default mix draws several kinds and attachments


def test_added_noise_matches_the_lung_noise(chest: tuple[Phantom, Volume]) -> None:
    phantom, mask = chest
    assert lung_noise_std(phantom.volume, mask) == pytest.approx(15.0, rel=0.1)  # the phantom's noise
    clean, lungs = uniform_lung()
    noisy = clean.with_array(clean.array + np.random.default_rng(0).normal(0.0, 15.0, clean.shape).astype(np.float32))
    settings = only(diameter=(16.0, 16.0), noise_std_hu=None, texture_hu=0.0)
    out, (nodule,) = insert_nodules(noisy, lungs, 1, rng=14, settings=settings)
    core = out.array[box(nodule)][nodule.occupancy >= 0.999]
    assert core.size > 1000
    assert float(core.std()) == pytest.approx(15.0, rel=0.15)  # not smoother than the scan


def test_impossible_requests_are_refused_naming_the_series() -> None:
    volume, mask = uniform_lung()
    with pytest.raises(InputError, match=rf"series {SERIES_UID}: could place only"):
        insert_nodules(volume, mask, 40, rng=0, settings=only(diameter=(20.0, 20.0), max_attempts=20))
    with pytest.raises(InputError, match="lung mask is empty"):
        insert_nodules(volume, np.zeros(volume.shape, dtype=bool), 1, rng=0)
    with pytest.raises(InputError, match="lung mask shape"):
        insert_nodules(volume, mask[:-1], 1, rng=0)
