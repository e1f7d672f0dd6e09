"""Every transform is pure: a new volume, the input untouched, and a record of how to undo it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from vesalius.core.volume import DicomIdentity, Volume
from vesalius.transforms import (
    clip,
    crop,
    crop_to_foreground,
    invert,
    pad,
    percentile_normalize,
    resample,
    resample_to_grid,
    to_canonical,
    window,
    zscore,
)

TRANSFORMS: dict[str, Callable[[Volume], Volume]] = {
    "window": lambda v: window(v, preset="lung"),
    "clip": lambda v: clip(v, -100, 100),
    "zscore": zscore,
    "percentile_normalize": percentile_normalize,
    "resample": lambda v: resample(v, spacing=1.5),
    "resample_to_grid": lambda v: resample_to_grid(v, v.shape, v.affine),
    "to_canonical": to_canonical,  # already LPS: the identity, which must still copy
    "crop": lambda v: crop(v, (1, 0, 0), (3, 3, 4)),
    "crop_to_foreground": crop_to_foreground,
    "pad": lambda v: pad(v, multiple_of=4, anchor="end"),
}


def scan() -> Volume:
    array = np.arange(3 * 3 * 4, dtype=np.int16).reshape(3, 3, 4) * 10 - 100
    return Volume.from_geometry(
        array,
        spacing=(0.9, 0.9, 2.0),
        origin=(1, 2, 3),
        modality="CT",
        identity=DicomIdentity(series_instance_uid="1.2.3"),
        metadata={"patient_age": 61},
    )


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_is_pure_and_recorded(name: str) -> None:
    volume = scan()
    array_before, affine_before = volume.array.copy(), volume.affine.copy()
    result = TRANSFORMS[name](volume)

    np.testing.assert_array_equal(volume.array, array_before)
    np.testing.assert_array_equal(volume.affine, affine_before)
    assert volume.history == ()
    assert not np.shares_memory(result.array, volume.array)
    assert not np.shares_memory(result.affine, volume.affine)

    (record,) = result.history
    assert record.name == name
    assert record.source_shape == volume.shape
    np.testing.assert_array_equal(record.source_affine, volume.affine)
    assert not record.source_affine.flags.writeable
    assert (result.modality, result.identity, result.metadata) == (volume.modality, volume.identity, volume.metadata)

    restored = invert(result, kind="image")
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored.affine, volume.affine)
    assert restored.history == ()


def test_records_accumulate_in_order_and_a_chain_inverts_to_the_start() -> None:
    volume = scan()
    result = pad(zscore(resample(to_canonical(volume, "RAS"), 0.7)), multiple_of=8)
    assert [r.name for r in result.history] == ["to_canonical", "resample", "zscore", "pad"]
    assert result.history[1].source_shape == result.history[0].source_shape  # a flip keeps the shape
    restored = invert(result, kind="image")
    np.testing.assert_array_equal(restored.affine, volume.affine)
    # zscore undone: back in HU, and linear sampling never leaves the range of its input
    assert volume.array.min() - 1e-3 <= restored.array.min() <= restored.array.max() <= volume.array.max() + 1e-3
