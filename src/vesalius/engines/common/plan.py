"""The segmentation plan: one typed, versioned, editable JSON file derived from the dataset fingerprint.

Rules follow nnU-Net's 3d_fullres planner, re-derived here (all axes in i, j, k order):

- Target spacing is the median spacing. When the coarsest axis is more than 3x the finest (anisotropic
  spacing) and also holds fewer than a third of the voxels of the other axes, that axis takes the 10th
  percentile of its spacings instead (never finer than the other axes), so thin-slice cases are not thrown
  away by heavy downsampling.
- Memory budget to voxels: nnU-Net's default 3d_fullres fits a batch of 2 patches of 128^3 in about 8 GB, so
  one GB buys ``VOXELS_PER_GB = 2 * 128**3 / 8`` voxels per batch, and one patch may use half the batch
  budget (batch size is at least 2). This ignores the network width and the class count on purpose: simple,
  explicit, and roughly right for the default 32..320-filter DynUNet under mixed precision.
- The patch starts as a cube in millimetres holding the patch budget, clipped to the median shape after
  resampling; each axis is rounded up to a multiple of 2**(poolings on that axis). While the patch is over
  budget, the axis largest relative to the median shape gives up one divisor step.
- Pooling: an axis is halved at a stage when its feature map stays >= 4 voxels and its spacing is at most
  twice the finest current spacing; convolution kernels are 1 along an axis that is coarser than that, else 3.
- Batch size: as many patches as cover 5% of all (resampled) dataset voxels, within the memory budget,
  and at least 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vesalius.core.errors import InputError
from vesalius.engines.common.dataset import read_msd_dataset
from vesalius.engines.common.fingerprint import DatasetFingerprint, compute_fingerprint
from vesalius.engines.common.plan_file import load_plan, save_plan

if TYPE_CHECKING:
    import torch

PLAN_VERSION = 1
VOXELS_PER_GB = 2 * 128**3 // 8
ANISOTROPY_RATIO = 3.0
COARSE_RATIO = 2.0
MIN_FEATURE_MAP = 4
MAX_POOLINGS = 5
BASE_FILTERS, MAX_FILTERS = 32, 320
DATASET_COVERAGE = 0.05

Triple = tuple[float, float, float]
Shape = tuple[int, int, int]
Range = tuple[float, float]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CTNormalization(_Model):
    """Clip to the foreground 0.5/99.5 percentiles, then subtract the dataset foreground mean, divide by std."""

    scheme: Literal["ct"] = Field(default="ct", description="Dataset-wide clipping and z-score, for Hounsfield units")
    clip: Range = Field(description="Lower and upper clip (foreground 0.5 and 99.5 percentiles)")
    mean: float = Field(description="Foreground mean over the dataset")
    std: float = Field(gt=0, description="Foreground standard deviation over the dataset")


class ZScoreNormalization(_Model):
    """Subtract each case's own mean and divide by its own std: MR intensities have no absolute scale."""

    scheme: Literal["zscore"] = Field(default="zscore", description="Per-case z-score")


Normalization = Annotated[CTNormalization | ZScoreNormalization, Field(discriminator="scheme")]


class NetworkPlan(_Model):
    """Arguments of monai.networks.nets.DynUNet, one entry per resolution stage."""

    architecture: Literal["DynUNet"] = Field(default="DynUNet", description="Network class in MONAI")
    in_channels: int = Field(ge=1, description="Input channels (one per modality)")
    out_channels: int = Field(ge=2, description="Output classes, background included")
    kernel_size: list[Shape] = Field(description="Convolution kernel per stage (1 along too-coarse axes)")
    strides: list[Shape] = Field(description="Downsampling per stage; the first is [1, 1, 1]")
    filters: list[int] = Field(description="Feature channels per stage")
    deep_supervision: bool = Field(default=True, description="Extra loss heads on the coarser decoder stages")
    deep_supr_num: int = Field(ge=1, description="Number of extra heads; less than the number of upsamplings")

    @model_validator(mode="after")
    def _consistent(self) -> NetworkPlan:
        stages = len(self.strides)
        if stages < 3 or len(self.kernel_size) != stages or len(self.filters) != stages:
            raise ValueError(
                f"network: kernel_size, strides and filters need one entry per stage and >= 3 stages, found "
                f"{len(self.kernel_size)}, {stages} and {len(self.filters)}"
            )
        if tuple(self.strides[0]) != (1, 1, 1):
            raise ValueError(f"network.strides[0] must be [1, 1, 1], found {list(self.strides[0])}")
        if any(s not in (1, 2) for stride in self.strides for s in stride):
            raise ValueError(f"network.strides: every stride must be 1 or 2, found {self.strides}")
        if self.deep_supr_num >= stages - 1:
            raise ValueError(f"network.deep_supr_num must be < {stages - 1}, found {self.deep_supr_num}")
        return self

    @property
    def divisor(self) -> Shape:
        """What every patch axis must be divisible by: the product of that axis's strides."""
        d = np.prod(np.array(self.strides), axis=0)
        return (int(d[0]), int(d[1]), int(d[2]))

    def build(self) -> torch.nn.Module:
        """The network itself; MONAI is imported here so that planning stays light."""
        from monai.networks.nets.dynunet import DynUNet

        return DynUNet(
            spatial_dims=3,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=[list(k) for k in self.kernel_size],
            strides=[list(s) for s in self.strides],
            upsample_kernel_size=[list(s) for s in self.strides[1:]],
            filters=list(self.filters),
            deep_supervision=self.deep_supervision,
            deep_supr_num=self.deep_supr_num,
        )


class OptimizerPlan(_Model):
    """SGD with Nesterov momentum and a polynomial learning-rate decay, as nnU-Net."""

    name: Literal["sgd"] = Field(default="sgd", description="Optimizer")
    lr: float = Field(default=0.01, gt=0, description="Initial learning rate")
    momentum: float = Field(default=0.99, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(default=True, description="Nesterov momentum")
    weight_decay: float = Field(default=3e-5, ge=0, description="L2 weight decay")
    poly_exponent: float = Field(default=0.9, gt=0, description="lr = lr0 * (1 - epoch / epochs) ** poly_exponent")


class TrainingPlan(_Model):
    """Schedule, sampling and cross-validation."""

    epochs: int = Field(default=1000, ge=1, description="Training epochs")
    iterations_per_epoch: int = Field(default=250, ge=1, description="Batches per epoch")
    foreground_oversampling: float = Field(
        default=0.33, ge=0, le=1, description="Share of patches forced on foreground"
    )
    folds: int = Field(default=5, ge=2, description="Cross-validation folds")
    seed: int = Field(default=0, description="Seed of fold split, sampling and augmentation")


class IntensityAugmentation(_Model):
    """Random intensity changes; each has a probability per sample and a range."""

    noise_probability: float = Field(default=0.1, ge=0, le=1, description="Gaussian noise probability")
    noise_variance: Range = Field(default=(0.0, 0.1), description="Gaussian noise variance range")
    blur_probability: float = Field(default=0.2, ge=0, le=1, description="Gaussian blur probability")
    blur_sigma: Range = Field(default=(0.5, 1.0), description="Blur sigma range in voxels")
    brightness_probability: float = Field(default=0.15, ge=0, le=1, description="Multiplicative brightness probability")
    brightness_range: Range = Field(default=(0.75, 1.25), description="Brightness factor range")
    contrast_probability: float = Field(default=0.15, ge=0, le=1, description="Contrast change probability")
    contrast_range: Range = Field(default=(0.75, 1.25), description="Contrast factor range")
    gamma_probability: float = Field(default=0.3, ge=0, le=1, description="Gamma change probability")
    gamma_range: Range = Field(default=(0.7, 1.5), description="Gamma range")


class AugmentationPlan(_Model):
    """Spatial and intensity augmentation; rotations stay in-plane for anisotropic data."""

    rotation_probability: float = Field(default=0.2, ge=0, le=1, description="Rotation probability")
    rotation_degrees: Triple = Field(description="Largest rotation about the i, j, k axes, in degrees")
    scaling_probability: float = Field(default=0.2, ge=0, le=1, description="Scaling probability")
    scaling_range: Range = Field(default=(0.7, 1.4), description="Zoom factor range")
    elastic: bool = Field(default=False, description="Elastic deformation (off in nnU-Net's default)")
    mirror_axes: list[int] = Field(
        default=[0, 1, 2], description="Axes mirrored at random in training and at test time"
    )
    intensity: IntensityAugmentation = Field(default_factory=lambda: IntensityAugmentation(), description="Intensity")


class SegmentationPlan(_Model):
    """Everything training and inference need to know, in one file the user may read and edit."""

    plan_version: int = Field(default=PLAN_VERSION, description="Version of this file format")
    dataset_name: str = Field(description="Name from dataset.json")
    fingerprint_hash: str = Field(description="content_hash of the fingerprint the plan was derived from")
    modalities: list[str] = Field(description="Modality of each input channel")
    labels: dict[int, str] = Field(description="Label value to class name, background (0) included")
    num_classes: int = Field(ge=2, description="Classes predicted, background included")
    target_spacing: Triple = Field(description="Spacing in mm (i, j, k) every case is resampled to")
    anisotropic: bool = Field(description="Whether one axis is much coarser than the others")
    anisotropic_axis: int | None = Field(ge=0, le=2, description="That coarse axis (0, 1, 2), or null")
    median_shape: Shape = Field(description="Median case shape after resampling, in voxels")
    normalization: list[Normalization] = Field(description="Intensity normalization per input channel")
    patch_size: Shape = Field(description="Training patch in voxels; each axis divisible by network.divisor")
    batch_size: int = Field(ge=1, description="Patches per training batch")
    memory_budget_gb: float = Field(gt=0, description="GPU memory the patch and batch size were planned for")
    network: NetworkPlan = Field(description="DynUNet arguments")
    loss: Literal["dice_ce"] = Field(default="dice_ce", description="Soft Dice plus cross-entropy")
    optimizer: OptimizerPlan = Field(default_factory=lambda: OptimizerPlan(), description="Optimizer and lr schedule")
    training: TrainingPlan = Field(default_factory=lambda: TrainingPlan(), description="Schedule and cross-validation")
    augmentation: AugmentationPlan = Field(description="Data augmentation")

    @model_validator(mode="after")
    def _consistent(self) -> SegmentationPlan:
        if self.plan_version != PLAN_VERSION:
            raise ValueError(f"plan_version {self.plan_version} is not supported (this Vesalius reads {PLAN_VERSION})")
        if sorted(self.labels) != list(range(self.num_classes)) or self.network.out_channels != self.num_classes:
            raise ValueError(
                f"num_classes ({self.num_classes}), labels {sorted(self.labels)} and network.out_channels "
                f"({self.network.out_channels}) must agree"
            )
        channels = {len(self.modalities), len(self.normalization), self.network.in_channels}
        if len(channels) != 1:
            raise ValueError("modalities, normalization and network.in_channels must count the same channels")
        divisor = self.network.divisor
        if any(p % d for p, d in zip(self.patch_size, divisor, strict=True)):
            raise ValueError(f"patch_size {list(self.patch_size)} must be divisible by {list(divisor)} per axis")
        return self

    def save(self, path: Path | str) -> Path:
        """Write indented JSON, the form a user reads and edits; lists of numbers stay on one line."""
        return save_plan(self, path)

    @classmethod
    def load(cls, path: Path | str) -> SegmentationPlan:
        """Read and validate a plan; a bad edit is reported by file and field."""
        return load_plan(cls, path)


def plan_target_spacing(
    spacings: npt.NDArray[np.float64], shapes: npt.NDArray[np.float64]
) -> tuple[Triple, int | None]:
    """Median spacing; for anisotropic data the coarse axis takes its 10th percentile. Returns the axis too.

    Rounded to 1e-5 mm: NIfTI stores spacing in float32, and a plan a person edits should read 0.8, not
    0.800000011920929.
    """
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    median_shape = np.median(shapes, axis=0)
    sparse_spacing = target[worst] > ANISOTROPY_RATIO * target[others].min()
    few_voxels = median_shape[worst] * ANISOTROPY_RATIO < median_shape[others].min()
    axis = None
    if sparse_spacing and few_voxels:
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), float(target[others].max()))
        axis = worst
    target = np.round(target, 5)
    return (float(target[0]), float(target[1]), float(target[2])), axis


def _coarse(spacing: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.asarray(spacing > COARSE_RATIO * spacing.min() * (1 + 1e-6))


def _triple(values: npt.NDArray[np.generic]) -> Shape:
    return (int(values[0]), int(values[1]), int(values[2]))


def plan_topology(patch: npt.ArrayLike, spacing: npt.ArrayLike) -> tuple[list[Shape], list[Shape]]:
    """Strides and kernels per stage (DynUNet convention) for a patch (float voxels) at a spacing."""
    size = np.asarray(patch, dtype=np.float64).copy()
    current = np.asarray(spacing, dtype=np.float64).copy()
    strides: list[Shape] = [(1, 1, 1)]
    kernels: list[Shape] = [_triple(np.where(_coarse(current), 1, 3))]
    while len(strides) <= MAX_POOLINGS:
        pool = ~_coarse(current) & (size / 2 >= MIN_FEATURE_MAP)
        if not pool.any():
            break
        stride = np.where(pool, 2, 1)
        current, size = current * stride, size / stride
        strides.append(_triple(stride))
        kernels.append(_triple(np.where(_coarse(current), 1, 3)))
    return strides, kernels


def plan_patch(
    median_shape: npt.ArrayLike, spacing: npt.ArrayLike, patch_voxels: int
) -> tuple[Shape, list[Shape], list[Shape]]:
    """Patch size with its strides and kernels: the largest mm-cube-like patch within the voxel budget."""
    median = np.maximum(np.asarray(median_shape, dtype=np.float64), 1.0)
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    patch = np.minimum(inverse * (patch_voxels / np.prod(inverse)) ** (1 / 3), median)
    while True:
        strides, kernels = plan_topology(patch, spacing)
        divisor = np.prod(np.array(strides), axis=0)
        rounded = np.ceil(patch / divisor) * divisor
        if np.prod(rounded) <= patch_voxels:
            return _triple(rounded), strides, kernels
        shrinkable = rounded - divisor >= 1
        if not shrinkable.any():
            raise InputError(f"a voxel budget of {patch_voxels} per patch cannot hold any patch")
        axis = int(np.argmax(np.where(shrinkable, rounded / median, -np.inf)))
        patch = rounded.copy()
        patch[axis] -= divisor[axis]


def _normalization(fingerprint: DatasetFingerprint) -> list[CTNormalization | ZScoreNormalization]:
    schemes: list[CTNormalization | ZScoreNormalization] = []
    for modality, stats in zip(fingerprint.modalities, fingerprint.intensity, strict=True):
        if modality.strip().upper() == "CT":
            clip = (stats.percentile_00_5, stats.percentile_99_5)
            schemes.append(CTNormalization(clip=clip, mean=stats.mean, std=max(stats.std, 1e-8)))
        else:
            schemes.append(ZScoreNormalization())
    return schemes


def make_plan(
    fingerprint: DatasetFingerprint,
    memory_budget_gb: float = 8.0,
    voxel_budget: int | None = None,
    base_filters: int = BASE_FILTERS,
    batch_size: int | None = None,
) -> SegmentationPlan:
    """Derive the plan; ``voxel_budget`` (voxels per batch) overrides ``memory_budget_gb * VOXELS_PER_GB``.

    ``base_filters`` (32 in nnU-Net) and ``batch_size`` trade capacity for speed where compute, not memory,
    is short: a CPU trains a 16-filter network at batch 2 about 15x faster per step than the default.
    """
    if base_filters < 1 or (batch_size is not None and batch_size < 1):
        raise InputError(f"base_filters and batch_size must be positive; got {base_filters}, {batch_size}")
    batch_voxels = voxel_budget if voxel_budget is not None else int(memory_budget_gb * VOXELS_PER_GB)
    spacings, shapes = fingerprint.spacings, fingerprint.shapes
    target, axis = plan_target_spacing(spacings, shapes)
    resampled = shapes * spacings / np.asarray(target)
    median_shape = np.median(resampled, axis=0)
    patch, strides, kernels = plan_patch(median_shape, target, batch_voxels // 2)
    if len(strides) < 3:
        raise InputError(
            f"dataset {fingerprint.dataset_name}: patch {list(patch)} at spacing {list(target)} mm allows "
            f"{len(strides) - 1} downsampling(s); a U-Net needs at least 2 (cases too small or budget too low)"
        )
    patch_count = math.prod(patch)
    by_coverage = int(DATASET_COVERAGE * float(np.prod(resampled, axis=1).sum()) / patch_count)
    if batch_size is None:
        batch_size = max(2, min(batch_voxels // patch_count, by_coverage))
    rotation: Triple = (30.0, 30.0, 30.0)
    if axis is not None:
        rotation = (180.0 if axis == 0 else 0.0, 180.0 if axis == 1 else 0.0, 180.0 if axis == 2 else 0.0)
    network = NetworkPlan(
        in_channels=len(fingerprint.modalities),
        out_channels=len(fingerprint.labels),
        kernel_size=kernels,
        strides=strides,
        filters=[min(base_filters * 2**s, MAX_FILTERS) for s in range(len(strides))],
        deep_supr_num=len(strides) - 2,
    )
    return SegmentationPlan(
        dataset_name=fingerprint.dataset_name,
        fingerprint_hash=fingerprint.content_hash,
        modalities=list(fingerprint.modalities),
        labels=dict(fingerprint.labels),
        num_classes=len(fingerprint.labels),
        target_spacing=target,
        anisotropic=axis is not None,
        anisotropic_axis=axis,
        median_shape=_triple(np.round(median_shape)),
        normalization=_normalization(fingerprint),
        patch_size=patch,
        batch_size=batch_size,
        memory_budget_gb=batch_voxels / VOXELS_PER_GB,
        network=network,
        augmentation=AugmentationPlan(rotation_degrees=rotation),
    )


def plan_dataset(
    folder: Path | str,
    memory_budget_gb: float = 8.0,
    workers: int = 1,
    base_filters: int = BASE_FILTERS,
    batch_size: int | None = None,
) -> tuple[DatasetFingerprint, SegmentationPlan]:
    """Read, fingerprint and plan an MSD dataset folder: what ``vesalius plan DATASET`` does."""
    fingerprint = compute_fingerprint(read_msd_dataset(folder), workers=workers)
    plan = make_plan(fingerprint, memory_budget_gb=memory_budget_gb, base_filters=base_filters, batch_size=batch_size)
    return fingerprint, plan
