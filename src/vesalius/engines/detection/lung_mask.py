"""The lung mask of a chest CT: where nodules can be, so detection ignores the rest of the body.

Air inside the body (HU below a threshold, not connected to the image border within its axial slice) is
labelled in 3D; the largest component is a lung (or both, joined at the carina), a second one is kept when
it reaches as high as the first lung's upper half, so bowel gas below the diaphragm, gas in the table and
small pockets are left out. Vessels are filled slice by slice, and each lung is closed by a ball of a few
mm, so nodules attached to the pleura (juxtapleural) and to the mediastinum fall inside the mask: a mask
that hugs the air would cut exactly the nodules that matter. Work is done on the lungs' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume

BoolArray = npt.NDArray[np.bool_]

__all__ = ["LungMaskSettings", "describe_source", "lung_mask", "lung_volume_ml", "slice_axis"]


@dataclass(frozen=True)
class LungMaskSettings:
    """Thresholds and sizes of the lung mask; millimetres, so the result does not depend on the spacing."""

    air_threshold_hu: float = -320.0
    """Voxels below this are air or lung parenchyma; soft tissue, vessels walls and bone lie above."""
    min_lung_ml: float = 100.0
    """The largest air component inside the body must hold this much to be a lung (sinuses hold ~30 mL)."""
    second_lung_fraction: float = 0.1
    """A second component must hold this fraction of the first to count as the other lung."""
    closing_mm: float = 10.0
    """Radius of the closing ball: fills pleural indentations (juxtapleural nodules) up to ~2x this wide."""
    margin_mm: float = 0.0
    """Extra dilation after the closing, e.g. to keep a rim of pleura for the detector's context."""


def describe_source(volume: Volume) -> str:
    """How error messages name a volume: its series UID, else its source path, else its geometry."""
    if volume.identity.series_instance_uid:
        return f"series {volume.identity.series_instance_uid}"
    source = volume.metadata.get("source")
    return f"volume {source}" if source else f"volume ({volume.describe()})"


def slice_axis(volume: Volume) -> int:
    """The voxel axis closest to the patient's head-feet direction: the axis across axial slices."""
    return int(np.argmax(np.abs(volume.direction[2, :])))


def _in_plane_structure(axis: int) -> npt.NDArray[np.bool_]:
    """A connectivity that links voxels within one slice only, so one ``label`` call labels every slice."""
    structure = np.asarray(ndimage.generate_binary_structure(3, 1), dtype=bool)
    plane = [slice(None)] * 3
    for index in (0, 2):
        plane[axis] = slice(index, index + 1)
        structure[tuple(plane)] = False
    return structure


def _border_labels(labels: npt.NDArray[np.int32], axis: int) -> npt.NDArray[np.int32]:
    """Labels present on the in-plane border of the slices (the faces not perpendicular to ``axis``)."""
    found = []
    for other in (a for a in range(3) if a != axis):
        for index in (0, labels.shape[other] - 1):
            found.append(np.unique(np.take(labels, index, axis=other)))
    return np.unique(np.concatenate(found))


def _fill_slices(mask: BoolArray, axis: int) -> BoolArray:
    """Fill holes in every slice: background not connected to the slice's border becomes foreground."""
    labels, count = ndimage.label(~mask, structure=_in_plane_structure(axis))
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    outside[_border_labels(labels, axis)] = True
    outside[0] = False
    filled: BoolArray = mask | ~outside[labels]
    return filled


def _factors(spacing: npt.NDArray[np.float64], target_mm: float) -> tuple[int, int, int]:
    """Whole-voxel steps per axis that bring ``spacing`` close to ``target_mm`` (1 where it is already coarser)."""
    steps = [max(1, round(float(target_mm / s))) for s in spacing]
    return steps[0], steps[1], steps[2]


def _upsampled(coarse: BoolArray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> BoolArray:
    """Repeat each coarse voxel over its block, trimmed to ``shape``."""
    result = coarse
    for axis, factor in enumerate(factors):
        if factor > 1:
            result = np.repeat(result, factor, axis=axis)
    trimmed: BoolArray = result[tuple(slice(0, n) for n in shape)]
    return trimmed


def _body(air: BoolArray, axis: int, spacing: npt.NDArray[np.float64]) -> BoolArray:
    """The patient: the largest 3D component of non-air, its slices filled (table and blanket excluded).

    Found on a ~2 mm subsample, since it only has to say which air lies inside the patient.
    """
    factors = _factors(spacing, 2.0)
    coarse = air[tuple(slice(None, None, f) for f in factors)]
    labels, count = ndimage.label(~coarse)
    if count == 0:
        return np.zeros_like(air)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = _fill_slices(labels == int(np.argmax(sizes)), axis)
    return _upsampled(body, factors, air.shape)


def _internal_air(air: BoolArray, axis: int) -> BoolArray:
    """Air not connected to the slice border in its slice: lungs, airways, bowel gas, table cavities."""
    labels, count = ndimage.label(air, structure=_in_plane_structure(axis))
    if count == 0:
        return air.copy()
    outside = np.zeros(count + 1, dtype=bool)
    outside[_border_labels(labels, axis)] = True
    outside[0] = True
    internal: BoolArray = ~outside[labels]
    return internal


def _head_feet_extent(box: tuple[slice, ...], axis: int, superior_sign: float) -> tuple[float, float]:
    """(lowest, highest) slice of a component's box, counted from the feet towards the head."""
    ends = sorted((box[axis].start * superior_sign, (box[axis].stop - 1) * superior_sign))
    return ends[0], ends[1]


def _select_lungs(
    candidates: BoolArray, volume: Volume, settings: LungMaskSettings
) -> list[tuple[tuple[slice, ...], BoolArray]]:
    """The one or two components that are lungs, each as (bounding box, mask within the box)."""
    labels, count = ndimage.label(candidates)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(volume.spacing)) / 1000.0
    order = [int(i) for i in np.argsort(sizes)[::-1]]
    if sizes[order[0]] < settings.min_lung_ml:
        return []
    boxes = ndimage.find_objects(labels)
    axis = slice_axis(volume)
    sign = float(np.sign(volume.direction[2, axis]))
    bottom, top = _head_feet_extent(boxes[order[0]], axis, sign)
    chosen = [order[0]]
    for index in order[1:]:
        if sizes[index] < settings.second_lung_fraction * sizes[order[0]]:
            break
        if _head_feet_extent(boxes[index], axis, sign)[1] >= (bottom + top) / 2.0:
            chosen.append(index)  # reaches the first lung's upper half: the other lung, not bowel gas
            break
    return [(boxes[index], labels[boxes[index]] == index + 1) for index in chosen]


def _closed(mask: BoolArray, spacing: npt.NDArray[np.float64], radius_mm: float) -> BoolArray:
    """Morphological closing with a ball of ``radius_mm``, through two distance transforms in mm.

    The closing runs on blocks of about a quarter of the radius (a block is lung when half its voxels
    are), which is what keeps it to a second on a 0.7 mm CT; only the blocks it adds are added, so the
    lung's own boundary keeps its full resolution.
    """
    if radius_mm <= 0:
        return mask
    factors = _factors(spacing, radius_mm / 4.0)
    padded_shape = [-(-n // f) * f for n, f in zip(mask.shape, factors, strict=True)]
    blocks = np.zeros(padded_shape, dtype=np.float32)
    blocks[tuple(slice(0, n) for n in mask.shape)] = mask
    shape = [n // f for n, f in zip(padded_shape, factors, strict=True)]
    fraction = blocks.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))
    coarse = fraction >= 0.5
    coarse_spacing = spacing * np.asarray(factors)
    pad = np.ceil(radius_mm / coarse_spacing).astype(int) + 1
    padded = np.pad(coarse, [(int(p), int(p)) for p in pad])
    dilated = ndimage.distance_transform_edt(~padded, sampling=coarse_spacing) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=coarse_spacing) > radius_mm
    inner = tuple(slice(int(p), int(p) + n) for p, n in zip(pad, coarse.shape, strict=True))
    added = closed[inner] & ~coarse
    joined = mask | _upsampled(added, factors, mask.shape)
    labels, _ = ndimage.label(joined)
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    keep[np.unique(labels[mask])] = True  # blocks the closing added apart from the lung are dropped
    keep[0] = False
    result: BoolArray = keep[labels]
    return result


def _grown_box(box: tuple[slice, ...], grow: npt.NDArray[np.int64], shape: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - int(g)), min(n, s.stop + int(g))) for s, g, n in zip(box, grow, shape, strict=True)
    )


def lung_mask(volume: Volume, settings: LungMaskSettings | None = None) -> Volume:
    """The lungs of a chest CT in HU, as a uint8 mask (1 = lung) on the volume's grid.

    Raises ``InputError`` when no air component inside the body is large enough to be a lung, e.g. for
    a head CT or a scan that is not in HU.
    """
    options = settings or LungMaskSettings()
    if volume.array.ndim != 3:
        raise InputError(f"{describe_source(volume)}: a lung mask needs a 3-D CT, got array shape {volume.array.shape}")
    hu = np.asarray(volume.array)
    air = hu < options.air_threshold_hu
    axis = slice_axis(volume)
    candidates = _internal_air(air, axis) & _body(air, axis, volume.spacing)
    lungs = _select_lungs(candidates, volume, options)
    if not lungs:
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        raise InputError(
            f"{describe_source(volume)}: no lung found: no air region inside the body holds "
            f"{options.min_lung_ml:g} mL or more (largest {_largest_ml(candidates, voxel_ml):.1f} mL, "
            f"threshold {options.air_threshold_hu:g} HU); is this a chest CT in HU?"
        )
    spacing = volume.spacing
    grow = np.ceil((options.closing_mm + options.margin_mm) / spacing).astype(np.int64) + 1
    result = np.zeros(volume.shape, dtype=bool)
    for box, component in lungs:
        region = _grown_box(box, grow, volume.shape)
        local = np.zeros(tuple(r.stop - r.start for r in region), dtype=bool)
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region, strict=True))
        local[inner] = component
        local = _closed(_fill_slices(local, axis), spacing, options.closing_mm)
        result[region] |= _fill_slices(local, axis)
    if options.margin_mm > 0:
        result = ndimage.distance_transform_edt(~result, sampling=spacing) <= options.margin_mm
    return volume.with_array(result.astype(np.uint8), metadata={**volume.metadata, "content": "lung mask"})


def _largest_ml(candidates: BoolArray, voxel_ml: float) -> float:
    labels, count = ndimage.label(candidates)
    if count == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max()) * voxel_ml


def lung_volume_ml(mask: Volume) -> float:
    """Volume of a mask in millilitres (adult lungs hold roughly 3-7 L at inspiration)."""
    return float(np.count_nonzero(mask.array)) * float(np.prod(mask.spacing)) / 1000.0
