"""invert: a model-space result goes back onto the exact original grid, whatever the chain of transforms."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.strategies import volumes, world_ramp
from vesalius.core.errors import TransformError
from vesalius.core.volume import AppliedTransform, DicomIdentity, Volume
from vesalius.transforms import (
    crop,
    crop_to_foreground,
    invert,
    pad,
    resample,
    to_canonical,
    window,
    zscore,
)


def ct_scan() -> Volume:
    """A RAS-stored CT of a 200 HU sphere in fat (-100 HU), anisotropic, with a DICOM identity."""
    shape = (20, 18, 9)
    centre = np.array([9.5, 8.0, 4.0])
    distance = np.linalg.norm((np.indices(shape).T - centre).T * np.array([0.8, 0.8, 2.5])[:, None, None, None], axis=0)
    array = np.where(distance < 6.0, 200, -100).astype(np.int16)
    return Volume.from_geometry(
        array,
        spacing=(0.8, 0.8, 2.5),
        origin=(120.0, 95.5, -310.25),
        direction=np.diag([-1.0, -1.0, 1.0]),
        modality="CT",
        identity=DicomIdentity(series_instance_uid="1.2.3"),
    )


def model_space(volume: Volume) -> Volume:
    """A typical preprocessing chain for a segmentation network."""
    canonical = to_canonical(volume)
    isotropic = resample(canonical, spacing=1.0)
    windowed = window(isotropic, preset="mediastinum")
    cropped = crop_to_foreground(windowed, threshold=0.5, margin=2)
    return pad(cropped, multiple_of=8)


def test_a_prediction_goes_back_onto_the_exact_original_grid() -> None:
    scan = ct_scan()
    image = model_space(scan)
    assert [r.name for r in image.history] == ["to_canonical", "resample", "window", "crop_to_foreground", "pad"]
    prediction = image.with_array((image.array > 0.5).astype(np.uint8))

    mask = invert(prediction, kind="label")
    assert mask.shape == scan.shape
    np.testing.assert_array_equal(mask.affine, scan.affine)  # bit for bit
    assert mask.history == ()
    assert mask.array.dtype == np.uint8
    assert mask.identity == scan.identity
    # nearest-neighbour round trip of a smooth sphere: at most a thin shell of voxels differs
    truth = scan.array > 0
    assert np.sum(mask.array.astype(bool) != truth) <= 0.1 * truth.sum()
    assert mask.array[9, 8, 4] == 1
    assert mask.array[0, 0, 0] == 0


def test_the_image_itself_comes_back_in_hu() -> None:
    scan = ct_scan()
    restored = invert(model_space(scan), kind="image", fill=np.nan)
    np.testing.assert_array_equal(restored.affine, scan.affine)
    # both tissues lie inside the mediastinum window [-125, 225] HU, so nothing was clipped
    assert restored.array[9, 8, 4] == pytest.approx(200.0, abs=1e-3)
    covered = ~np.isnan(restored.array)
    assert np.nanmin(restored.array) == pytest.approx(-100.0, abs=1e-3)
    assert np.nanmax(restored.array) == pytest.approx(200.0, abs=1e-3)
    # outside the foreground crop there was no model output: fill
    assert covered[9, 8, 4]
    assert not covered[0, 0, 0]
    assert not covered[9, 8, 0]


def test_partial_inversion_keeps_the_older_records() -> None:
    scan = ct_scan()
    image = model_space(scan)
    undone_two = invert(image, kind="image", steps=2)
    assert [r.name for r in undone_two.history] == ["to_canonical", "resample", "window"]
    np.testing.assert_array_equal(undone_two.affine, image.history[3].source_affine)
    assert undone_two.shape == image.history[3].source_shape
    rest = invert(undone_two, kind="image")
    np.testing.assert_array_equal(rest.affine, scan.affine)


def test_integer_upsampling_then_invert_gives_the_labels_back_exactly() -> None:
    labels = np.random.default_rng(3).integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    volume = Volume.from_geometry(labels, spacing=(1.2, 0.9, 3.0), origin=(1, 2, 3))
    upsampled = resample(volume, spacing=(0.6, 0.3, 1.0), interpolation="nearest")
    restored = invert(upsampled, kind="label")
    np.testing.assert_array_equal(restored.array, labels)


def test_probability_maps_use_linear_sampling_without_touching_values() -> None:
    image = zscore(resample(ct_scan(), spacing=2.0))
    probabilities = image.with_array(np.full(image.array.shape, 0.25, dtype=np.float32))
    restored = invert(probabilities, kind="label", interpolation="linear")
    np.testing.assert_allclose(restored.array, 0.25)  # zscore not undone, no nearest-neighbour blockiness
    assert restored.array.dtype == np.float32


def test_uncovered_voxels_take_fill() -> None:
    volume = Volume.from_geometry(np.ones((4, 4, 4), dtype=np.float32), spacing=(1, 1, 1))
    cropped = crop(to_canonical(volume, "RAS"), start=(1, 1, 1), stop=(3, 3, 3))
    restored = invert(cropped, kind="image", fill=-5.0)
    assert np.sum(restored.array == 1.0) == 8
    assert np.sum(restored.array == -5.0) == 64 - 8


@settings(max_examples=30, deadline=None)
@given(volumes(), st.sampled_from(["LPS", "RAS"]), st.floats(0.5, 2.0), st.integers(1, 8))
def test_any_chain_inverts_onto_the_source_grid(volume: Volume, code: str, factor: float, multiple: int) -> None:
    ramp = world_ramp(volume, (0.2, 0.5, -0.3), 10.0)
    chain = pad(
        zscore(resample(to_canonical(ramp, code), spacing=float(volume.spacing.mean() * factor)), mean=1, std=2),
        multiple_of=multiple,
    )
    for kind in ("label", "image"):
        restored = invert(chain, kind=kind)
        assert restored.shape == volume.shape
        np.testing.assert_array_equal(restored.affine, volume.affine)
        assert restored.history == ()


# --- refusals --------------------------------------------------------------------------------------------


def test_a_volume_without_history_is_refused() -> None:
    volume = Volume.from_geometry(np.zeros((2, 2, 2)), spacing=(1, 1, 1))
    with pytest.raises(TransformError, match="no transform history"):
        invert(volume)


def test_unknown_records_are_refused_before_anything_is_done() -> None:
    volume = pad(Volume.from_geometry(np.zeros((2, 2, 2)), spacing=(1, 1, 1)), shape=4)
    record = AppliedTransform("elastic_deform", {}, volume.shape, volume.affine)
    with pytest.raises(TransformError, match="cannot undo 'elastic_deform'"):
        invert(volume.evolve(history=(*volume.history, record)))


def test_an_array_that_is_not_the_recorded_output_is_refused() -> None:
    volume = crop(Volume.from_geometry(np.zeros((4, 4, 4)), spacing=(1, 1, 1)), (0, 0, 0), (2, 2, 2))
    tampered = replace(volume, array=np.zeros((3, 3, 3)))
    with pytest.raises(TransformError, match=r"produced \(2, 2, 2\)"):
        invert(tampered)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "mask"}, "kind must be 'label' or 'image'"),
        ({"steps": 0}, "steps must be an integer from 1 to 2"),
        ({"steps": 3}, "steps must be an integer from 1 to 2"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    volume = pad(window(Volume.from_geometry(np.zeros((2, 2, 2)), spacing=(1, 1, 1)), preset="lung"), shape=4)
    with pytest.raises(TransformError, match=message):
        invert(volume, **kwargs)


def test_a_fill_that_labels_cannot_hold_is_refused() -> None:
    labels = crop(Volume.from_geometry(np.ones((4, 4, 4), dtype=np.uint8), spacing=(1, 1, 1)), (1, 1, 1), (3, 3, 3))
    with pytest.raises(TransformError, match="cannot be stored"):
        invert(labels, fill=np.nan)
    assert invert(labels, fill=255).array.max() == 255
