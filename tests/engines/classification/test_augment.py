"""Batch augmentation keeps shape and dtype, does nothing when switched off, and moves each image on its own."""

from __future__ import annotations

import torch

from vesalius.engines.classification.augment import augment_batch
from vesalius.engines.classification.plan import ClassificationAugmentation

OFF = ClassificationAugmentation(spatial_probability=0, brightness=0, contrast=0, noise_std=0)


def test_switched_off_is_the_identity() -> None:
    images = torch.randn(4, 1, 16, 16)
    assert torch.equal(augment_batch(images, OFF), images)


def test_shapes_and_dtypes_are_kept_in_2d_and_3d() -> None:
    config = ClassificationAugmentation(flip_axes=[0, 1, 2], noise_std=0.1)
    for shape in ((3, 2, 20, 24), (2, 1, 12, 16, 20)):
        images = torch.randn(*shape)
        out = augment_batch(images, config, torch.Generator().manual_seed(0))
        assert out.shape == images.shape
        assert out.dtype == images.dtype
        assert not torch.equal(out, images)


def test_flips_are_drawn_per_image() -> None:
    images = torch.randn(64, 1, 8, 8)
    flipped = augment_batch(images, OFF.model_copy(update={"flip_axes": [1]}), torch.Generator().manual_seed(1))
    same = [torch.equal(flipped[i], images[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], torch.flip(images[i], [2])) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48


def test_a_rotation_keeps_a_centred_disc_in_place() -> None:
    grid = torch.stack(torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij"))
    disc = (((grid - 16) ** 2).sum(0) < 64).float()[None, None].repeat(8, 1, 1, 1)
    config = OFF.model_copy(
        update={"spatial_probability": 1.0, "rotation_degrees": 90.0, "scale_range": (1.0, 1.0), "translation": 0.0}
    )
    moved = augment_batch(disc, config, torch.Generator().manual_seed(2))
    assert float((moved - disc).abs().mean()) < 0.02  # a disc is rotation invariant up to interpolation
