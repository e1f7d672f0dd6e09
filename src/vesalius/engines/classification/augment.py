"""Batch augmentation for classification, on the training device: one affine resampling per batch.

Images arrive normalised (z units), channel-first, as one tensor (B, C, H, W) or (B, C, D, H, W). Each image
gets its own random rotation (in-plane for 2-D; about every axis for 3-D), zoom and shift, composed into one
affine and applied with ``grid_sample`` (bilinear, zeros outside: the normalised background is near zero),
then random flips, brightness, contrast and noise. Everything is a tensor operation, so a GPU is never
starved by a CPU augmentation pipeline.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from vesalius.engines.classification.plan import ClassificationAugmentation

__all__ = ["augment_batch"]


def _rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _rotation_3d(angles: torch.Tensor) -> torch.Tensor:
    """Rotations about the three axes, composed; ``angles`` (B, 3) in radians."""
    batch = angles.shape[0]
    result = torch.eye(3, device=angles.device).expand(batch, 3, 3)
    for axis in range(3):
        plane = [a for a in range(3) if a != axis]
        rotation = torch.eye(3, device=angles.device).repeat(batch, 1, 1)
        block = _rotation_2d(angles[:, axis])
        for row, i in enumerate(plane):
            for col, j in enumerate(plane):
                rotation[:, i, j] = block[:, row, col]
        result = rotation @ result
    return result


def augment_batch(
    images: torch.Tensor, augmentation: ClassificationAugmentation, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A randomly transformed copy of ``images`` (same shape, dtype and device)."""
    batch, dims = images.shape[0], images.ndim - 2
    device = images.device

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        values = torch.rand(*shape, generator=generator).to(device)
        return low + (high - low) * values

    result = images
    if augmentation.spatial_probability > 0:
        moved = uniform(batch) < augmentation.spatial_probability
        limit = math.radians(augmentation.rotation_degrees)
        if dims == 2:
            linear = _rotation_2d(uniform(batch, low=-limit, high=limit))
        else:
            linear = _rotation_3d(uniform(batch, 3, low=-limit, high=limit))
        low, high = augmentation.scale_range
        zoom = uniform(batch, low=low, high=high)
        linear = linear / zoom[:, None, None]  # sampling coordinates shrink to zoom in
        shift = uniform(batch, dims, low=-augmentation.translation, high=augmentation.translation) * 2
        identity = torch.eye(dims, device=device).expand(batch, dims, dims)
        linear = torch.where(moved[:, None, None], linear, identity)
        shift = torch.where(moved[:, None], shift, torch.zeros_like(shift))
        theta = torch.cat([linear, shift[:, :, None]], dim=2).to(images.dtype)
        grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
        result = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for axis in augmentation.flip_axes:
        if axis >= dims:
            continue
        flip = uniform(batch) < 0.5
        flipped = torch.flip(result, [axis + 2])
        result = torch.where(flip.view(batch, *([1] * (dims + 1))), flipped, result)
    shape = (batch, *([1] * (dims + 1)))
    if augmentation.contrast > 0:
        mean = result.mean(dim=tuple(range(1, dims + 2)), keepdim=True)
        factor = uniform(batch, low=1 - augmentation.contrast, high=1 + augmentation.contrast).view(shape)
        result = (result - mean) * factor + mean
    if augmentation.brightness > 0:
        result = result + uniform(batch, low=-augmentation.brightness, high=augmentation.brightness).view(shape)
    if augmentation.noise_std > 0:
        noise = torch.randn(result.shape, generator=generator).to(device)
        result = result + augmentation.noise_std * noise
    return result
