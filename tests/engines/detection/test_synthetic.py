"""One chest CT, split at the midline: nodules are inserted for training on one side and held out on the other."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engines.detection.lung_nodule_fixtures import REAL_NODULE, TINY_PLAN, phantom_background
from vesalius.core.errors import InputError
from vesalius.engines.detection.recipe import Background, synthetic_scans
from vesalius.engines.detection.synthetic import midline_x, on_side, side_mask, with_nodules


@pytest.fixture(scope="module")
def background() -> Background:
    return phantom_background()


def _x(background: Background, mask: np.ndarray) -> np.ndarray:
    indices = np.argwhere(mask)
    return np.asarray(background.prepared.index_to_world(indices)[:, 0])


def test_the_midline_lies_between_the_lungs(background: Background) -> None:
    # the phantom's lungs are mirror images about x = 0 (outer edges at -110 and +105 mm)
    assert abs(midline_x(background.prepared)) < 6.0


def test_a_side_mask_keeps_one_lung_at_the_margin_from_the_midline(background: Background) -> None:
    middle = midline_x(background.prepared)
    right = side_mask(background.prepared, "right", margin_mm=20.0)
    left = side_mask(background.prepared, "left")
    assert _x(background, right).max() <= middle - 20.0
    assert _x(background, left).min() >= middle
    lungs = background.prepared.lung_mask.array.astype(bool)
    assert not np.any(right.astype(bool) & ~lungs)
    assert right.sum() + left.sum() <= lungs.sum()
    assert on_side([REAL_NODULE.centre], "left", middle)[0]
    assert not on_side([REAL_NODULE.centre], "right", middle)[0]
    with pytest.raises(InputError, match="margin"):
        side_mask(background.prepared, "right", margin_mm=-1.0)


def test_nodules_go_inside_the_region_which_becomes_the_lung_mask(background: Background) -> None:
    region = side_mask(background.prepared, "right", margin_mm=20.0)
    first, nodules = with_nodules(background.prepared, region, 2, seed=7)
    again, _ = with_nodules(background.prepared, region, 2, seed=7)
    assert len(nodules) == 2
    np.testing.assert_array_equal(first.hu.array, again.hu.array)
    changed = np.argwhere(first.hu.array != background.prepared.hu.array)
    assert changed.size
    assert np.all(region[tuple(changed.T)] == 1)
    np.testing.assert_array_equal(first.lung_mask.array, region)
    # the network image follows the new HU
    assert not np.array_equal(first.image.array, background.prepared.image.array)
    with pytest.raises(InputError, match="shape"):
        with_nodules(background.prepared, region[:-1], 1, seed=0)


def test_training_and_held_out_scans_use_their_own_side_and_keep_clear_of_real_nodules(
    background: Background,
) -> None:
    middle = midline_x(background.prepared)
    training = synthetic_scans(background, TINY_PLAN, "training")
    held_out = synthetic_scans(background, TINY_PLAN, "held_out")
    assert len(training) == TINY_PLAN.data.training_scans
    assert len(held_out) == TINY_PLAN.data.held_out_scans
    for _, nodules in training:
        assert all(n.centre[0] <= middle - TINY_PLAN.data.margin_mm for n in nodules)
    for _, nodules in held_out:
        assert all(n.centre[0] >= middle for n in nodules)
        for nodule in nodules:
            gap = np.linalg.norm(np.subtract(nodule.centre, REAL_NODULE.centre))
            assert gap >= (nodule.diameter_mm + REAL_NODULE.diameter_mm) / 2.0
    with pytest.raises(InputError, match="training, false_positive or held_out"):
        synthetic_scans(background, TINY_PLAN, "testing")


def test_each_purpose_draws_its_own_seeds() -> None:
    data = TINY_PLAN.data
    seeds = [set(data.seeds(purpose)) for purpose in ("training", "false_positive", "held_out")]
    assert not (seeds[0] & seeds[1])
    assert not (seeds[0] & seeds[2])
    assert not (seeds[1] & seeds[2])
