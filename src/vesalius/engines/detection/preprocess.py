"""Chest-CT preprocessing for nodule detection: lungs only, at one spacing, with an exact way back to LPS mm.

``prepare_ct`` reorients the CT (axis permutation only), finds the lung mask on the scanned grid (finest,
and the HU threshold is not blurred by interpolation), and resamples only the lungs' bounding box plus a
margin onto the detection grid: one interpolation, and about half the voxels of a whole-volume resample.
The crop's grid is a sub-grid of the full resampled grid (same origin lattice), so a candidate found at crop
index (i, j, k) is at ``prepared.index_to_world((i, j, k))`` in patient LPS mm, and the history records the
source grid for ``vesalius.transforms.invert``. Patches for the false-positive classifier are sampled on a
grid centred exactly on a world point, padded where they leave the volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Literal

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.detection.lung_mask import LungMaskSettings, describe_source, lung_mask
from vesalius.transforms import clip, resample_to_grid, to_canonical, window, zscore
from vesalius.transforms._common import Interpolation, int_triple, positive_float_triple
from vesalius.transforms.crop_pad import shifted_affine
from vesalius.transforms.resample import resampled_shape

Normalization = Literal["unit", "zscore"]
AIR_HU = -1024.0
"""What voxels outside the scanned field of view are taken to hold."""

__all__ = [
    "DetectionGeometry",
    "Normalization",
    "PreparedCT",
    "extract_patch",
    "extract_patches",
    "normalise_hu",
    "prepare_ct",
]


@dataclass(frozen=True)
class DetectionGeometry:
    """How a chest CT is put in front of the detector: spacing, axis layout, HU window, crop margin."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str | None = "LPS"
    """Axis layout the volume is permuted to first (never interpolated); None keeps the scanner's."""
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    """HU kept: air to just above soft tissue; calcium and bone saturate, which a nodule detector can afford."""
    normalization: Normalization = "unit"
    """"unit": the window scaled to [0, 1]; "zscore": clipped to the window, then the case's lung mean and std."""
    crop_margin_mm: float = 10.0
    """Context kept around the lung mask's box, so juxtapleural nodules keep their chest wall."""
    lung: LungMaskSettings = field(default_factory=LungMaskSettings)

    def __post_init__(self) -> None:
        positive_float_triple(self.spacing_mm, "detection spacing_mm")
        low, high = self.hu_window
        if not low < high:
            raise InputError(f"detection hu_window must be (low, high) with low < high; got {self.hu_window}")
        if self.crop_margin_mm < 0:
            raise InputError(f"detection crop_margin_mm must be >= 0 mm; got {self.crop_margin_mm}")


@dataclass(frozen=True, eq=False)
class PreparedCT:
    """A chest CT ready for the detector, cropped to the lungs, with its way back to the patient."""

    image: Volume
    """What the network sees: the crop, normalised, float32."""
    hu: Volume
    """The same crop in HU (float32), for candidate filtering and nodule insertion."""
    lung_mask: Volume
    """uint8 lung mask on the crop's grid."""
    crop_start: tuple[int, int, int]
    """Index of the crop's voxel (0, 0, 0) in the whole volume resampled to the detection spacing."""
    resampled_shape: tuple[int, int, int]
    """Shape of that whole resampled volume."""
    source_affine: npt.NDArray[np.float64]
    """The input volume's affine, for mapping crop indices to the scanned voxels."""
    geometry: DetectionGeometry

    def index_to_world(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS mm of crop voxel indices (..., 3): where a candidate found in the crop lies in the patient."""
        return self.image.index_to_world(indices)

    def world_to_index(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous crop indices (..., 3) of LPS points, e.g. of reference nodules for training targets."""
        return self.image.world_to_index(points)

    def with_hu(self, hu: Volume, lung_mask: Volume | None = None) -> PreparedCT:
        """The same crop with new HU (e.g. nodules inserted) and, optionally, a narrower lung mask."""
        if hu.shape != self.hu.shape:
            raise InputError(f"new HU must keep the crop's shape {self.hu.shape}; got {hu.shape}")
        lungs = self.lung_mask if lung_mask is None else lung_mask
        return replace(self, image=normalise_hu(hu, lungs, self.geometry), hu=hu, lung_mask=lungs)

    def source_index(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous voxel indices in the input volume of crop voxel indices (..., 3)."""
        world = self.index_to_world(indices)
        inverse = np.linalg.inv(self.source_affine)
        return np.asarray(world @ inverse[:3, :3].T + inverse[:3, 3], dtype=np.float64)


def _crop_box(
    mask: Volume, target_affine: npt.NDArray[np.float64], target_shape: tuple[int, int, int], margin_mm: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The box of the detection grid that holds the lung mask's box plus ``margin_mm``, clamped to the grid."""
    hits = [np.flatnonzero(mask.array.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    corners = np.array(list(product(*[(h[0] - 0.5, h[-1] + 0.5) for h in hits])), dtype=np.float64)
    world = mask.index_to_world(corners)
    inverse = np.linalg.inv(target_affine)
    index = world @ inverse[:3, :3].T + inverse[:3, 3]
    margin = margin_mm / np.linalg.norm(target_affine[:3, :3], axis=0)
    low = np.maximum(0, np.floor(index.min(axis=0) - margin)).astype(int)
    high = np.minimum(target_shape, np.ceil(index.max(axis=0) + margin) + 1).astype(int)
    return (int(low[0]), int(low[1]), int(low[2])), (int(high[0]), int(high[1]), int(high[2]))


def normalise_hu(hu: Volume, lungs: Volume, geometry: DetectionGeometry) -> Volume:
    """What the network sees of a crop in HU: the geometry's window, scaled to [0, 1] or z-scored on the lungs."""
    low, high = geometry.hu_window
    if geometry.normalization == "unit":
        return window(hu, level=(low + high) / 2.0, width=high - low)
    clipped = clip(hu, low, high)
    return zscore(clipped, mask=lungs.array.astype(bool)) if lungs.array.any() else zscore(clipped)


def prepare_ct(volume: Volume, geometry: DetectionGeometry | None = None) -> PreparedCT:
    """Reorient, mask the lungs, crop to them and resample to the detection spacing; normalise the HU.

    Raises ``InputError`` (naming the series) when the volume is not a 3-D CT with lungs in it.
    """
    plan = geometry or DetectionGeometry()
    if volume.array.ndim != 3:
        raise InputError(f"{describe_source(volume)}: detection needs a 3-D CT, got array shape {volume.array.shape}")
    oriented = to_canonical(volume, plan.orientation) if plan.orientation else volume
    mask = lung_mask(oriented, plan.lung)
    spacing = np.asarray(plan.spacing_mm, dtype=np.float64)
    full_affine = oriented.affine.copy()
    full_affine[:3, :3] = oriented.direction * spacing[None, :]
    full_shape = resampled_shape(oriented.shape, oriented.spacing.tolist(), spacing.tolist())
    start, stop = _crop_box(mask, full_affine, full_shape, plan.crop_margin_mm)
    crop_affine = shifted_affine(full_affine, start)
    crop_shape = tuple(b - a for a, b in zip(start, stop, strict=True))
    hu = resample_to_grid(
        oriented.with_array(np.asarray(oriented.array, dtype=np.float32)), crop_shape, crop_affine, fill=AIR_HU
    )
    hu = hu.with_array(np.ascontiguousarray(hu.array, dtype=np.float32))
    mask_float = mask.with_array(mask.array.astype(np.float32))
    lungs = resample_to_grid(mask_float, crop_shape, crop_affine, fill=0.0)
    lungs = lungs.with_array((lungs.array >= 0.5).astype(np.uint8))
    return PreparedCT(
        image=normalise_hu(hu, lungs, plan),
        hu=hu,
        lung_mask=lungs,
        crop_start=start,
        resampled_shape=full_shape,
        source_affine=np.array(volume.affine, dtype=np.float64),
        geometry=plan,
    )


def _patch_affine(
    volume: Volume, centre: npt.ArrayLike, shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    """A grid along the volume's axes whose geometric centre is exactly ``centre`` (LPS mm)."""
    matrix = volume.direction * np.asarray(spacing)[None, :]
    half = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = np.asarray(centre, dtype=np.float64).reshape(3) - matrix @ half
    return affine


def extract_patch(
    volume: Volume,
    centre: Sequence[float] | npt.ArrayLike,
    shape: int | Sequence[int],
    spacing: float | Sequence[float] | None = None,
    fill: float = AIR_HU,
    interpolation: Interpolation = "linear",
) -> Volume:
    """The patch of ``shape`` voxels centred exactly on the LPS point ``centre``, on the volume's axes.

    ``spacing`` defaults to the volume's. Voxels outside the volume take ``fill`` (air for HU; give 0 for a
    [0, 1] image). For an odd ``shape``, the middle voxel sits on ``centre``.
    """
    size = int_triple(shape, "patch shape", minimum=1)
    step = positive_float_triple(volume.spacing.tolist() if spacing is None else spacing, "patch spacing")
    point = np.asarray(centre, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InputError(f"{describe_source(volume)}: a patch centre must be 3 finite LPS mm; got {centre!r}")
    return resample_to_grid(volume, size, _patch_affine(volume, point, size, step), interpolation, fill)


def extract_patches(
    volume: Volume,
    centres: npt.ArrayLike,
    shape: int | Sequence[int],
    spacing: float | Sequence[float] | None = None,
    fill: float = AIR_HU,
    interpolation: Interpolation = "linear",
) -> npt.NDArray[np.float32]:
    """Patches around many LPS points (N, 3), stacked as float32 (N, *shape): a classifier's batch."""
    points = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    size = int_triple(shape, "patch shape", minimum=1)
    stacked = np.empty((len(points), *size), dtype=np.float32)
    for n, point in enumerate(points):
        stacked[n] = extract_patch(volume, point, size, spacing, fill, interpolation).array
    return stacked
