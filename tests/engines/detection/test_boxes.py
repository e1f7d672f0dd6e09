"""Nodules to boxes and back: exact round trips on a permuted, anisotropic crop; NMS; flips; clipping."""

from __future__ import annotations

import numpy as np
import pytest

from vesalius.core.volume import Volume
from vesalius.engines.detection.boxes import (
    Detection,
    boxes_to_detections,
    clip_boxes,
    flip_boxes,
    nms,
    nodule_boxes,
    to_candidates,
)
from vesalius.engines.detection.preprocess import DetectionGeometry, PreparedCT


def prepared_crop(shape: tuple[int, int, int] = (20, 30, 40)) -> PreparedCT:
    """A crop whose axes are the patient's permuted and flipped, with unequal spacings and an odd origin."""
    direction = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    image = Volume.from_geometry(
        np.zeros(shape, np.float32), spacing=(0.7, 1.25, 2.5), origin=(-31.5, 12.25, 101.0), direction=direction
    )
    return PreparedCT(
        image=image,
        hu=image,
        lung_mask=image.with_array(np.ones(shape, np.uint8)),
        crop_start=(3, 4, 5),
        resampled_shape=(40, 50, 60),
        source_affine=image.affine,
        geometry=DetectionGeometry(),
    )


NODULES = [
    Detection(centre=(-20.0, 5.0, 110.0), diameter_mm=6.0, probability=1.0),
    Detection(centre=(-10.3, 1.7, 120.9), diameter_mm=12.5, probability=1.0),
]


def test_nodules_round_trip_through_crop_voxel_boxes() -> None:
    prepared = prepared_crop()
    boxes = nodule_boxes(prepared, NODULES)
    back = boxes_to_detections(prepared, boxes, [0.9, 0.4])
    for nodule, found in zip(NODULES, back, strict=True):
        np.testing.assert_allclose(found.centre, nodule.centre, atol=1e-9)
        assert found.diameter_mm == pytest.approx(nodule.diameter_mm, abs=1e-9)
    assert [d.probability for d in back] == [0.9, 0.4]


def test_a_box_spans_the_diameter_in_voxels_of_each_axis_around_the_centre_index() -> None:
    prepared = prepared_crop()
    box = nodule_boxes(prepared, NODULES[:1])[0]
    np.testing.assert_allclose(box[3:] - box[:3], 6.0 / np.array([0.7, 1.25, 2.5]))
    np.testing.assert_allclose((box[:3] + box[3:]) / 2, prepared.world_to_index(NODULES[0].centre))


def test_detections_of_a_patch_are_shifted_by_its_offset_and_sorted_by_probability() -> None:
    prepared = prepared_crop()
    boxes = nodule_boxes(prepared, NODULES)
    offset = np.array([2.0, 3.0, 4.0])
    found = boxes_to_detections(prepared, boxes - np.concatenate([offset, offset]), [0.2, 0.7], offset=offset)
    np.testing.assert_allclose(found[0].centre, NODULES[1].centre, atol=1e-9)
    np.testing.assert_allclose(found[1].centre, NODULES[0].centre, atol=1e-9)
    assert to_candidates("scan-1", found)[0].probability == pytest.approx(0.7)


def test_nms_removes_a_duplicate_and_keeps_a_separate_box() -> None:
    boxes = np.array([[10, 10, 10, 18, 18, 18], [11, 10, 10, 19, 18, 18], [30, 30, 30, 36, 36, 36]], float)
    kept = nms(boxes, [0.6, 0.9, 0.5], iou_threshold=0.3)
    assert kept.tolist() == [1, 2]
    assert nms(np.zeros((0, 6)), [], 0.3).size == 0


def test_flipping_boxes_follows_the_flipped_array_and_twice_is_identity() -> None:
    shape = (12, 14, 16)
    array = np.zeros(shape)
    array[2, 3, 4] = 1.0
    box = np.array([[1.0, 2.0, 3.0, 3.0, 4.0, 5.0]])  # centred on voxel (2, 3, 4)
    flipped = flip_boxes(box, shape, (0, 2))
    centre = np.round((flipped[0, :3] + flipped[0, 3:]) / 2).astype(int)
    assert np.flip(array, axis=(0, 2))[tuple(centre)] == 1.0
    np.testing.assert_allclose(flip_boxes(flipped, shape, (0, 2)), box)


def test_clipping_keeps_boxes_centred_inside_and_cuts_them_at_the_edge() -> None:
    boxes = np.array([[-3.0, 2.0, 2.0, 3.0, 4.0, 4.0], [-9.0, 2.0, 2.0, -3.0, 4.0, 4.0]])
    clipped = clip_boxes(boxes, (10, 10, 10))
    np.testing.assert_allclose(clipped, [[-0.5, 2.0, 2.0, 3.0, 4.0, 4.0]])
