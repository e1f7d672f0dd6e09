"""Overlays, key slices, parametric maps and secondary captures: heat lands where it was, values survive DICOM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image

from tests.writers.conftest import SHAPE, CtCase, label_volume
from vesalius.core.errors import InputError
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.writers.maps import (
    MASK_OUTLINE_RGB,
    key_slices,
    overlay_rgb,
    parametric_map,
    png_bytes,
    secondary_capture,
    write_png,
)
from vesalius.writers.seg import write_dicom


def _phantom(rows: int = 24, columns: int = 30) -> np.ndarray:
    return np.random.default_rng(0).normal(40.0, 200.0, size=(rows, columns))


def _is_grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]), dtype=bool)


def test_heat_is_coloured_only_where_it_is_and_the_rest_stays_grey() -> None:
    heat = np.zeros((24, 30))
    heat[5:12, 8:20] = 0.8
    heat[0, 0] = 0.04  # below the threshold: must stay grey
    rgb = overlay_rgb(_phantom(), heat, window=(40.0, 400.0))
    assert rgb.shape == (24, 30, 3)
    assert rgb.dtype == np.uint8
    hot = heat > 0.05
    assert not _is_grey(rgb)[hot].any()
    assert _is_grey(rgb)[~hot].all()


def test_without_heat_the_window_sets_the_grey_levels() -> None:
    image = np.array([[-1000.0, 40.0, 1000.0]])
    rgb = overlay_rgb(image, window=(40.0, 400.0))
    assert rgb[0, :, 0].tolist() == [0, 128, 255]
    assert _is_grey(rgb).all()
    stretched = overlay_rgb(np.linspace(0.0, 100.0, 101).reshape(1, -1))
    assert stretched[0, 0, 0] == 0
    assert stretched[0, -1, 0] == 255


def test_the_mask_is_outlined_on_its_boundary_not_filled() -> None:
    mask = np.zeros((24, 30), dtype=bool)
    mask[6:16, 10:22] = True
    rgb = overlay_rgb(np.zeros((24, 30)), mask2d=mask)
    drawn = np.all(rgb == np.array(MASK_OUTLINE_RGB, dtype=np.uint8), axis=-1)
    boundary = mask.copy()
    boundary[7:15, 11:21] = False  # the 8 x 10 interior is not drawn
    np.testing.assert_array_equal(drawn, boundary)


def test_overlay_rejects_a_heatmap_of_another_shape() -> None:
    with pytest.raises(InputError, match=r"heatmap: expected the image's shape \(24, 30\), got \(30, 24\)"):
        overlay_rgb(_phantom(), np.zeros((30, 24)))


def test_png_round_trips_the_pixels(tmp_path: Path) -> None:
    rgb = overlay_rgb(_phantom(), np.eye(24, 30))
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))).convert("RGB"))
    np.testing.assert_array_equal(decoded, rgb)
    path = write_png(tmp_path / "figs" / "slice.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)


def test_key_slices_are_the_heaviest_distinct_and_sorted() -> None:
    weights = np.zeros((4, 5, 10))
    for k, total in {7: 5.0, 2: 3.0, 8: 4.0, 0: 1.0}.items():
        weights[0, 0, k] = total
    assert key_slices(weights, count=3) == [2, 7, 8]
    assert key_slices(weights, count=10) == [0, 2, 7, 8]  # slices without weight are not padded in
    assert key_slices(np.moveaxis(weights, 2, 0), count=2, axis=0) == [7, 8]
    assert key_slices(np.zeros((4, 5, 9))) == [4]


def _values_on(ct: CtCase) -> Volume:
    grid = np.indices(SHAPE, dtype=np.float64)
    values = (grid[0] * 0.01 + grid[1] * 0.1 + grid[2] * 1.5 - 3.25).astype(np.float32)
    return label_volume(ct.series, values)


def _frame_values(ds: pydicom.Dataset) -> np.ndarray:
    """Stored frames mapped through the shared Real World Value Mapping."""
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    frames = np.asarray(ds.pixel_array, dtype=np.float64).reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    return frames * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)


def test_a_ct_parametric_map_maps_back_to_the_values_on_each_slice(ct: CtCase, tmp_path: Path) -> None:
    values = _values_on(ct)
    pm = parametric_map(ct.datasets, values, series_description="Nodule probability", unit_code="1", label="prob")
    ds = pydicom.dcmread(write_dicom(pm, tmp_path / "out"))
    assert ds.StudyInstanceUID == ct.series.study_uid
    assert ds.FrameOfReferenceUID == ct.series.identity.frame_of_reference_uid
    assert ds.SeriesDescription == "Nodule probability"
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (mapping.LUTLabel, mapping.MeasurementUnitsCodeSequence[0].CodeValue) == ("prob", "1")
    mapped = _frame_values(ds)
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        k = round(float(values.world_to_index(position)[2]))
        np.testing.assert_allclose(mapped[frame], values.array[:, :, k].T, rtol=1e-6, atol=1e-6)


def test_a_parametric_map_off_the_source_grid_is_refused(ct: CtCase) -> None:
    shifted = Volume(
        array=np.zeros(SHAPE, dtype=np.float32),
        affine=ct.series.affine + _shift_origin(5.0),
        identity=DicomIdentity(study_instance_uid=ct.series.study_uid),
    )
    with pytest.raises(InputError, match=ct.series.series_uid):
        parametric_map(ct.datasets, shifted, series_description="x", unit_code="1", label="prob")
    wrong_size = label_volume(ct.series, np.zeros((SHAPE[1], SHAPE[0], SHAPE[2]), dtype=np.float32), with_uids=True)
    with pytest.raises(InputError, match="rows x"):
        parametric_map(ct.datasets, wrong_size, series_description="x", unit_code="1", label="prob")


def _shift_origin(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


@pytest.fixture(scope="module")
def cr() -> pydicom.Dataset:
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    return pydicom.dcmread(str(path))


def test_a_projection_image_gets_no_parametric_map(cr: pydicom.Dataset) -> None:
    """A CR has no frame of reference, which the Parametric Map IOD requires: refused, pointing to the SC."""
    columns, rows = int(cr.Columns), int(cr.Rows)
    values = Volume.from_geometry(np.zeros((columns, rows, 1), dtype=np.float32), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="secondary capture"):
        parametric_map([cr], values, series_description="Heat", unit_code="1", label="attribution")


def test_a_secondary_capture_keeps_the_study_and_the_pixels(ct: CtCase, tmp_path: Path) -> None:
    source = ct.datasets[0]
    rgb = overlay_rgb(source.pixel_array.astype(np.float64), np.ones((source.Rows, source.Columns)) * 0.5)
    sc = secondary_capture(source, rgb, series_description="Heat overlay")
    ds = pydicom.dcmread(write_dicom(sc, tmp_path / "out"))
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(ds.PatientOrientation) == ["L", "P"]
    np.testing.assert_array_equal(ds.pixel_array, rgb)
    again = secondary_capture(source, rgb, series_description="Heat overlay")
    assert again.SOPInstanceUID == sc.SOPInstanceUID
