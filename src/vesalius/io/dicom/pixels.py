"""Decoding stored pixels to modality values (HU for CT), in parallel, into one preallocated array.

Native (uncompressed) little- and big-endian data is viewed straight from the file's bytes, which is
what makes the reader faster than SimpleITK; every compressed transfer syntax goes through pydicom's
decoders (pylibjpeg for JPEG, JPEG-LS, JPEG 2000 and RLE; GDCM as a fall-back).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from vesalius.core.errors import NotDicomError, PixelDecodeError
from vesalius.io.dicom.frames import Frame

NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    }
)


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _native_frames(dataset: Dataset, path: Path) -> npt.NDArray[Any] | None:
    """Frames viewed directly from the Pixel Data bytes, or None when this fast path does not apply."""
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    bits = int(dataset.BitsAllocated)
    if syntax not in NATIVE_SYNTAXES or bits not in (8, 16, 32) or int(dataset.get("SamplesPerPixel", 1)) != 1:
        return None
    if "PixelData" not in dataset:
        return None
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    expected = frames * rows * columns * dtype.itemsize
    data = dataset.PixelData
    if len(data) < expected:
        raise NotDicomError(path, f"truncated: Pixel Data holds {len(data)} bytes, {expected} expected")
    pixels = np.frombuffer(data, dtype=dtype, count=frames * rows * columns).reshape(frames, rows, columns)
    stored = int(dataset.get("BitsStored", bits))
    if signed and stored < bits:
        shift = bits - stored
        pixels = (pixels.astype(dtype.newbyteorder("="), copy=False) << shift) >> shift
    return pixels


def _decoded_frames(dataset: Dataset, path: Path) -> npt.NDArray[Any]:
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    native = _native_frames(dataset, path)
    if native is not None:
        return native
    try:
        pixels = dataset.pixel_array
    except Exception as error:
        raise PixelDecodeError(path, _syntax_name(syntax), str(error) or type(error).__name__) from error
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if frames == 1 and pixels.ndim == (2 if samples == 1 else 3):
        pixels = pixels[None]
    return np.asarray(pixels)


def read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as error:
        raise NotDicomError(path, str(error) or type(error).__name__) from error


def stored_frames(path: Path) -> npt.NDArray[Any]:
    """All frames of one file as stored (before rescale), shape (frames, rows, columns[, samples])."""
    return _decoded_frames(read_dataset(path), path)


def output_dtype(frames: Sequence[Frame], stored: npt.DTypeLike) -> np.dtype[Any]:
    """int16 when integral rescale keeps values in range (as for almost all CT), else float32."""
    stored_type = np.dtype(stored)
    slopes = {f.slope for f in frames}
    intercepts = {f.intercept for f in frames}
    integral = all(float(s).is_integer() for s in slopes) and all(float(i).is_integer() for i in intercepts)
    if not integral or stored_type.kind == "f":
        return np.dtype(np.float32)
    info = np.iinfo(stored_type)
    low = min(min(s * info.min, s * info.max) + i for s in slopes for i in intercepts)
    high = max(max(s * info.min, s * info.max) + i for s in slopes for i in intercepts)
    if slopes == {1.0} and intercepts == {0.0}:
        return stored_type.newbyteorder("=")
    for candidate in (np.int16, np.int32):
        limits = np.iinfo(candidate)
        if low >= limits.min and high <= limits.max:
            return np.dtype(candidate)
    return np.dtype(np.float32)


def read_stack(frames: Sequence[Frame], order: Sequence[int], workers: int | None = None) -> npt.NDArray[Any]:
    """Decode frames into one array indexed [i, j, k(, channel)] with modality rescale applied.

    The result is a transposed view of a (k, j, i) buffer, so i varies fastest in memory, as in NIfTI.
    """
    by_file: dict[Path, list[tuple[int, Frame]]] = defaultdict(list)
    for k, index in enumerate(order):
        by_file[frames[index].path].append((k, frames[index]))
    first = frames[order[0]]
    samples = first.samples_per_pixel
    shape: tuple[int, ...] = (len(order), first.rows, first.columns) + ((samples,) if samples > 1 else ())
    holder: dict[str, npt.NDArray[Any]] = {}

    def load(path: Path) -> None:
        stored = stored_frames(path)
        if "out" not in holder:
            holder.setdefault("out", np.empty(shape, dtype=output_dtype(frames, stored.dtype)))
        out = holder["out"]
        for k, frame in by_file[path]:
            plane = stored[frame.frame_index or 0]
            if plane.shape != shape[1:]:
                raise PixelDecodeError(path, frame.transfer_syntax_uid, f"frame shape {plane.shape} != {shape[1:]}")
            if frame.slope != 1.0 or frame.intercept != 0.0:
                np.multiply(plane, frame.slope, out=out[k], casting="unsafe")
                out[k] += np.asarray(frame.intercept).astype(out.dtype)
            else:
                out[k] = plane

    paths = list(by_file)
    load(paths[0])
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(load, paths[1:]))
    stack = holder["out"]
    return stack.transpose(2, 1, 0, 3) if stack.ndim == 4 else stack.transpose(2, 1, 0)
