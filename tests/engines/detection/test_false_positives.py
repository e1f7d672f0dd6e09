"""False-positive reduction: candidates labelled by the LUNA16 hit rule, patches for the classification engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.engines.detection.lung_nodule_fixtures import REAL_NODULE, TINY_PLAN, phantom_background
from vesalius.core.errors import InputError
from vesalius.engines.detection.boxes import Detection
from vesalius.engines.detection.false_positives import (
    CandidateScan,
    FalsePositiveSettings,
    candidate_labels,
    candidate_set,
    classification_plan,
    patches,
    train_reducer,
)
from vesalius.engines.detection.recipe import Background

SETTINGS = TINY_PLAN.false_positive


@pytest.fixture(scope="module")
def background() -> Background:
    return phantom_background()


def _detection(centre: tuple[float, float, float], probability: float = 0.5) -> Detection:
    return Detection(centre=centre, diameter_mm=8.0, probability=probability)


def scan_with(background: Background, detections: list[Detection]) -> CandidateScan:
    ignore = [((-60.0, -10.0, -120.0), 10.0)]
    return CandidateScan(background.prepared, [REAL_NODULE], detections, ignore)


def test_candidates_are_hits_inside_a_nodules_radius_misses_elsewhere_and_ignored_on_findings(
    background: Background,
) -> None:
    x, y, z = REAL_NODULE.centre
    radius = REAL_NODULE.diameter_mm / 2.0
    detections = [
        _detection((x + radius - 0.5, y, z)),  # inside the radius: a hit
        _detection((x + radius + 0.5, y, z)),  # just outside: a false positive
        _detection((-62.0, -10.0, -120.0)),  # on the ignored finding
        _detection((-30.0, 40.0, -60.0)),
    ]
    np.testing.assert_array_equal(candidate_labels(scan_with(background, detections)), [1, 0, -1, 0])


def test_the_training_set_holds_kept_candidates_and_jittered_copies_of_each_nodule(background: Background) -> None:
    detections = [_detection(REAL_NODULE.centre), _detection((-62.0, -10.0, -120.0)), _detection((-30.0, 40.0, -60.0))]
    images = candidate_set([scan_with(background, detections)], SETTINGS, "train")
    size = SETTINGS.patch_size
    extra = SETTINGS.positive_copies + SETTINGS.random_negatives
    assert images.images.shape == (2 + extra, 1, size, size, size)
    expected = [1, 0] + [1] * SETTINGS.positive_copies + [0] * SETTINGS.random_negatives
    np.testing.assert_array_equal(images.labels, expected)
    assert len(set(images.ids)) == len(images.ids)
    # a patch is centred on its candidate: the nodule's middle voxel is the brightest region's middle
    patch = patches(background.prepared, [REAL_NODULE.centre], SETTINGS)[0, 0]
    middle = size // 2
    assert patch[middle - 1 : middle + 1, middle - 1 : middle + 1, middle - 1 : middle + 1].mean() > patch.mean()


def test_the_reducer_plan_keeps_intensities_and_flips_every_axis() -> None:
    plan = classification_plan(FalsePositiveSettings(), [100, 10])
    assert plan.kind == "binary"
    assert plan.network.spatial_dims == 3
    assert plan.normalization == "unit"
    assert plan.augmentation.flip_axes == [0, 1, 2]
    assert plan.tta_flips
    assert plan.augmentation.brightness <= 0.02
    assert plan.input_size == [32, 32, 32]
    assert plan.network.architecture == "resnet10"


def test_a_reducer_needs_both_classes_and_scans_beyond_its_selection_ones(
    background: Background, tmp_path: Path
) -> None:
    scan = scan_with(background, [_detection((-30.0, 40.0, -60.0))])
    with pytest.raises(InputError, match="more than"):
        train_reducer([scan, scan], SETTINGS, tmp_path)
    no_nodules = CandidateScan(background.prepared, [], [_detection((-30.0, 40.0, -60.0))])
    # random lung points are negatives, so scans without nodules leave the reducer nothing to call a nodule
    with pytest.raises(InputError, match="nodules and false positives"):
        train_reducer([no_nodules] * 3, SETTINGS, tmp_path)
