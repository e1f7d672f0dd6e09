"""Random geometry for property tests: any rotation or reflection, spacing 0.3-5 mm, small shapes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import assume
from hypothesis import strategies as st

from vesalius.core.volume import Volume

spacings = st.tuples(*[st.floats(0.3, 5.0)] * 3)
origins = st.tuples(*[st.floats(-200.0, 200.0)] * 3)


@st.composite
def rotations(draw: st.DrawFn) -> npt.NDArray[np.float64]:
    """An orthonormal direction matrix from the QR decomposition of a random matrix (may be a reflection)."""
    matrix = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=9, max_size=9))).reshape(3, 3)
    assume(np.linalg.svd(matrix, compute_uv=False).min() > 0.05)  # far from singular
    q, _ = np.linalg.qr(matrix)
    return np.asarray(q, dtype=np.float64)


@st.composite
def signed_permutations(draw: st.DrawFn) -> npt.NDArray[np.float64]:
    """An axis-aligned direction, as most scanners write: a permutation with signs."""
    perm = draw(st.permutations([0, 1, 2]))
    signs = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
    direction = np.zeros((3, 3))
    for column, (row, sign) in enumerate(zip(perm, signs, strict=True)):
        direction[row, column] = sign
    return direction


directions = st.one_of(rotations(), signed_permutations())


@st.composite
def volumes(draw: st.DrawFn, /, channels: bool = False, sides: tuple[int, int] = (2, 8), **kwargs: Any) -> Volume:
    """A volume whose voxel values are distinct (value = flat index), so any misplaced voxel shows."""
    shape = draw(st.tuples(*[st.integers(*sides)] * 3))
    full_shape = (*shape, 2) if channels and draw(st.booleans()) else shape
    array = np.arange(int(np.prod(full_shape)), dtype=np.float64).reshape(full_shape)
    return Volume.from_geometry(
        array, spacing=draw(spacings), origin=draw(origins), direction=draw(directions), **kwargs
    )


def world_ramp(volume: Volume, gradient: tuple[float, float, float], intercept: float) -> Volume:
    """The volume's grid filled with a function linear in LPS millimetres, which trilinear sampling keeps."""
    values = volume.index_to_world(all_indices(volume.shape)) @ np.asarray(gradient) + intercept
    return volume.with_array(values)


def all_indices(shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Every voxel index of a grid, as (*shape, 3)."""
    return np.moveaxis(np.indices(shape, dtype=np.float64), 0, -1)
