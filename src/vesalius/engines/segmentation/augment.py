"""Training augmentation from the plan, applied per sample to a patch cut larger than the network's patch.

Spatial augmentation follows nnU-Net: rotation and scaling are drawn together and applied in **one**
resampling (MONAI ``Affine`` with ``spatial_size`` = the patch), which samples the centre of the larger cut,
so rotations and zoom-outs read real voxels instead of padding. Image and label go through the same
``Affine`` with the same parameters (bilinear vs nearest), so they cannot drift apart. Then optional elastic
deformation, mirroring along the plan's axes, and intensity changes on the image only.

Deviations, kept on purpose for simplicity: for anisotropic plans the in-plane zoom factors are drawn per
axis (the coarse axis is never zoomed nor rotated out of plane); low-resolution simulation uses nnU-Net's
fixed probability (0.25) because the plan has no field for it; elastic deformation acts on the final patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.intensity.array import (
    RandAdjustContrast,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
)
from monai.transforms.spatial.array import Affine, RandSimulateLowResolution
from monai.transforms.spatial.dictionary import Rand3DElasticd

from vesalius.engines.common.plan import AugmentationPlan

Shape = tuple[int, int, int]

LOWRES_PROBABILITY = 0.25
"""nnU-Net's probability of simulating a low resolution (per sample); the plan has no field for it."""
LOWRES_ZOOM = (0.5, 1.0)
ELASTIC_PROBABILITY = 0.2
ELASTIC_SIGMA = (9.0, 13.0)
ELASTIC_MAGNITUDE = (0.0, 900.0)
"""nnU-Net v1's elastic deformation (alpha 0..900, sigma 9..13 voxels), used when the plan enables it."""


def _plane(axis: int) -> tuple[int, int]:
    return ((1, 2), (0, 2), (0, 1))[axis]


def rotation_limits(augmentation: AugmentationPlan, anisotropic_axis: int | None) -> tuple[float, ...]:
    """Largest rotation about each axis in radians; an anisotropic plan only rotates about its coarse axis."""
    degrees = list(augmentation.rotation_degrees)
    if anisotropic_axis is not None:
        degrees = [d if a == anisotropic_axis else 0.0 for a, d in enumerate(degrees)]
    return tuple(math.radians(d) for d in degrees)


def extraction_size(
    patch_size: Sequence[int], augmentation: AugmentationPlan, anisotropic_axis: int | None = None
) -> Shape:
    """The patch to cut before spatial augmentation: big enough that the largest rotation and zoom-out stay inside.

    As nnU-Net's ``get_patch_size``: each rotation on its own (not compounded), the maximum per axis, then
    divided by the smallest zoom factor, rounded up to an even margin. Axes no transform touches keep the
    patch size.
    """
    patch = np.asarray(patch_size, dtype=np.float64)
    size = patch.copy()
    if augmentation.rotation_probability > 0:
        for axis, limit in enumerate(rotation_limits(augmentation, anisotropic_axis)):
            if limit <= 0:
                continue
            a, b = _plane(axis)
            angles = np.linspace(0.0, min(limit, math.pi / 2), 91)
            cos, sin = np.abs(np.cos(angles)), np.abs(np.sin(angles))
            size[a] = max(size[a], float(np.max(patch[a] * cos + patch[b] * sin)))
            size[b] = max(size[b], float(np.max(patch[b] * cos + patch[a] * sin)))
    if augmentation.scaling_probability > 0 and min(augmentation.scaling_range) < 1:
        zoomed = [a for a in range(3) if a != anisotropic_axis]
        size[zoomed] /= min(augmentation.scaling_range)
    # Grow by an even amount so the patch centre falls on a voxel centre of the cut: no half-voxel shift.
    result = patch.astype(int) + 2 * np.ceil((size - patch) / 2 - 1e-6).astype(int)
    return (int(result[0]), int(result[1]), int(result[2]))


class Augmenter:
    """Per-sample augmentation: (C, *extraction) image and (*extraction) label in, patch-size tensors out."""

    def __init__(
        self,
        augmentation: AugmentationPlan,
        patch_size: Sequence[int],
        anisotropic_axis: int | None = None,
        seed: int = 0,
        lowres_probability: float = LOWRES_PROBABILITY,
    ) -> None:
        self.plan = augmentation
        self.patch_size: Shape = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        self.anisotropic_axis = anisotropic_axis
        self.extraction_size = extraction_size(self.patch_size, augmentation, anisotropic_axis)
        self._rotation = rotation_limits(augmentation, anisotropic_axis)
        intensity = augmentation.intensity
        self._elastic = (
            Rand3DElasticd(
                keys=("image", "label"),
                sigma_range=ELASTIC_SIGMA,
                magnitude_range=ELASTIC_MAGNITUDE,
                prob=ELASTIC_PROBABILITY,
                mode=("bilinear", "nearest"),
                padding_mode="reflection",
            )
            if augmentation.elastic
            else None
        )
        brightness = (intensity.brightness_range[0] - 1.0, intensity.brightness_range[1] - 1.0)
        contrast = (intensity.contrast_range[0] - 1.0, intensity.contrast_range[1] - 1.0)
        self._intensity: list[Any] = [
            RandGaussianNoise(prob=intensity.noise_probability, std=math.sqrt(intensity.noise_variance[1])),
            RandGaussianSmooth(
                sigma_x=intensity.blur_sigma,
                sigma_y=intensity.blur_sigma,
                sigma_z=intensity.blur_sigma,
                prob=intensity.blur_probability,
            ),
            RandScaleIntensity(factors=brightness, prob=intensity.brightness_probability),
            RandScaleIntensityFixedMean(prob=intensity.contrast_probability, factors=contrast, preserve_range=True),
            RandSimulateLowResolution(prob=lowres_probability, zoom_range=LOWRES_ZOOM),
            RandAdjustContrast(prob=intensity.gamma_probability, gamma=intensity.gamma_range),
        ]
        self.rng = np.random.default_rng(seed)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Reset every random source from one seed (each DataLoader worker calls this with its own)."""
        sequence = np.random.SeedSequence(seed)
        children = sequence.spawn(2 + len(self._intensity))
        self.rng = np.random.default_rng(children[0])
        if self._elastic is not None:
            self._elastic.set_random_state(seed=int(children[1].generate_state(1)[0]))
        for transform, child in zip(self._intensity, children[2:], strict=True):
            transform.set_random_state(seed=int(child.generate_state(1)[0]))

    def _spatial_params(self) -> tuple[list[float], list[float]] | None:
        """Draw rotation angles and coordinate scales; None when this sample is not spatially transformed."""
        rotate = self.plan.rotation_probability > 0 and self.rng.random() < self.plan.rotation_probability
        scale = self.plan.scaling_probability > 0 and self.rng.random() < self.plan.scaling_probability
        if not (rotate or scale):
            return None
        angles = [float(self.rng.uniform(-limit, limit)) if rotate and limit > 0 else 0.0 for limit in self._rotation]
        low, high = self.plan.scaling_range
        if self.anisotropic_axis is None:
            zooms = [float(self.rng.uniform(low, high))] * 3 if scale else [1.0] * 3
        else:
            zooms = [
                float(self.rng.uniform(low, high)) if scale and a != self.anisotropic_axis else 1.0 for a in range(3)
            ]
        # MONAI scales the sampling grid: a coordinate scale of 1/zoom magnifies the content by zoom.
        return angles, [1.0 / z for z in zooms]

    def _spatial(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self._spatial_params()
        if params is None:
            return _center_crop(image, self.patch_size), _center_crop(label, self.patch_size)
        angles, scales = params
        affine = Affine(
            rotate_params=angles,
            scale_params=scales,
            spatial_size=self.patch_size,
            padding_mode="zeros",
            image_only=True,
        )
        moved_image = _plain(affine(image, mode="bilinear"))
        moved_label = _plain(affine(label.float(), mode="nearest"))
        return moved_image, moved_label.round().to(label.dtype)

    def __call__(
        self, image: npt.NDArray[np.float32], label: npt.NDArray[np.integer[Any]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample; returns image (C, *patch) float32 and label (1, *patch) in the label's dtype."""
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        label_t = torch.from_numpy(np.ascontiguousarray(label))[None]
        image_t, label_t = self._spatial(image_t, label_t)
        if self._elastic is not None:
            moved = self._elastic({"image": image_t, "label": label_t.float()})
            image_t, label_t = _plain(moved["image"]), _plain(moved["label"]).round().to(label_t.dtype)
        flips = [a + 1 for a in self.plan.mirror_axes if self.rng.random() < 0.5]
        if flips:
            image_t, label_t = torch.flip(image_t, flips), torch.flip(label_t, flips)
        for transform in self._intensity:
            image_t = _plain(transform(image_t))
        return image_t.float().contiguous(), label_t.contiguous()


def _plain(tensor: Any) -> torch.Tensor:
    """MONAI may return a MetaTensor; batches carry plain tensors so collation and pinning stay cheap."""
    result = torch.as_tensor(tensor)
    return result.as_tensor() if hasattr(result, "as_tensor") else result


def _center_crop(tensor: torch.Tensor, size: Shape) -> torch.Tensor:
    """Crop the spatial centre (the same rule MONAI's ``Affine`` uses) of a (C, i, j, k) tensor."""
    starts = [(have - want) // 2 for have, want in zip(tensor.shape[1:], size, strict=True)]
    return tensor[
        :,
        starts[0] : starts[0] + size[0],
        starts[1] : starts[1] + size[1],
        starts[2] : starts[2] + size[2],
    ]
