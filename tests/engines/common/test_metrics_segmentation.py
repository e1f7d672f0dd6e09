"""Segmentation metrics: hand-computed cases, empty-mask conventions, and agreement with MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from vesalius.engines.common.metrics import binary_metrics, dice, hausdorff95, per_class_metrics, surface_dice

SPACING = (0.7, 1.3, 2.5)


def cube(shape: tuple[int, ...], start: tuple[int, ...], size: int) -> npt.NDArray[np.bool_]:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def blob(rng: np.random.Generator, shape: tuple[int, ...] = (30, 26, 20)) -> npt.NDArray[np.bool_]:
    field = ndimage.gaussian_filter(rng.random(shape), 2.0)
    return np.asarray(field > np.quantile(field, 0.8))


def test_dice_of_two_cubes_with_known_overlap() -> None:
    pred = cube((10, 10, 10), (2, 2, 2), 4)
    ref = cube((10, 10, 10), (4, 2, 2), 4)  # shares 2 x 4 x 4 = 32 of 64 voxels
    assert dice(pred, ref) == 0.5
    assert dice(pred, pred) == 1.0
    assert dice(pred, cube((10, 10, 10), (6, 6, 6), 4)) == 0.0


def test_hd95_of_two_points_with_anisotropic_spacing() -> None:
    pred = np.zeros((8, 8, 12), dtype=bool)
    ref = np.zeros_like(pred)
    pred[2, 3, 4] = True
    ref[5, 3, 8] = True
    spacing = (0.5, 1.0, 2.0)
    expected = math.sqrt((3 * 0.5) ** 2 + (4 * 2.0) ** 2)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(expected, rel=1e-12)
    assert surface_dice(pred, ref, spacing, tolerance_mm=expected + 0.01) == 1.0
    assert surface_dice(pred, ref, spacing, tolerance_mm=expected - 0.01) == 0.0


def test_shifted_cube_surface_distances_in_mm() -> None:
    """A cube moved by one slice (2.5 mm): surface voxels lie 0 or 2.5 mm from the other surface."""
    pred = cube((12, 12, 12), (3, 3, 3), 5)
    ref = cube((12, 12, 12), (3, 3, 4), 5)
    assert hausdorff95(pred, ref, SPACING) == pytest.approx(2.5)
    assert surface_dice(pred, ref, SPACING, tolerance_mm=2.5) == 1.0
    assert 0.0 < surface_dice(pred, ref, SPACING, tolerance_mm=1.0) < 1.0


def test_identical_masks_are_perfect() -> None:
    mask = blob(np.random.default_rng(3))
    metrics = binary_metrics(mask, mask, SPACING, tolerance_mm=0.0)
    assert (metrics.dice, metrics.hd95, metrics.surface_dice) == (1.0, 0.0, 1.0)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = cube((6, 6, 6), (1, 1, 1), 3)
    assert (dice(empty, empty), hausdorff95(empty, empty, 1.0), surface_dice(empty, empty, 1.0, 1.0)) == (1.0, 0.0, 1.0)
    for pred, ref in ((empty, full), (full, empty)):
        assert dice(pred, ref) == 0.0
        assert math.isnan(hausdorff95(pred, ref, 1.0))
        assert surface_dice(pred, ref, 1.0, 1.0) == 0.0
    metrics = binary_metrics(empty, full, 1.0, 1.0)
    assert metrics.prediction_empty
    assert not metrics.reference_empty
    assert metrics.reference_voxels == 27


def test_cropping_does_not_change_results() -> None:
    """Masks touching the border and the same masks padded into a larger image give identical metrics."""
    rng = np.random.default_rng(5)
    pred, ref = blob(rng), blob(rng)
    padded = [np.pad(mask, 7) for mask in (pred, ref)]
    assert binary_metrics(pred, ref, SPACING, 2.0) == binary_metrics(*padded, SPACING, 2.0)


def test_two_dimensional_masks() -> None:
    pred = np.zeros((5, 9), dtype=bool)
    ref = np.zeros_like(pred)
    pred[1, 1] = ref[1, 7] = True
    assert hausdorff95(pred, ref, (1.0, 0.5)) == pytest.approx(3.0)


def test_per_class_metrics_of_a_label_map() -> None:
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    ref[cube(ref.shape, (0, 0, 0), 4)] = 1
    ref[cube(ref.shape, (5, 5, 5), 4)] = 2
    pred = ref.copy()
    pred[cube(ref.shape, (5, 5, 5), 4)] = 0
    pred[cube(ref.shape, (5, 5, 5), 2)] = 2  # 8 of 64 voxels
    result = per_class_metrics(pred, ref, [1, 2, 3], SPACING, tolerance_mm=1.0)
    assert result[1].dice == 1.0
    assert result[2].dice == pytest.approx(2 * 8 / (8 + 64))
    assert (result[3].dice, result[3].hd95) == (1.0, 0.0)


def test_invalid_input_is_refused() -> None:
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        dice(mask, mask[:2])
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(mask, mask, 1.0, -1.0)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_monai(seed: int) -> None:
    """Same edges (erosion, face connectivity) and exact distances: MONAI's float32 is the only difference."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(seed)
    pred, ref = blob(rng), blob(rng)
    tolerance = 1.5
    ours = binary_metrics(pred, ref, SPACING, tolerance)
    y_pred, y = (torch.tensor(m[None, None], dtype=torch.float32) for m in (pred, ref))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_dice = monai_metrics.compute_dice(y_pred, y, include_background=True).item()
        monai_hd95 = monai_metrics.compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=SPACING
        ).item()
        monai_nsd = monai_metrics.compute_surface_dice(
            y_pred, y, [tolerance], include_background=True, spacing=SPACING
        ).item()
    assert ours.dice == pytest.approx(monai_dice, abs=1e-6)
    assert ours.hd95 == pytest.approx(monai_hd95, rel=1e-5)
    assert ours.surface_dice == pytest.approx(monai_nsd, abs=1e-6)
