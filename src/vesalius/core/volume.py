"""The one spatial type: voxels plus their exact place in the patient (LPS), plus where they came from.

Voxel index (i, j, k) maps to patient LPS millimetres through ``affine``: i runs along the DICOM row
direction (columns of the image), j along the column direction (rows), k along the slices. Arrays are
therefore stored ``array[i, j, k]``, the order nibabel and MONAI use; NIfTI's RAS affine is
``diag(-1, -1, 1, 1) @ affine``. A trailing fourth axis, when present, holds channels (RGB).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

LPS_TO_RAS: npt.NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class DicomIdentity:
    """Where a volume came from in DICOM terms; carried so results can reference their source."""

    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    """One per slice in k order (or one per multi-frame object)."""


@dataclass(frozen=True)
class AppliedTransform:
    """A record of one transform applied to a volume, enough to invert it exactly."""

    name: str
    params: Mapping[str, Any]
    source_shape: tuple[int, ...]
    source_affine: npt.NDArray[np.float64]


def orientation_code(direction: npt.ArrayLike) -> str:
    """Axis code ('towards' convention, as nibabel's aff2axcodes but in LPS) of a 3x3 direction matrix.

    The permutation of world axes that best matches all three columns is chosen, so a strongly oblique
    grid still gets three distinct letters.
    """
    matrix = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))
    best = max(itertools.permutations(range(3)), key=lambda p: sum(matrix[p[a], a] for a in range(3)))
    signed = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    return "".join(letters[world][0 if signed[world, axis] > 0 else 1] for axis, world in enumerate(best))


def make_affine(spacing: Sequence[float], origin: Sequence[float], direction: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Build the 4x4 index-to-LPS matrix from spacing, origin and a 3x3 direction (columns = axes)."""
    direction_matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction_matrix * np.asarray(spacing, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels, geometry in patient LPS, modality and DICOM identity.

    Immutable: transforms return a new ``Volume`` and append to ``history`` what they did.
    """

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    modality: str | None = None
    identity: DicomIdentity = field(default_factory=DicomIdentity)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[AppliedTransform, ...] = ()

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        affine.flags.writeable = False
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(f"array must be 3-D (i, j, k) or 4-D (i, j, k, channel), got {self.array.ndim}-D")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine is singular: spacing or direction is degenerate")
        object.__setattr__(self, "affine", affine)

    @classmethod
    def from_geometry(
        cls,
        array: npt.NDArray[Any],
        spacing: Sequence[float],
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: npt.ArrayLike | None = None,
        **kwargs: Any,
    ) -> Volume:
        direction_matrix = np.eye(3) if direction is None else direction
        return cls(array=array, affine=make_affine(spacing, origin, direction_matrix), **kwargs)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (i, j, k), without the channel axis."""
        return (int(self.array.shape[0]), int(self.array.shape[1]), int(self.array.shape[2]))

    @property
    def spacing(self) -> npt.NDArray[np.float64]:
        """Millimetres between voxel centres along i, j, k."""
        return np.asarray(np.linalg.norm(self.affine[:3, :3], axis=0), dtype=np.float64)

    @property
    def origin(self) -> npt.NDArray[np.float64]:
        """LPS position of the centre of voxel (0, 0, 0)."""
        return np.asarray(self.affine[:3, 3].copy(), dtype=np.float64)

    @property
    def direction(self) -> npt.NDArray[np.float64]:
        """3x3 matrix whose columns are the unit LPS directions of the i, j, k axes."""
        return np.asarray(self.affine[:3, :3] / self.spacing[None, :], dtype=np.float64)

    @property
    def ras_affine(self) -> npt.NDArray[np.float64]:
        """The same geometry in NIfTI's RAS convention."""
        return np.asarray(LPS_TO_RAS @ self.affine, dtype=np.float64)

    @property
    def orientation(self) -> str:
        """Three-letter code of where the i, j, k axes point, e.g. 'LPS' for an axial DICOM series."""
        return orientation_code(self.direction)

    def index_to_world(self, indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS millimetres of voxel indices given as (..., 3)."""
        points = np.asarray(indices, dtype=np.float64)
        return np.asarray(points @ self.affine[:3, :3].T + self.affine[:3, 3], dtype=np.float64)

    def world_to_index(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous voxel indices of LPS points given as (..., 3)."""
        inverse = np.linalg.inv(self.affine)
        world = np.asarray(points, dtype=np.float64)
        return np.asarray(world @ inverse[:3, :3].T + inverse[:3, 3], dtype=np.float64)

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes sample exactly the same points in space."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def with_array(self, array: npt.NDArray[Any], **changes: Any) -> Volume:
        """A copy on the same grid with new voxels (e.g. a prediction for this image)."""
        if array.shape[:3] != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume's grid {self.shape}")
        return replace(self, array=array, **changes)

    def evolve(self, **changes: Any) -> Volume:
        return replace(self, **changes)

    def describe(self) -> str:
        spacing = " x ".join(f"{s:.4g}" for s in self.spacing)
        size = " x ".join(str(s) for s in self.shape)
        return f"{self.modality or '?'} {size} voxels, {spacing} mm, {self.orientation}"
