"""Trust outputs as pictures and DICOM: heat-map overlays (PNG), parametric maps and secondary captures.

A parametric map carries the float values (probability, uncertainty, attribution) on the source grid for
viewers that read it; a secondary capture carries the same overlay as plain RGB pixels for viewers that do
not. Both join the source study, so PACS files them next to the images they explain.

2-D inputs of :func:`overlay_rgb` are in display order (rows, columns), i.e. ``volume.array[:, :, k].T``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import matplotlib
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image

from vesalius import __version__
from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.writers.seg import MANUFACTURER, match_source_slices
from vesalius.writers.uids import derived_uid

__all__ = [
    "MASK_OUTLINE_RGB",
    "key_slices",
    "overlay_rgb",
    "parametric_map",
    "png_bytes",
    "secondary_capture",
    "write_png",
]

MASK_OUTLINE_RGB = (0, 255, 255)
"""Cyan: absent from the heat colormaps (inferno, magma, hot), so the outline never reads as heat."""
HEAT_THRESHOLD = 0.05
"""Heat at or below this is left uncoloured, so faint noise does not tint the whole image."""

_UCUM_MEANINGS = {
    "1": "no units",
    "%": "percent",
    "mm": "millimeter",
    "mm2": "square millimeter",
    "mm3": "cubic millimeter",
    "[hnsf'U]": "Hounsfield unit",
}

UInt8Array = npt.NDArray[np.uint8]


def _window_to_grey(image: npt.NDArray[np.float64], window: tuple[float, float] | None) -> npt.NDArray[np.float64]:
    """Grey levels in [0, 1]: the given (centre, width) window, else the 1st-99th percentile range."""
    finite = image[np.isfinite(image)]
    if window is not None:
        centre, width = float(window[0]), float(window[1])
        if width <= 0:
            raise InputError(f"overlay window: width must be > 0, got {width}")
        low, high = centre - width / 2.0, centre + width / 2.0
    elif finite.size:
        low, high = (float(v) for v in np.percentile(finite, [1.0, 99.0]))
    else:
        low, high = 0.0, 1.0
    if high <= low:
        high = low + 1.0
    grey = (np.nan_to_num(image, nan=low) - low) / (high - low)
    return np.clip(grey, 0.0, 1.0)


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Mask pixels with at least one 4-neighbour outside the mask (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _check_plane(name: str, array: npt.ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[np.float64] | None:
    if array is None:
        return None
    plane = np.asarray(array, dtype=np.float64)
    if plane.shape != shape:
        raise InputError(f"overlay {name}: expected the image's shape {shape}, got {plane.shape}")
    return plane


def overlay_rgb(
    image2d: npt.ArrayLike,
    heatmap2d: npt.ArrayLike | None = None,
    *,
    mask2d: npt.ArrayLike | None = None,
    window: tuple[float, float] | None = None,
    alpha: float = 0.45,
    colormap: str = "inferno",
) -> UInt8Array:
    """An (H, W, 3) uint8 picture: the windowed grey image, heat blended in where it exceeds 0.05, mask outlined.

    Heat is clipped to [0, 1] and coloured through the matplotlib ``colormap``; pixels without heat stay grey
    (R = G = B), so a reader can tell exactly where the model looked. The mask is drawn as its outline only,
    in :data:`MASK_OUTLINE_RGB`, so the anatomy under it stays visible.
    """
    image = np.asarray(image2d, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"overlay image: expected a 2-D (rows, columns) array, got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay alpha: expected a value in [0, 1], got {alpha}")
    heat = _check_plane("heatmap", heatmap2d, image.shape)
    mask = _check_plane("mask", mask2d, image.shape)
    grey = _window_to_grey(image, window)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if heat is not None:
        try:
            cmap = matplotlib.colormaps[colormap]
        except KeyError as error:
            raise InputError(f"overlay colormap: {colormap!r} is not a matplotlib colormap") from error
        heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
        hot = heat > HEAT_THRESHOLD
        colours = np.asarray(cmap(heat[hot]), dtype=np.float64)[:, :3]
        rgb[hot] = (1.0 - alpha) * rgb[hot] + alpha * colours
    out = np.round(rgb * 255.0).astype(np.uint8)
    if mask is not None:
        out[_outline(mask > 0)] = MASK_OUTLINE_RGB
    return out


def png_bytes(rgb: npt.ArrayLike) -> bytes:
    """The (H, W, 3) uint8 picture encoded as PNG (lossless, so reports show exactly what was computed)."""
    pixels = np.asarray(rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"PNG image: expected an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path | str, rgb: npt.ArrayLike) -> Path:
    """Save the picture as a PNG file (parent folders created) and return its path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png_bytes(rgb))
    return target


def key_slices(weights3d: npt.ArrayLike, count: int = 3, axis: int = 2) -> list[int]:
    """Indices of the ``count`` slices along ``axis`` with the largest total weight, distinct and ascending.

    Slices without weight are never chosen; when no slice has any, the middle slice is returned, so a
    report always shows something. Ties go to the lower index.
    """
    weights = np.nan_to_num(np.asarray(weights3d, dtype=np.float64), nan=0.0)
    if weights.ndim != 3:
        raise InputError(f"key slices: expected a 3-D weight array, got shape {weights.shape}")
    if count < 1:
        raise InputError(f"key slices: count must be >= 1, got {count}")
    if not -3 <= axis <= 2:
        raise InputError(f"key slices: axis must be 0, 1 or 2, got {axis}")
    totals = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1).sum(axis=1)
    order = [int(k) for k in np.argsort(-totals, kind="stable") if totals[k] > 0]
    if not order:
        return [weights.shape[axis] // 2]
    return sorted(order[:count])


def _unit(unit_code: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(
        value=unit_code, scheme_designator="UCUM", meaning=_UCUM_MEANINGS.get(unit_code, unit_code)
    )


def _digest(array: npt.NDArray[np.generic]) -> str:
    """A content hash, so new values get new SOP instances while a retried job reproduces the same one."""
    contiguous = np.ascontiguousarray(array)
    return hashlib.sha256(
        str(contiguous.shape).encode() + str(contiguous.dtype).encode() + contiguous.tobytes()
    ).hexdigest()


def _ordered_sources(sources: Sequence[pydicom.Dataset], values: Volume) -> list[pydicom.Dataset]:
    """The sources in frame (k) order after checking that ``values`` lies on their grid."""
    if not sources:
        raise InputError("parametric map: no source datasets given")
    series = str(getattr(sources[0], "SeriesInstanceUID", "?"))
    if values.array.ndim != 3:
        raise InputError(f"series {series}: parametric map values must be 3-D (i, j, k), got {values.array.shape}")
    study = values.identity.study_instance_uid
    if study is not None and study != str(sources[0].StudyInstanceUID):
        raise InputError(f"series {series}: values belong to study {study}, sources to {sources[0].StudyInstanceUID}")
    if not all("ImagePositionPatient" in ds and "FrameOfReferenceUID" in ds for ds in sources):
        raise InputError(
            f"series {series}: a Parametric Map needs a frame of reference and slice positions, which a projection "
            "image (CR, DX) lacks; write a secondary capture for it instead"
        )
    return match_source_slices(values, sources)


def parametric_map(
    sources: Sequence[pydicom.Dataset],
    values: Volume,
    *,
    series_description: str,
    unit_code: str,
    label: str,
    series_number: int = 9101,
    content_label: str = "VESALIUS_MAP",
) -> hd.pm.ParametricMap:
    """A float32 Parametric Map of ``values`` on the source series' grid, one frame per source slice.

    ``values`` must sample exactly the source grid (a CT/MR series: one slice per instance); projection
    images have no frame of reference, so they get a secondary capture instead. Stored values are the real
    values; the Real World Value Mapping (identity, unit ``unit_code`` in UCUM, LUT label ``label``) says so.
    """
    ordered = _ordered_sources(sources, values)
    frames = np.ascontiguousarray(np.transpose(np.asarray(values.array, dtype=np.float32), (2, 1, 0)))
    series_uid = str(ordered[0].SeriesInstanceUID)
    if not np.all(np.isfinite(frames)):
        raise InputError(f"series {series_uid}: parametric map '{label}' holds NaN or infinite values")
    low, high = float(frames.min()), float(frames.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16],
        lut_explanation=label[:64],
        unit=_unit(unit_code),
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
    )
    window = hd.VOILUTTransformation(
        window_center=(low + high) / 2.0,
        window_width=max(high - low, 1e-6),
        voi_lut_function=hd.VOILUTFunctionValues.LINEAR_EXACT,  # a width below 1 is valid only for LINEAR_EXACT
    )
    digest = _digest(frames)
    return hd.pm.ParametricMap(
        source_images=ordered,
        pixel_array=frames,
        series_instance_uid=derived_uid(series_uid, "pm-series", label, series_description),
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, "pm-instance", label, digest),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="vesalius",
        software_versions=f"vesalius {__version__}",
        device_serial_number="vesalius",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[window],
        content_label=content_label,
        content_description=label[:64],
        series_description=series_description[:64],
    )


def _patient_orientation(source: pydicom.Dataset) -> tuple[str, str]:
    """Row and column directions as patient letters, from PatientOrientation or ImageOrientationPatient."""
    given = getattr(source, "PatientOrientation", None)
    if given is not None and len(given) == 2 and all(str(v) for v in given):
        return str(given[0]), str(given[1])
    if "ImageOrientationPatient" in source:
        cosines = np.array([float(v) for v in source.ImageOrientationPatient]).reshape(2, 3)
        letters = (("L", "R"), ("P", "A"), ("H", "F"))
        row, column = (
            letters[int(np.argmax(np.abs(v)))][0 if v[int(np.argmax(np.abs(v)))] > 0 else 1] for v in cosines
        )
        return row, column
    raise InputError(
        f"instance {getattr(source, 'SOPInstanceUID', '?')}: neither PatientOrientation nor ImageOrientationPatient "
        "is present, so the secondary capture cannot state which way it faces"
    )


def secondary_capture(
    source: pydicom.Dataset,
    rgb: npt.ArrayLike,
    *,
    series_description: str,
    series_number: int = 9102,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of an overlay, in the source's study and patient, for any DICOM viewer.

    Pixel spacing is copied only when the picture has the source image's size (an unscaled slice).
    """
    pixels = np.asarray(rgb)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"secondary capture: expected an (H, W, 3) uint8 array, got {pixels.dtype} {pixels.shape}")
    series_uid = str(source.SeriesInstanceUID)
    spacing = None
    same_size = (int(getattr(source, "Rows", 0)), int(getattr(source, "Columns", 0))) == pixels.shape[:2]
    if same_size and "PixelSpacing" in source and all(float(v) > 0 for v in source.PixelSpacing):
        spacing = (float(source.PixelSpacing[0]), float(source.PixelSpacing[1]))
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=derived_uid(series_uid, "sc-series", series_description),
        series_number=series_number,
        sop_instance_uid=derived_uid(str(source.SOPInstanceUID), "sc-instance", _digest(pixels)),
        instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,  # type: ignore[arg-type]  # highdicom annotates floats as int here
        patient_orientation=_patient_orientation(source),
        series_description=series_description[:64],
    )
