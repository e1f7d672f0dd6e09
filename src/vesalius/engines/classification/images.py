"""Reading a classification item's pixels: PNG/JPEG, DICOM, volumes and MedMNIST arrays, and resizing them.

Separate from ``dataset`` (which says what the items are) because this is the part that touches pixel data:
every reader returns channel-first float32, (C, H, W) or (C, D, H, W), and names the file it failed on.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from vesalius.core.errors import DatasetError, InputError
from vesalius.engines.classification.dataset import (
    RASTER_SUFFIXES,
    VOLUME_SUFFIXES,
    ClassificationDataset,
    ImageSource,
    Item,
    is_image_file,
)
from vesalius.engines.classification.plan import ClassificationPlan

_EPSILON = 1e-6
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)

__all__ = ["input_sources", "load_image", "normalise", "prepare_image", "prepare_images", "resize"]


@lru_cache(maxsize=4)
def _npz_array(path: Path, key: str, stamp: tuple[int, int]) -> npt.NDArray[Any]:
    """One array of a .npz, kept while images of it are read (``stamp`` is the file's mtime and size)."""
    with np.load(path) as archive:
        return np.asarray(archive[key])


def _read_npz(source: ImageSource, dims: int | None) -> npt.NDArray[np.float32]:
    try:
        stat = source.path.stat()
        pixels = np.asarray(_npz_array(source.path, str(source.array), (stat.st_mtime_ns, stat.st_size))[source.index])
    except (OSError, KeyError, IndexError, ValueError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{source}: cannot read the image from the .npz ({error})") from error
    colour = pixels.ndim == 3 and (dims == 2 if dims is not None else pixels.shape[-1] == 3)
    return np.moveaxis(pixels, -1, 0).astype(np.float32) if colour else pixels[None].astype(np.float32)


def _read_raster(path: Path) -> npt.NDArray[np.float32]:
    """PNG/JPEG: 8- and 16-bit grey stay one channel at their values; colour, palette and alpha images give RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                array = np.asarray(image, dtype=np.float32)
            else:
                grey = image.mode in ("1", "L", "LA")
                array = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the image ({error})") from error
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _read_dicom(path: Path) -> npt.NDArray[np.float32]:
    """A DICOM image (an X-ray): the modality LUT (rescale), then, except for CT and PET whose values are
    quantitative, the VOI LUT or window the file carries; MONOCHROME1 is inverted so dense is bright."""
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
        if int(dataset.get("SamplesPerPixel", 1)) == 3:
            return np.moveaxis(np.asarray(pixels, dtype=np.float32), -1, 0)
        pixels = apply_modality_lut(pixels, dataset)
        has_voi = "WindowCenter" in dataset or "VOILUTSequence" in dataset
        if has_voi and dataset.get("Modality") not in ("CT", "PT"):
            pixels = apply_voi_lut(pixels, dataset)
    except Exception as error:  # pydicom raises many types for broken or non-DICOM files
        raise DatasetError(f"{path}: cannot read the DICOM image ({error})") from error
    grey = np.asarray(pixels, dtype=np.float32)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = grey.max() + grey.min() - grey
    return grey[None]


def _read_volume(path: Path) -> npt.NDArray[np.float32]:
    """A volume file or DICOM series folder as (C, D, H, W): the Volume's [i, j, k(, c)] reversed to [(c,) k, j, i]."""
    from vesalius.io import read_volume

    try:
        array = np.asarray(read_volume(path).array, dtype=np.float32)
    except InputError as error:
        raise DatasetError(str(error)) from error
    return np.ascontiguousarray(array.T if array.ndim == 4 else array.T[None])


def load_image(
    item: Item | ImageSource, dataset: ClassificationDataset | None = None, *, grayscale: bool = False
) -> npt.NDArray[np.float32]:
    """The pixels as float32, channel first: 2-D (C, H, W), 3-D (C, D, H, W); values as stored (no scaling).

    Grey images have one channel, colour images three (RGB); ``grayscale=True`` turns a 2-D RGB image into one
    channel with the ITU-R 601 weights. With ``dataset``, an .npz array is read by its ``dims`` (so (N, D, H, 3)
    volumes are not taken for colour) and an image whose dimension differs from the dataset's (a multi-frame
    DICOM in a 2-D set) is an error.
    """
    source = item.source if isinstance(item, Item) else item
    name = source.path.name.lower()
    if source.array is not None:
        pixels = _read_npz(source, dataset.dims if dataset else None)
    elif name.endswith(RASTER_SUFFIXES):
        pixels = _read_raster(source.path)
    elif name.endswith(VOLUME_SUFFIXES) or source.path.is_dir():
        pixels = _read_volume(source.path)
    else:
        pixels = _read_dicom(source.path)
    if dataset is not None and pixels.ndim - 1 != dataset.dims:
        found = f"a {pixels.ndim - 1}-D image of shape {pixels.shape[1:]}"
        raise DatasetError(f"{source}: holds {found}; the dataset {dataset.name} is {dataset.dims}-D")
    if grayscale and pixels.ndim == 3 and pixels.shape[0] == 3:
        pixels = np.tensordot(_LUMA, pixels, axes=1)[None].astype(np.float32)
    return pixels


def resize(array: npt.NDArray[np.float32], size: Sequence[int]) -> npt.NDArray[np.float32]:
    """Resample each channel of a channel-first image to exactly ``size`` (its new spatial shape), linearly.

    ``scipy.ndimage.zoom`` with order 1 and ``grid_mode=True``: pixel edges, not centres, stay aligned (Pillow's
    and torch's ``align_corners=False`` convention) and the border repeats. An axis that shrinks is first
    smoothed with a Gaussian of sigma ``(1 / factor - 1) / 2`` (scikit-image's anti-aliasing), so a 2,000-pixel
    X-ray brought to 224 does not alias. The input comes back unchanged when it has the size already.
    """
    spatial = tuple(array.shape[1:])
    target = tuple(int(s) for s in size)
    if len(spatial) != len(target) or min(target, default=0) < 1:
        raise InputError(f"cannot resize an image of shape {spatial} to {list(size)}")
    if spatial == target:
        return array
    factors = [t / s for t, s in zip(target, spatial, strict=True)]
    sigma = [max(0.0, (1 / f - 1) / 2) for f in factors]
    channels = []
    for channel in array:
        smooth = ndimage.gaussian_filter(channel, sigma, mode="mirror") if max(sigma) > 0 else channel
        channels.append(ndimage.zoom(smooth, factors, order=1, grid_mode=True, mode="nearest"))
    return np.stack(channels).astype(np.float32, copy=False)


def normalise(pixels: npt.NDArray[np.float32], scheme: str) -> npt.NDArray[np.float32]:
    """Per image: z-score over every pixel, or divide by the 8-bit maximum."""
    if scheme == "unit":
        scaled: npt.NDArray[np.float32] = pixels / np.float32(255.0)
        return scaled
    standard: npt.NDArray[np.float32] = (pixels - pixels.mean()) / np.float32(max(float(pixels.std()), _EPSILON))
    return standard


def prepare_image(pixels: npt.NDArray[np.float32], plan: ClassificationPlan) -> npt.NDArray[np.float32]:
    """Channels to the plan's count, 2.5-D slab from the central slices, resize, normalise."""
    if pixels.shape[0] != plan.channels:
        pixels = pixels.mean(axis=0, keepdims=True) if plan.channels == 1 else np.repeat(pixels[:1], plan.channels, 0)
    if plan.slices > 1:
        if pixels.ndim != 4:
            raise InputError(f"2.5-D needs volumes; got an image of shape {pixels.shape[1:]}")
        centre, half = pixels.shape[1] // 2, plan.slices // 2
        indices = np.clip(np.arange(centre - half, centre + half + 1), 0, pixels.shape[1] - 1)
        pixels = pixels[0, indices]
    if pixels.ndim - 1 != len(plan.input_size):
        raise InputError(f"the plan takes {len(plan.input_size)}-D inputs; got shape {pixels.shape[1:]}")
    return normalise(resize(pixels, plan.input_size), plan.normalization)


def prepare_images(sources: Sequence[ImageSource], plan: ClassificationPlan) -> npt.NDArray[np.float32]:
    return np.stack([prepare_image(load_image(source), plan) for source in sources]).astype(np.float32)


# -------------------------------------------------------------------------------------------------- splits


def input_sources(inputs: Sequence[Path | str]) -> list[tuple[str, ImageSource]]:
    """Each input file; each image file in a folder of images (a folder of DICOM without suffixes is one volume);
    every image of each ``*_images`` array of a .npz (named ``file:array:index``)."""
    sources: list[tuple[str, ImageSource]] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.suffix.lower() == ".npz":
            with np.load(path) as archive:
                arrays = [(key, len(archive[key])) for key in archive.files if key.endswith("_images")]
            if not arrays:
                raise InputError(f"{path}: no '*_images' arrays in the .npz")
            sources += [
                (str(ImageSource(path, key, i)), ImageSource(path, key, i)) for key, n in arrays for i in range(n)
            ]
        elif path.is_dir() and (images := sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))):
            sources += [(str(image), ImageSource(image)) for image in images]  # a folder of images
        else:
            sources.append((str(path), ImageSource(path)))  # an image file, or a DICOM series folder as a volume
    return sources
