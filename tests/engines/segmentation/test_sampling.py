"""Patch sampling, augmentation and the training loader, on small synthetic cases (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesalius.core.errors import DataLoadingError, VesaliusError
from vesalius.core.volume import Volume
from vesalius.engines.common.plan import AugmentationPlan, IntensityAugmentation
from vesalius.engines.segmentation.augment import Augmenter, extraction_size
from vesalius.engines.segmentation.sampling import (
    PatchSampler,
    TrainingCase,
    TrainingLoader,
    crop_padded,
    training_case,
)

PATCH = (8, 8, 8)
NO_INTENSITY = IntensityAugmentation(
    noise_probability=0,
    blur_probability=0,
    brightness_probability=0,
    contrast_probability=0,
    gamma_probability=0,
)


def _case(case_id: str, shape: tuple[int, int, int] = (20, 20, 20), channels: int = 2, seed: int = 0) -> TrainingCase:
    """Random image, a small cube of class 1 and a single voxel of class 2."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(*shape, channels)).astype(np.float32)
    label = np.zeros(shape, dtype=np.int16)
    label[2:5, 2:5, 2:5] = 1
    label[shape[0] - 2, shape[1] - 3, shape[2] - 4] = 2
    volume = Volume.from_geometry(image, spacing=(1.0, 1.0, 1.0))
    return training_case(case_id, volume, volume.with_array(label))


def _no_spatial(mirror_axes: list[int] | None = None, **changes: object) -> AugmentationPlan:
    fields: dict[str, object] = {
        "rotation_degrees": (30.0, 30.0, 30.0),
        "rotation_probability": 0.0,
        "scaling_probability": 0.0,
        "mirror_axes": [] if mirror_axes is None else mirror_axes,
        "intensity": NO_INTENSITY,
    }
    fields.update(changes)
    return AugmentationPlan.model_validate(fields)


def test_training_case_is_channels_first_with_foreground_per_class() -> None:
    case = _case("c0")
    assert case.image.shape == (2, 20, 20, 20)
    assert case.image.dtype == np.float32
    assert case.label.shape == (20, 20, 20)
    assert sorted(case.foreground) == [1, 2]
    assert len(case.foreground[1]) == 27
    assert case.foreground[2].tolist() == [[18, 17, 16]]
    capped = training_case(
        "c0",
        Volume.from_geometry(case.image[0], spacing=(1, 1, 1)),
        Volume.from_geometry(case.label, spacing=(1, 1, 1)),
        max_foreground_per_class=5,
    )
    assert len(capped.foreground[1]) == 5
    assert capped.image.shape == (1, 20, 20, 20)


def test_batch_shapes_dtypes_and_determinism() -> None:
    cases = [_case("a"), _case("b", shape=(12, 16, 10), channels=2, seed=1)]
    augmenter = Augmenter(AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0)), PATCH, seed=1)
    batches = []
    for _ in range(2):
        sampler = PatchSampler(
            cases,
            PATCH,
            batch_size=3,
            foreground_oversampling=0.33,
            seed=7,
            augmenter=Augmenter(AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0)), PATCH),
        )
        batches.append([sampler.batch() for _ in range(3)])
    first = batches[0][0]
    assert first["image"].shape == (3, 2, *PATCH)
    assert first["image"].dtype == torch.float32
    assert first["label"].shape == (3, 1, *PATCH)
    assert first["label"].dtype == torch.uint8
    for one, two in zip(batches[0], batches[1], strict=True):
        assert torch.equal(one["image"], two["image"])
        assert torch.equal(one["label"], two["label"])
    other = PatchSampler(cases, PATCH, 3, 0.33, seed=8, augmenter=augmenter).batch()
    assert not torch.equal(other["image"], first["image"])


def test_forced_foreground_follows_nnunet_rule() -> None:
    sampler = PatchSampler([_case("a")], PATCH, batch_size=3, foreground_oversampling=0.33)
    assert [sampler.forced_foreground(i) for i in range(3)] == [False, False, True]


def test_full_oversampling_always_contains_a_tiny_object() -> None:
    label = np.zeros((40, 40, 40), dtype=np.uint8)
    label[30, 5, 21] = 1
    case = TrainingCase("tiny", np.zeros((1, 40, 40, 40), np.float32), label, {1: np.array([[30, 5, 21]])})
    forced = PatchSampler([case], PATCH, batch_size=4, foreground_oversampling=1.0, seed=0)
    assert all(bool((forced.batch()["label"] > 0).flatten(1).any(1).all()) for _ in range(25))
    random = PatchSampler([case], PATCH, batch_size=4, foreground_oversampling=0.0, seed=0)
    hits = sum(int((random.batch()["label"] > 0).flatten(1).any(1).sum()) for _ in range(25))
    assert hits < 20  # about 100 patches; a uniform patch holds this voxel ~1% of the time


def test_no_oversampling_matches_foreground_fraction() -> None:
    rng = np.random.default_rng(3)
    label = (rng.random((30, 30, 30)) < 0.1).astype(np.uint8)
    case = TrainingCase("noise", np.zeros((1, 30, 30, 30), np.float32), label, {1: np.argwhere(label == 1)})
    sampler = PatchSampler([case], PATCH, batch_size=8, foreground_oversampling=0.0, seed=0)
    fraction = np.mean([float((sampler.batch()["label"] > 0).float().mean()) for _ in range(20)])
    assert abs(fraction - label.mean()) < 0.02


def test_case_smaller_than_patch_is_centred_and_zero_padded() -> None:
    image = np.ones((1, 4, 6, 5), np.float32)
    label = np.ones((4, 6, 5), np.uint8)
    case = TrainingCase("small", image, label, {1: np.argwhere(label == 1)})
    for oversampling in (0.0, 1.0):
        batch = PatchSampler([case], PATCH, 2, oversampling, seed=0).batch()
        expected = torch.zeros(PATCH)
        expected[2:6, 1:7, 1:6] = 1
        for b in range(2):
            assert torch.equal(batch["image"][b, 0], expected)
            assert torch.equal(batch["label"][b, 0], expected.to(torch.uint8))


def test_crop_padded_outside_and_overhanging() -> None:
    array = np.arange(27).reshape(3, 3, 3)
    assert not crop_padded(array, (5, 5, 5), (2, 2, 2)).any()
    out = crop_padded(array, (-1, 0, 2), (2, 2, 2))
    assert out[0].sum() == 0
    assert out[1, :, 0].tolist() == [2, 5]
    assert out[1, :, 1].tolist() == [0, 0]


def test_spatial_augmentation_keeps_image_and_label_aligned() -> None:
    grid = np.indices((32, 32, 32)).astype(np.float64)
    blob = ((grid[0] - 13) ** 2 / 36 + (grid[1] - 17) ** 2 / 16 + (grid[2] - 15) ** 2 / 49) <= 1
    plan = _no_spatial(rotation_probability=1.0, scaling_probability=1.0, scaling_range=(0.8, 1.25))
    augmenter = Augmenter(plan, (16, 16, 16), seed=3, lowres_probability=0)
    size = augmenter.extraction_size
    start = [15 - s // 2 for s in size]
    label = crop_padded(blob.astype(np.uint8), start, size)
    for _ in range(5):
        image_t, label_t = augmenter(label[None].astype(np.float32), label)
        assert image_t.shape == (1, 16, 16, 16)
        assert label_t.shape == (1, 16, 16, 16)
        agree = (image_t.round().to(torch.uint8) == label_t).float().mean()
        assert agree > 0.95
        mask, soft = label_t[0].float(), image_t[0].clamp(0, 1)
        centre = [
            (torch.arange(16).view(*[-1 if a == d else 1 for d in range(3)]) * weights).sum() / weights.sum()
            for weights in (mask, soft)
            for a in range(3)
        ]
        assert np.allclose(centre[:3], centre[3:], atol=0.5)


def test_extraction_is_larger_only_where_transforms_need_it() -> None:
    assert extraction_size((16, 16, 16), _no_spatial()) == (16, 16, 16)
    rotated = extraction_size((16, 32, 32), _no_spatial(rotation_probability=1.0, rotation_degrees=(180, 0, 0)), 0)
    assert rotated[0] == 16
    assert rotated[1] > 32
    assert (rotated[1] - 32) % 2 == 0


def test_mirroring_only_along_plan_axes() -> None:
    image = np.arange(8 * 8 * 8, dtype=np.float32).reshape(1, 8, 8, 8)
    case = TrainingCase("mirror", image, np.zeros((8, 8, 8), np.uint8))
    sampler = PatchSampler(
        [case], PATCH, 4, 0.0, seed=0, augmenter=Augmenter(_no_spatial([1]), PATCH, seed=0, lowres_probability=0)
    )
    plain, flipped = torch.from_numpy(image), torch.from_numpy(image).flip(2)
    seen = set()
    for _ in range(5):
        for sample in sampler.batch()["image"]:
            assert torch.equal(sample, plain) or torch.equal(sample, flipped)
            seen.add(torch.equal(sample, flipped))
    assert seen == {True, False}


def test_anisotropic_plan_rotates_in_plane_only() -> None:
    plan = _no_spatial(rotation_probability=1.0, rotation_degrees=(180.0, 180.0, 180.0))
    augmenter = Augmenter(plan, (8, 8, 4), anisotropic_axis=2, seed=0, lowres_probability=0)
    assert augmenter.extraction_size[2] == 4
    image = np.zeros((1, *augmenter.extraction_size), np.float32)
    image[0, :, :, 1] = 1.0
    out, _ = augmenter(image, np.zeros(augmenter.extraction_size, np.uint8))
    assert torch.allclose(out[0, :, :, 1], torch.ones(8, 8))
    assert out[0, :, :, [0, 2, 3]].abs().max() == 0


def test_workers_give_batches_from_distinct_seeds() -> None:
    cases = [_case("a"), _case("b", seed=1)]
    sampler = PatchSampler(cases, PATCH, 2, 0.5, seed=0, augmenter=Augmenter(_no_spatial([0, 1, 2]), PATCH))
    with TrainingLoader(sampler, workers=2) as loader:
        batches = list(loader.iter_batches(3)) + list(loader.iter_batches(1))
    assert len(batches) == 4
    assert all(b["image"].shape == (2, 2, *PATCH) for b in batches)
    assert all(b["label"].dtype == torch.uint8 for b in batches)
    assert not torch.equal(batches[0]["image"], batches[1]["image"])  # worker 0, then worker 1


def test_in_process_loader_matches_sampler() -> None:
    first = PatchSampler([_case("a")], PATCH, 2, 0.5, seed=4)
    second = PatchSampler([_case("a")], PATCH, 2, 0.5, seed=4)
    batches = list(TrainingLoader(first).iter_batches(2))
    assert torch.equal(batches[1]["image"], [second.batch() for _ in range(2)][1]["image"])


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_error_names_the_case(workers: int) -> None:
    broken = _case("broken_007")
    broken.image = np.zeros((1, 5, 5), np.float32)  # corrupted after construction
    sampler = PatchSampler([broken], PATCH, 2, 0.0, seed=0)
    loader = TrainingLoader(sampler, workers=workers)
    with pytest.raises(DataLoadingError, match="broken_007") as caught:
        list(loader.iter_batches(2))
    assert isinstance(caught.value, VesaliusError)
    assert caught.value.case_id == "broken_007"
    loader.close()


def test_mismatched_case_is_refused() -> None:
    with pytest.raises(DataLoadingError, match="x1"):
        TrainingCase("x1", np.zeros((1, 4, 4, 4), np.float32), np.zeros((4, 4, 5), np.uint8))


def test_worker_sequence_is_reproducible_for_a_seed() -> None:
    def run() -> list[torch.Tensor]:
        sampler = PatchSampler([_case("a")], PATCH, 2, 0.5, seed=5, augmenter=Augmenter(_no_spatial([0, 1]), PATCH))
        with TrainingLoader(sampler, workers=2) as loader:
            return [b["image"] for b in loader.iter_batches(4)]

    for one, two in zip(run(), run(), strict=True):
        assert torch.equal(one, two)


def test_elastic_and_intensity_keep_shapes() -> None:
    plan = AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0), elastic=True)
    augmenter = Augmenter(plan, PATCH, seed=0)
    size = augmenter.extraction_size
    for _ in range(5):
        image, label = augmenter(
            np.random.default_rng(0).normal(size=(2, *size)).astype(np.float32), np.ones(size, np.uint8)
        )
        assert image.shape == (2, *PATCH)
        assert label.shape == (1, *PATCH)
        assert torch.isfinite(image).all()


def test_sampler_builds_augmenter_from_plan_and_accepts_arrays() -> None:
    image = np.random.default_rng(0).normal(size=(12, 12, 12, 1)).astype(np.float32)
    label = np.zeros((12, 12, 12), np.int16)
    label[5:7, 5:7, 5:7] = 1
    case = training_case("arrays", image, label)
    plan = AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0))
    sampler = PatchSampler([case], PATCH, 2, 0.5, seed=1, augmentation=plan)
    assert sampler.augmenter is not None
    assert sampler.batch()["image"].shape == (2, 1, *PATCH)
