"""Decoding stored pixels to modality values (HU for CT), in parallel, into one preallocated array.

Native (uncompressed) pixels are read straight from the file into the output buffer, at the offset found
while the header was parsed, so no file is parsed twice; that is what makes the reader faster than
SimpleITK and dcm2niix. Every compressed transfer syntax goes through pydicom's decoders (pylibjpeg for
JPEG, JPEG-LS, JPEG 2000 and RLE; GDCM only where nothing else decodes the syntax). The modality rescale is
applied once to the whole stack, in the smallest integer type that holds the result.
"""

from __future__ import annotations

import os
import struct
import warnings
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
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from vesalius.core.errors import NotDicomError, PixelDecodeError
from vesalius.io.dicom.frames import Frame

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG})
_LONG_LENGTH_VRS = frozenset({b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"})


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def stored_dtype(frame: Frame) -> np.dtype[Any]:
    """The dtype pixels are stored in, as pydicom's decoders also return them."""
    if frame.samples_per_pixel > 1 or frame.bits_allocated == 8:
        return np.dtype(np.uint8) if frame.bits_allocated == 8 else np.dtype(f"u{frame.bits_allocated // 8}")
    kind = "i" if frame.pixel_representation == 1 else "u"
    return np.dtype(f"{kind}{max(frame.bits_allocated, 8) // 8}")


def _native_direct(frame: Frame) -> bool:
    return (
        frame.pixel_data_offset is not None
        and frame.transfer_syntax_uid in NATIVE_SYNTAXES
        and frame.bits_allocated in (8, 16, 32)
        and frame.samples_per_pixel == 1
    )


def _pixel_data_length(header: bytes, syntax: str, path: Path) -> tuple[int, int]:
    """(value length, header size) of the Pixel Data element whose first 12 bytes are ``header``."""
    big = syntax == EXPLICIT_BIG
    if syntax == IMPLICIT_LITTLE:
        return struct.unpack("<I", header[4:8])[0], 8
    vr = header[4:6]
    if vr in _LONG_LENGTH_VRS:
        return struct.unpack(">I" if big else "<I", header[8:12])[0], 12
    if vr.isalpha():
        return struct.unpack(">H" if big else "<H", header[6:8])[0], 8
    raise NotDicomError(path, f"malformed Pixel Data element header {header!r}")


def _read_native(
    path: Path, frame: Frame, frames_in_file: int, out: npt.NDArray[Any] | None = None
) -> npt.NDArray[Any]:
    """All frames of one native file as (frames, rows, columns), read with one seek and one read.

    ``out``, when given, is a C-contiguous buffer of the stored dtype that receives the bytes directly.
    """
    dtype = stored_dtype(frame)
    count = frames_in_file * frame.rows * frame.columns
    expected = count * dtype.itemsize
    assert frame.pixel_data_offset is not None
    with open(path, "rb") as file:
        file.seek(frame.pixel_data_offset)
        length, size = _pixel_data_length(file.read(12), frame.transfer_syntax_uid, path)
        if length == 0xFFFFFFFF:
            raise PixelDecodeError(
                path, _syntax_name(frame.transfer_syntax_uid), "encapsulated data in a native syntax"
            )
        file.seek(frame.pixel_data_offset + size)
        pixels = np.empty(count, dtype=dtype) if out is None else out.reshape(count)
        got = file.readinto(pixels.data.cast("B"))
    if got < expected or length < expected:
        raise NotDicomError(path, f"truncated: Pixel Data holds {min(got, length)} bytes, {expected} expected")
    if frame.transfer_syntax_uid == EXPLICIT_BIG and dtype.itemsize > 1:
        pixels.byteswap(inplace=True)
    return pixels.reshape(frames_in_file, frame.rows, frame.columns)


def _decoding_plugin(syntax: str) -> str:
    """pydicom's own or pylibjpeg's decoder first; GDCM only when nothing else can decode the syntax.

    GDCM aborts the whole process on some corrupt JPEG 2000 streams, where pylibjpeg raises an error.
    """
    try:
        available = list(get_decoder(UID(syntax)).available_plugins)
    except (NotImplementedError, ValueError, KeyError):
        return ""
    for plugin in ("pydicom", "pylibjpeg", "pyjpegls"):
        if plugin in available:
            return plugin
    return ""


def read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as error:
        raise NotDicomError(path, str(error) or type(error).__name__) from error


def _read_decoded(path: Path, frame: Frame) -> npt.NDArray[Any]:
    dataset = read_dataset(path)
    syntax = frame.transfer_syntax_uid
    if "PixelData" not in dataset:
        raise NotDicomError(path, "no Pixel Data element")
    try:
        pixels = pixel_array(dataset, decoding_plugin=_decoding_plugin(syntax))
    except Exception as error:
        raise PixelDecodeError(path, _syntax_name(syntax), str(error) or type(error).__name__) from error
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames == 1 and pixels.ndim == (2 if frame.samples_per_pixel == 1 else 3):
        pixels = pixels[None]
    return np.asarray(pixels)


def stored_frames(path: Path, frame: Frame, frames_in_file: int = 1) -> npt.NDArray[Any]:
    """All frames of one file as stored (before rescale): (frames, rows, columns[, samples])."""
    pixels = _read_native(path, frame, frames_in_file) if _native_direct(frame) else _read_decoded(path, frame)
    if frame.pixel_representation == 1 and frame.bits_stored < frame.bits_allocated and pixels.dtype.kind == "i":
        shift = frame.bits_allocated - frame.bits_stored
        pixels = (pixels << shift) >> shift
    return pixels


def _rescaled(stack: npt.NDArray[Any], frames: Sequence[Frame]) -> npt.NDArray[Any]:
    """Apply Rescale Slope/Intercept, keeping integers where the result is integral and fits."""
    slopes = np.array([f.slope for f in frames], dtype=np.float64)
    intercepts = np.array([f.intercept for f in frames], dtype=np.float64)
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        return stack
    uniform = np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0])
    integral = np.all(np.mod(slopes, 1) == 0) and np.all(np.mod(intercepts, 1) == 0)
    if uniform and integral and stack.dtype.kind in "iu":
        slope, intercept = slopes[0], intercepts[0]
        ends = (float(stack.min()) * slope + intercept, float(stack.max()) * slope + intercept)
        low, high = min(ends), max(ends)
        for candidate in (np.int16, np.int32):
            limits = np.iinfo(candidate)
            if limits.min <= low and high <= limits.max:
                result: npt.NDArray[Any] = stack if stack.dtype == candidate else stack.astype(candidate)
                if slope != 1.0:
                    np.multiply(result, candidate(slope), out=result)
                np.add(result, candidate(intercept), out=result)
                return result
    shape = (-1,) + (1,) * (stack.ndim - 1)
    real: npt.NDArray[np.float32] = stack.astype(np.float32)
    np.multiply(real, slopes.astype(np.float32).reshape(shape), out=real)
    np.add(real, intercepts.astype(np.float32).reshape(shape), out=real)
    return real


def read_stack(frames: Sequence[Frame], order: Sequence[int], workers: int | None = None) -> npt.NDArray[Any]:
    """Decode frames into one array indexed [i, j, k(, channel)] with the modality rescale applied.

    The result is a transposed view of a (k, j, i) buffer, so i varies fastest in memory, as in NIfTI.
    """
    by_file: dict[Path, list[tuple[int, Frame]]] = defaultdict(list)
    for k, index in enumerate(order):
        by_file[frames[index].path].append((k, frames[index]))
    frames_per_file: dict[Path, int] = defaultdict(int)
    for frame in frames:
        frames_per_file[frame.path] += 1
    first = frames[order[0]]
    samples = first.samples_per_pixel
    shape: tuple[int, ...] = (len(order), first.rows, first.columns) + ((samples,) if samples > 1 else ())
    dtypes = {stored_dtype(f) for f in frames}
    stack = np.empty(shape, dtype=np.result_type(*dtypes))

    def load(path: Path) -> None:
        members = by_file[path]
        first_k, frame = members[0]
        direct = (
            frames_per_file[path] == 1
            and (frame.rows, frame.columns) == shape[1:]
            and _native_direct(frame)
            and stored_dtype(frame) == stack.dtype
            and frame.transfer_syntax_uid != EXPLICIT_BIG
            and not (frame.pixel_representation == 1 and frame.bits_stored < frame.bits_allocated)
        )
        if direct:  # the file's bytes go straight into their slice of the stack
            _read_native(path, frame, 1, out=stack[first_k])
            return
        pixels = stored_frames(path, frame, frames_per_file[path])
        for k, frame in members:
            plane = pixels[frame.frame_index or 0]
            if plane.shape != shape[1:]:
                syntax = _syntax_name(frame.transfer_syntax_uid)
                raise PixelDecodeError(path, syntax, f"frame shape {plane.shape}, expected {shape[1:]}")
            stack[k] = plane

    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        warnings.simplefilter("ignore", UserWarning)  # pydicom's remarks on odd but decodable data
        list(pool.map(load, list(by_file)))
    ordered = [frames[i] for i in order]
    result = _rescaled(stack, ordered)
    return result.transpose(2, 1, 0, 3) if result.ndim == 4 else result.transpose(2, 1, 0)
