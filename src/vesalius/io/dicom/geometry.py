"""From a set of frames to one regular grid: sort along the slice normal, check, build the affine.

Slices are ordered by their position projected on the normal of the image plane, never by file name or
Instance Number. Problems that make a single grid impossible (a gap, uneven spacing, mixed orientation or
size, repeated positions) are reported precisely; a gantry tilt gives a sheared grid that the reader
resamples or refuses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vesalius.io.dicom.frames import Frame

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between direction cosines still taken as the same orientation."""
DUPLICATE_POSITION_MM = 1e-3
"""Slices closer than this along the normal are taken as the same position."""
TILT_TOLERANCE_DEGREES = 0.01
BLOCKING_KINDS = frozenset(
    {
        "missing_slices",
        "uneven_spacing",
        "irregular_positions",
        "duplicate_positions",
        "mixed_orientation",
        "mixed_size",
        "missing_position",
    }
)


@dataclass(frozen=True)
class GeometryProblem:
    """A finding about a stack; ``blocking`` ones prevent building one grid."""

    kind: str
    message: str

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING_KINDS


@dataclass(frozen=True)
class StackGeometry:
    """Slice order and the voxel-to-LPS affine of a stack of frames."""

    order: tuple[int, ...]
    """Indices into the given frames, in k order."""
    affine: npt.NDArray[np.float64]
    """Index (i, j, k) to LPS; its k column is the mean step between slices (sheared when tilted)."""
    shape: tuple[int, int, int]
    tilt_degrees: float
    problems: tuple[GeometryProblem, ...]

    @property
    def blocking_problems(self) -> list[GeometryProblem]:
        return [p for p in self.problems if p.blocking]

    @property
    def in_plane_shift(self) -> npt.NDArray[np.float64]:
        """Part of the slice step that lies in the image plane (non-zero only under gantry tilt)."""
        step = self.affine[:3, 2]
        normal = np.cross(self.affine[:3, 0], self.affine[:3, 1])
        normal /= np.linalg.norm(normal)
        return np.asarray(step - np.dot(step, normal) * normal, dtype=np.float64)


def _name(frame: Frame) -> str:
    return frame.path.name if frame.frame_index is None else f"{frame.path.name}[frame {frame.frame_index}]"


def _size_and_orientation_problems(frames: Sequence[Frame]) -> list[GeometryProblem]:
    problems = []
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({n} frames)" for (r, c), n in sizes.most_common())
        problems.append(GeometryProblem("mixed_size", f"mixed image sizes (rows x columns): {listed}"))
    oriented = [f for f in frames if f.orientation is not None]
    if oriented:
        reference = np.asarray(oriented[0].orientation)
        deviations = [np.max(np.abs(np.asarray(f.orientation) - reference)) for f in oriented]
        different = [f for f, d in zip(oriented, deviations, strict=True) if d > ORIENTATION_TOLERANCE]
        if different:
            problems.append(
                GeometryProblem(
                    "mixed_orientation",
                    f"mixed orientations: {len(different)} of {len(frames)} frames differ from "
                    f"{_name(oriented[0])} (e.g. {_name(different[0])}); a localizer or several planes "
                    "in one series",
                )
            )
    return problems


def _in_plane_spacing(frame: Frame, problems: list[GeometryProblem]) -> tuple[float, float]:
    """(spacing along i = between columns, spacing along j = between rows)."""
    if frame.pixel_spacing is None or min(frame.pixel_spacing) <= 0:
        problems.append(GeometryProblem("no_pixel_spacing", "no pixel spacing in the header; 1 mm assumed"))
        return 1.0, 1.0
    between_rows, between_columns = frame.pixel_spacing
    return between_columns, between_rows


def _single_or_unpositioned(frames: Sequence[Frame], problems: list[GeometryProblem]) -> StackGeometry:
    """A lone slice, or frames without positions (stacked in the order they were stored)."""
    first = frames[0]
    spacing_i, spacing_j = _in_plane_spacing(first, problems)
    spacing_k = first.spacing_between_slices or first.slice_thickness or 1.0
    if first.orientation is not None:
        row, column = first.row_direction, first.column_direction
    else:
        row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row, column)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * spacing_i, column * spacing_j, normal * spacing_k
    affine[:3, 3] = first.position if first.position is not None else (0.0, 0.0, 0.0)
    if len(frames) > 1 or first.position is None:
        problems.append(
            GeometryProblem(
                "no_position",
                "no Image Position (Patient): frames kept in stored order, "
                f"{spacing_k:g} mm apart, placed at the origin",
            )
        )
    order = tuple(sorted(range(len(frames)), key=lambda n: frames[n].frame_index or 0))
    return StackGeometry(order, affine, (first.columns, first.rows, len(frames)), 0.0, tuple(problems))


def _spacing_problems(
    frames: Sequence[Frame], order: Sequence[int], distances: npt.NDArray[np.float64]
) -> list[GeometryProblem]:
    steps = np.diff(distances)
    problems = []
    repeated = int(np.sum(steps < DUPLICATE_POSITION_MM))
    if repeated:
        problems.append(
            GeometryProblem(
                "duplicate_positions",
                f"{repeated} frames repeat a position already in the series (several echoes, phases or "
                "time points in one series); split it before building a volume",
            )
        )
        return problems
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * median)
    for gap in gaps[:5]:
        before, after = frames[order[gap]], frames[order[gap + 1]]
        missing = round(float(steps[gap]) / median) - 1
        problems.append(
            GeometryProblem(
                "missing_slices",
                f"missing slices: about {max(missing, 1)} missing between {_name(before)} "
                f"({distances[gap]:.2f} mm) and {_name(after)} ({distances[gap + 1]:.2f} mm) along the "
                f"slice normal; the spacing elsewhere is {median:.3g} mm",
            )
        )
    if len(gaps) > 5:
        problems.append(GeometryProblem("missing_slices", f"and {len(gaps) - 5} more gaps"))
    if not len(gaps):
        deviation = float(np.max(np.abs(steps - median)))
        if deviation > max(0.01, 0.01 * median):
            problems.append(
                GeometryProblem(
                    "uneven_spacing",
                    f"uneven slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
                    f"(median {median:.4g} mm)",
                )
            )
    return problems


def stack_geometry(frames: Sequence[Frame]) -> StackGeometry:
    """Sort frames along the slice normal and build the affine, collecting every problem found."""
    if not frames:
        raise ValueError("no frames")
    problems = _size_and_orientation_problems(frames)
    positioned = [f.position is not None and f.orientation is not None for f in frames]
    if len(frames) == 1 or not any(positioned):
        return _single_or_unpositioned(frames, problems)
    if not all(positioned):
        missing = [_name(f) for f, ok in zip(frames, positioned, strict=True) if not ok]
        problems.append(
            GeometryProblem("missing_position", f"{len(missing)} frames lack a position or orientation: {missing[:3]}")
        )
        return _single_or_unpositioned(frames, problems)

    first = frames[0]
    row, column = first.row_direction, first.column_direction
    normal = np.cross(row, column)
    normal /= np.linalg.norm(normal)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    distances = positions @ normal
    instance = [f.instance_number or 0 for f in frames]
    order = tuple(sorted(range(len(frames)), key=lambda n: (distances[n], instance[n], frames[n].frame_index or 0)))
    sorted_positions = positions[list(order)]
    sorted_distances = distances[list(order)]
    mixed = bool(problems)
    if not mixed:
        problems += _spacing_problems(frames, order, sorted_distances)

    spacing_i, spacing_j = _in_plane_spacing(first, problems)
    count = len(frames)
    step = (sorted_positions[-1] - sorted_positions[0]) / (count - 1)
    step_along_normal = float(np.dot(step, normal))
    in_plane = step - step_along_normal * normal
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(in_plane), abs(step_along_normal))))
    if step_along_normal <= 0 or mixed:
        tilt = 0.0
    expected = sorted_positions[0] + np.outer(np.arange(count), step)
    off_line = float(np.max(np.linalg.norm(sorted_positions - expected, axis=1)))
    if off_line > 0.1 * min(spacing_i, spacing_j) and not any(p.blocking for p in problems):
        problems.append(
            GeometryProblem(
                "irregular_positions",
                f"slice positions do not lie on one line (up to {off_line:.3g} mm off); not a regular grid",
            )
        )
    tilted = tilt > TILT_TOLERANCE_DEGREES
    if tilted:
        problems.append(
            GeometryProblem(
                "gantry_tilt",
                f"gantry tilt of {tilt:.2f} degrees: slices are sheared along the slice axis",
            )
        )
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = row * spacing_i, column * spacing_j
    affine[:3, 2] = step if tilted else normal * step_along_normal
    affine[:3, 3] = sorted_positions[0]
    return StackGeometry(order, affine, (first.columns, first.rows, count), tilt if tilted else 0.0, tuple(problems))
