"""Gantry-tilted CT: slices are sheared against their normal. Refuse it, or resample it onto an
orthogonal grid on which a sphere phantom lands where it is in the patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import dicom_factory as factory
from tests.io import peers
from vesalius.core.errors import SeriesGeometryError
from vesalius.io.dicom import read_series

TILTS = [
    pytest.param(15.0, False, id="15deg-axial-iop-sheared-positions"),
    pytest.param(15.0, True, id="15deg-tilted-iop-table-along-z"),
    pytest.param(-22.0, True, id="minus22deg-tilted-iop"),
]


@pytest.mark.parametrize(("tilt_deg", "iop_tilted"), TILTS)
def test_refusing_a_tilt_names_it(tmp_path: Path, tilt_deg: float, iop_tilted: bool) -> None:
    phantom = factory.gantry_tilted_series(tmp_path, tilt_deg=tilt_deg, iop_tilted=iop_tilted)
    with pytest.raises(SeriesGeometryError) as raised:
        read_series(phantom.series.folder, on_tilt="refuse")
    assert "tilt" in "; ".join(raised.value.problems).lower()  # not the file list: its folder says "tilt"


@pytest.mark.parametrize(("tilt_deg", "iop_tilted"), TILTS)
def test_resampled_tilt_puts_the_sphere_where_it_is(tmp_path: Path, tilt_deg: float, iop_tilted: bool) -> None:
    phantom = factory.gantry_tilted_series(tmp_path, tilt_deg=tilt_deg, iop_tilted=iop_tilted)
    volume = read_series(phantom.series.folder, on_tilt="resample")

    direction = volume.direction
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6, err_msg="grid is not orthogonal")
    centroid = peers.weighted_centroid_index(volume.array, phantom.outside_hu, phantom.inside_hu)
    true_index = volume.world_to_index(phantom.centre_lps)
    assert np.all(np.abs(centroid - true_index) < 0.5), (centroid, true_index)


def test_resampled_tilt_keeps_the_sphere_volume(tilted_phantom: factory.TiltedPhantom) -> None:
    volume = read_series(tilted_phantom.series.folder, on_tilt="resample")
    voxel_ml = float(np.prod(volume.spacing))
    mass = np.clip(np.asarray(volume.array, dtype=np.float64), 0.0, 1000.0) / 1000.0
    expected = 4.0 / 3.0 * np.pi * tilted_phantom.radius_mm**3
    assert mass.sum() * voxel_ml == pytest.approx(expected, rel=0.1)


def test_untilted_series_is_not_resampled(ct_series: factory.WrittenSeries) -> None:
    """on_tilt only matters when there is a tilt: an ordinary series reads bit-exact either way."""
    refused = read_series(ct_series.folder, on_tilt="refuse")
    resampled = read_series(ct_series.folder, on_tilt="resample")
    peers.assert_same_voxels(refused.array, ct_series.array)
    peers.assert_same_voxels(resampled.array, ct_series.array)
