"""Detector training on synthetic spheres: patches carry their boxes, it learns, it resumes, it finds the sphere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.detection.boxes import Detection
from vesalius.engines.detection.network import DetectorSpec, build_detector
from vesalius.engines.detection.preprocess import DetectionGeometry, PreparedCT
from vesalius.engines.detection.training import (
    DetectionCase,
    DetectorTrainingSettings,
    detect,
    sample_patch,
    train_detector,
)

RADIUS = 5.0
TINY = DetectorSpec(
    layers=(1, 1, 1, 1),
    widths=(8, 16, 32, 64),
    fpn_channels=16,
    returned_layers=(1, 2),
    sampler_batch_per_image=32,
    sampler_min_negatives=8,
)
FAST = DetectorTrainingSettings(
    patch_size=(32, 32, 32), batch_size=2, steps=100, learning_rate=3e-3, warmup_steps=5, checkpoint_every=1000
)


def sphere_case(centres: list[tuple[int, int, int]], seed: int, size: int = 48) -> tuple[PreparedCT, list[Detection]]:
    """A noisy 1 mm cube (all lung) with bright spheres of radius 5 mm: nodules with a known answer."""
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).astype(np.float64)
    array = 0.1 + 0.03 * rng.standard_normal((size,) * 3)
    for centre in centres:
        distance = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
        array[distance <= RADIUS] = 0.8
    image = Volume.from_geometry(array.astype(np.float32), (1.0, 1.0, 1.0), origin=(-20.0, 30.0, 100.0))
    prepared = PreparedCT(
        image=image,
        hu=image,
        lung_mask=image.with_array(np.ones((size,) * 3, np.uint8)),
        crop_start=(0, 0, 0),
        resampled_shape=(size,) * 3,
        source_affine=image.affine,
        geometry=DetectionGeometry(),
    )
    nodules = [
        Detection(
            centre=tuple(image.index_to_world(np.asarray(c, float)).tolist()), diameter_mm=2 * RADIUS, probability=1
        )
        for c in centres
    ]
    return prepared, nodules


def training_cases() -> list[DetectionCase]:
    layouts = [[(12, 14, 30), (34, 30, 12)], [(24, 24, 24)], [(30, 12, 20)]]
    return [DetectionCase.from_nodules(*sphere_case(centres, seed)) for seed, centres in enumerate(layouts)]


def test_a_positive_patch_holds_its_nodule_at_its_box_even_when_flipped() -> None:
    case = training_cases()[1]
    settings = FAST.model_copy(update={"positive_fraction": 1.0})
    for seed in range(5):
        patch, boxes = sample_patch(case, settings, np.random.default_rng(seed))
        assert patch.shape == (1, 32, 32, 32)
        assert boxes.shape == (1, 6)
        centre = np.round((boxes[0, :3] + boxes[0, 3:]) / 2).astype(int)
        assert patch[(0, *centre)] == pytest.approx(0.8)


def test_a_tiny_detector_learns_to_find_a_sphere_it_has_not_seen() -> None:
    torch.manual_seed(0)
    detector = build_detector(TINY)
    seen: list[dict[str, float]] = []
    result = train_detector(detector, training_cases(), FAST, device="cpu", progress=seen.append)
    assert len(seen) == len(result.history) == FAST.steps
    first = np.mean([h["loss"] for h in result.history[:10]])
    last = np.mean([h["loss"] for h in result.history[-10:]])
    assert last < 0.8 * first
    prepared, nodules = sphere_case([(20, 32, 16)], seed=9)
    found = detect(detector, prepared, (32, 32, 32), overlap=0.25, device="cpu")
    assert found
    assert found[0].probability == max(d.probability for d in found)
    # the sphere's region, not yet its centre: after 100 steps the boxes sit 2-3.5 voxels off (not understood
    # yet, see docs/detection.md); anywhere else in the 48 mm cube would be about 20 mm away
    assert np.linalg.norm(np.subtract(found[0].centre, nodules[0].centre)) < 2 * RADIUS
    assert found[0].diameter_mm == pytest.approx(2 * RADIUS, rel=0.5)


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path: Path) -> None:
    cases = training_cases()
    settings = FAST.model_copy(update={"steps": 6, "checkpoint_every": 2})
    torch.manual_seed(1)
    straight = train_detector(build_detector(TINY), cases, settings, tmp_path / "straight", device="cpu")
    torch.manual_seed(1)
    first = settings.model_copy(update={"steps": 4})
    train_detector(build_detector(TINY), cases, first, tmp_path / "resumed", device="cpu")
    torch.manual_seed(2)  # a different initialisation: the checkpoint must overwrite it
    resumed = train_detector(build_detector(TINY), cases, settings, tmp_path / "resumed", device="cpu")
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in straight.history], rtol=1e-4)
    for name, value in straight.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[name], value, rtol=1e-4, atol=1e-5)


def test_detection_windows_must_tile_the_coarsest_level() -> None:
    prepared, _ = sphere_case([], seed=0)
    with pytest.raises(InputError, match="multiples of"):
        detect(build_detector(TINY), prepared, (30, 32, 32), device="cpu")
