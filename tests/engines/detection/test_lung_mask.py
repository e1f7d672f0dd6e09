"""The lung mask: both lungs, never the air outside the body, the table or bowel gas; pleural nodules inside."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from vesalius.core.errors import InputError
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.engines.detection.lung_mask import LungMaskSettings, lung_mask, lung_volume_ml

SHAPE = (96, 96, 64)
SPACING = (3.6, 3.6, 5.0)
ORIGIN = (-171.0, -171.0, -320.0)
SERIES_UID = "1.2.826.0.1.3680043.8.498.77"
RIGHT_LUNG = ((-65.0, -10.0, -120.0), (45.0, 65.0, 100.0))
LEFT_LUNG = ((65.0, -10.0, -120.0), (40.0, 62.0, 95.0))
"""(centre, semi-axes) in LPS mm: the patient's left is +x, so the left lung lies at positive x."""
PLEURAL_NODULE = ((99.0, -10.0, -120.0), 9.0)
"""A solid nodule on the left lung's lateral pleura (wall at x = 105 mm), 3 mm into the wall: (centre, radius) mm."""


@dataclass(frozen=True)
class Phantom:
    """A synthetic chest CT and where each of its structures is."""

    volume: Volume
    lungs: npt.NDArray[np.bool_]
    gas: npt.NDArray[np.bool_]
    table_cavity: npt.NDArray[np.bool_]
    outside: npt.NDArray[np.bool_]


def world_grid(
    shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, float, float] = SPACING
) -> npt.NDArray[np.float64]:
    """LPS mm of every voxel centre, (i, j, k, 3), for an axis-aligned LPS grid."""
    axes = [ORIGIN[a] + spacing[a] * np.arange(shape[a]) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def ellipsoid(
    points: npt.NDArray[np.float64], centre: tuple[float, ...], semi: tuple[float, ...]
) -> npt.NDArray[np.bool_]:
    return np.asarray(np.sum(((points - np.asarray(centre)) / np.asarray(semi)) ** 2, axis=-1) <= 1.0)


def tube(
    points: npt.NDArray[np.float64], start: tuple[float, ...], stop: tuple[float, ...], radius: float
) -> npt.NDArray[np.bool_]:
    """Voxels within ``radius`` mm of the segment start-stop: a vessel or an airway."""
    a, b = np.asarray(start), np.asarray(stop)
    t = np.clip(((points - a) @ (b - a)) / float((b - a) @ (b - a)), 0.0, 1.0)
    return np.asarray(np.linalg.norm(points - (a + t[..., None] * (b - a)), axis=-1) <= radius)


def chest_phantom(
    seed: int = 0,
    noise_hu: float = 15.0,
    joined: bool = True,
    gas_semi: tuple[float, float, float] = (25.0, 20.0, 15.0),
    pleural_nodule: bool = True,
    lung_hu: float = -850.0,
) -> Phantom:
    """A 96 x 96 x 64 chest: soft-tissue body, two lungs with vessels (joined by an airway when ``joined``),
    a table with an air channel under the body, outside air at -1000 HU and a gas pocket low in the abdomen."""
    points = world_grid()
    x, y = points[..., 0], points[..., 1]
    hu = np.full(SHAPE, -1000.0)
    outside = np.ones(SHAPE, dtype=bool)
    body = ((x / 150.0) ** 2 + ((y + 10.0) / 105.0) ** 2) <= 1.0
    hu[body] = 40.0
    outside &= ~body
    table = (np.abs(x) <= 165.0) & (y >= 103.0) & (y <= 125.0)
    cavity = (np.abs(x) <= 140.0) & (y >= 109.0) & (y <= 119.0)
    hu[table] = 300.0
    hu[cavity] = -1000.0
    outside &= ~table
    lungs = ellipsoid(points, *RIGHT_LUNG) | ellipsoid(points, *LEFT_LUNG)
    if joined:  # trachea to the top slice and two main bronchi
        lungs |= tube(points, (0.0, -25.0, -70.0), (0.0, -25.0, 10.0), 9.0)
        lungs |= tube(points, (0.0, -25.0, -70.0), (-60.0, -10.0, -110.0), 6.0)
        lungs |= tube(points, (0.0, -25.0, -70.0), (60.0, -10.0, -110.0), 6.0)
    hu[lungs] = lung_hu
    for side in (-1.0, 1.0):  # vessels: bright tubes that must end up inside the mask
        hu[tube(points, (side * 45.0, -20.0, -190.0), (side * 80.0, 10.0, -60.0), 3.0) & lungs] = 40.0
        hu[tube(points, (side * 50.0, -50.0, -150.0), (side * 85.0, 20.0, -120.0), 2.5) & lungs] = 40.0
    if pleural_nodule:
        centre, radius = PLEURAL_NODULE
        hu[np.linalg.norm(points - np.asarray(centre), axis=-1) <= radius] = 40.0
    gas = ellipsoid(points, (30.0, -40.0, -290.0), gas_semi)
    hu[gas] = -1000.0
    hu += np.random.default_rng(seed).normal(0.0, noise_hu, SHAPE) if noise_hu else 0.0
    volume = Volume.from_geometry(
        hu.astype(np.float32),
        SPACING,
        ORIGIN,
        modality="CT",
        identity=DicomIdentity(series_instance_uid=SERIES_UID),
    )
    return Phantom(volume, lungs, gas, cavity, outside)


def head_phantom() -> Volume:
    """A head-sized soft-tissue ellipsoid with two small sinuses: no lung anywhere."""
    points = world_grid()
    hu = np.full(SHAPE, -1000.0)
    hu[ellipsoid(points, (0.0, 0.0, -160.0), (75.0, 95.0, 100.0))] = 40.0
    for side in (-1.0, 1.0):
        hu[ellipsoid(points, (side * 20.0, -60.0, -170.0), (12.0, 12.0, 15.0))] = -1000.0
    return Volume.from_geometry(
        hu.astype(np.float32), SPACING, ORIGIN, modality="CT", identity=DicomIdentity(series_instance_uid=SERIES_UID)
    )


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return chest_phantom()


@pytest.fixture(scope="module")
def mask(phantom: Phantom) -> Volume:
    return lung_mask(phantom.volume)


def test_the_mask_holds_both_lungs_and_lies_on_the_ct_grid(phantom: Phantom, mask: Volume) -> None:
    assert mask.same_grid(phantom.volume)
    assert mask.array.dtype == np.uint8
    inside = mask.array.astype(bool)
    assert inside[phantom.lungs].mean() > 0.99  # vessels included: slices are filled
    overlap = 2 * np.count_nonzero(inside & phantom.lungs) / (inside.sum() + phantom.lungs.sum())
    assert overlap > 0.95
    for centre, _ in (RIGHT_LUNG, LEFT_LUNG):
        index = tuple(np.round(phantom.volume.world_to_index(centre)).astype(int))
        assert inside[index]


def test_outside_air_the_table_and_bowel_gas_are_left_out(phantom: Phantom, mask: Volume) -> None:
    inside = mask.array.astype(bool)
    assert not inside[phantom.outside].any()
    assert not inside[phantom.table_cavity].any()
    assert not inside[phantom.gas].any()


def test_a_nodule_on_the_pleura_is_inside_the_mask_thanks_to_the_closing(phantom: Phantom, mask: Volume) -> None:
    centre, _ = PLEURAL_NODULE
    index = tuple(np.round(phantom.volume.world_to_index(centre)).astype(int))
    assert mask.array[index] == 1
    hugging = lung_mask(phantom.volume, LungMaskSettings(closing_mm=0.0))
    assert hugging.array[index] == 0  # without the closing the mask would cut it


def test_the_lung_volume_is_reported_in_millilitres(mask: Volume) -> None:
    expected = sum(4.0 / 3.0 * np.pi * np.prod(semi) for _, semi in (RIGHT_LUNG, LEFT_LUNG)) / 1000.0
    assert lung_volume_ml(mask) == pytest.approx(expected, rel=0.08)  # plus airways, pleural nodule, closing


def test_two_separate_lungs_are_kept_and_large_bowel_gas_below_them_is_not() -> None:
    separate = chest_phantom(joined=False, gas_semi=(60.0, 45.0, 30.0), pleural_nodule=False)
    gas_ml = np.count_nonzero(separate.gas) * np.prod(SPACING) / 1000.0
    smaller_lung_ml = 4.0 / 3.0 * np.pi * np.prod(LEFT_LUNG[1]) / 1000.0
    assert gas_ml > 0.15 * smaller_lung_ml  # large enough that size alone would keep it
    inside = lung_mask(separate.volume).array.astype(bool)
    assert inside[separate.lungs].mean() > 0.99
    assert not inside[separate.gas].any()


def test_a_margin_grows_the_mask(phantom: Phantom, mask: Volume) -> None:
    grown = lung_mask(phantom.volume, LungMaskSettings(margin_mm=5.0))
    assert np.all(grown.array >= mask.array)
    assert lung_volume_ml(grown) > lung_volume_ml(mask) * 1.05


def test_a_volume_without_lungs_is_refused_with_its_series_named() -> None:
    with pytest.raises(InputError, match=rf"series {SERIES_UID}: no lung found"):
        lung_mask(head_phantom())


@pytest.mark.shared_data
def test_lidc_idri_0001_lungs_hold_the_reference_nodule_and_inserted_ones(shared_data: Path) -> None:
    """Real CT: plausible lung volume, the juxtapleural 24 mm reference nodule inside, inserts inside."""
    folder = shared_data / "lidc" / "LIDC-IDRI-0001"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from vesalius.engines.detection.insertion import insert_nodules
    from vesalius.engines.detection.reference import reference_standard
    from vesalius.io import read_volume
    from vesalius.io.annotations.lidc import SeriesGeometry, read_lidc_xml

    volume = read_volume(folder)
    started = time.perf_counter()
    mask = lung_mask(volume)
    seconds = time.perf_counter() - started
    # measured: 4025 mL, about 4 s on one core (0.70 x 0.70 x 2.5 mm, 512 x 512 x 133)
    assert 3000.0 < lung_volume_ml(mask) < 7000.0, f"lung volume {lung_volume_ml(mask):.0f} mL in {seconds:.1f} s"
    standard = reference_standard(read_lidc_xml(folder / "069.xml"), SeriesGeometry.from_volume(volume))
    (nodule,) = standard.nodules
    index = tuple(np.round(volume.world_to_index(nodule.centre)).astype(int))
    assert mask.array[index] == 1
    inserted, nodules = insert_nodules(volume, mask, 4, rng=7, avoid=[(nodule.centre, nodule.diameter_mm)])
    assert inserted.same_grid(volume)
    for placed in nodules:
        centre = tuple(np.round(volume.world_to_index(placed.centre)).astype(int))
        assert mask.array[centre] == 1
        assert np.linalg.norm(np.subtract(placed.centre, nodule.centre)) > nodule.diameter_mm / 2.0
