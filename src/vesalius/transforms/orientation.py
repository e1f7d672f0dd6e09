"""Reorienting by permuting and flipping axes only: no interpolation, so voxel values survive exactly.

A code such as "LPS" names where each voxel axis points ("towards" convention): i towards the patient's
Left, j towards Posterior, k towards Superior. "RAS" is NIfTI's usual layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from typing import Any

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import TransformError
from vesalius.core.volume import Volume
from vesalius.transforms._common import applied

_LETTERS: dict[str, tuple[int, float]] = {
    "L": (0, 1.0),
    "R": (0, -1.0),
    "P": (1, 1.0),
    "A": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}
"""Each letter as (LPS world axis, sign along it)."""


def _parse_code(code: str) -> tuple[tuple[int, float], ...]:
    letters = code.upper() if isinstance(code, str) else ""
    parsed = [_LETTERS[letter] for letter in letters if letter in _LETTERS]
    if len(letters) != 3 or len(parsed) != 3 or len({axis for axis, _ in parsed}) != 3:
        raise TransformError(
            f"orientation code must name one of L/R, one of P/A and one of S/I, e.g. 'LPS' or 'RAS'; got {code!r}"
        )
    return tuple(parsed)


def canonical_plan(
    direction: npt.NDArray[np.float64], code: str
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """The axis permutation and flips that point the axes as close as possible to ``code``.

    New axis ``a`` is old axis ``perm[a]``, reversed when ``flips[a]``. The permutation maximises the total
    alignment, so an oblique series whose axes share a dominant direction still gets distinct axes; ties
    keep the original order.
    """
    targets = _parse_code(code)

    def alignment(perm: tuple[int, ...]) -> float:
        return float(sum(abs(direction[targets[a][0], perm[a]]) for a in range(3)))

    best = max(permutations(range(3)), key=alignment)
    perm = (best[0], best[1], best[2])
    signs = [direction[targets[a][0], perm[a]] * targets[a][1] for a in range(3)]
    return perm, (bool(signs[0] < 0), bool(signs[1] < 0), bool(signs[2] < 0))


def reorient_array(array: npt.NDArray[Any], perm: Sequence[int], flips: Sequence[bool]) -> npt.NDArray[Any]:
    """Permute then flip the spatial axes; a channel axis stays last. Returns a fresh array."""
    moved = np.transpose(array, (*perm, *range(3, array.ndim)))
    flipped = tuple(axis for axis in range(3) if flips[axis])
    return np.array(np.flip(moved, axis=flipped) if flipped else moved, order="C")


def unreorient_array(array: npt.NDArray[Any], perm: Sequence[int], flips: Sequence[bool]) -> npt.NDArray[Any]:
    """Exact inverse of ``reorient_array``: unflip, then put the axes back."""
    flipped = tuple(axis for axis in range(3) if flips[axis])
    unflipped = np.flip(array, axis=flipped) if flipped else array
    inverse = np.argsort(perm).tolist()
    return np.array(np.transpose(unflipped, (*inverse, *range(3, array.ndim))), order="C")


def reoriented_affine(
    affine: npt.NDArray[np.float64], shape: Sequence[int], perm: Sequence[int], flips: Sequence[bool]
) -> npt.NDArray[np.float64]:
    """The affine that keeps every voxel at its LPS position after ``reorient_array``."""
    result = np.eye(4)
    result[:3, 3] = affine[:3, 3]
    for axis in range(3):
        column = affine[:3, perm[axis]]
        if flips[axis]:
            result[:3, 3] += column * (shape[perm[axis]] - 1)
            result[:3, axis] = -column
        else:
            result[:3, axis] = column
    return result


def to_canonical(volume: Volume, code: str = "LPS") -> Volume:
    """Lay the axes out as ``code`` ("LPS", "RAS", ...) by permuting and flipping, never interpolating.

    Oblique series keep their obliquity: each axis ends up pointing as close as possible to the code.
    """
    perm, flips = canonical_plan(volume.direction, code)
    array = reorient_array(volume.array, perm, flips)
    affine = reoriented_affine(volume.affine, volume.shape, perm, flips)
    params = {"code": code.upper(), "perm": perm, "flips": flips}
    return applied(volume, "to_canonical", params, array, affine)
