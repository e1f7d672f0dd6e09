"""Types every layer shares: the volume, errors, configuration."""

from vesalius.core.errors import (
    InputError,
    NoDicomFoundError,
    NotDicomError,
    PixelDecodeError,
    SeriesGeometryError,
    SeriesSelectionError,
    TransformError,
    UnsupportedFormatError,
    VesaliusError,
)
from vesalius.core.volume import LPS_TO_RAS, AppliedTransform, DicomIdentity, Volume, make_affine

__all__ = [
    "LPS_TO_RAS",
    "AppliedTransform",
    "DicomIdentity",
    "InputError",
    "NoDicomFoundError",
    "NotDicomError",
    "PixelDecodeError",
    "SeriesGeometryError",
    "SeriesSelectionError",
    "TransformError",
    "UnsupportedFormatError",
    "VesaliusError",
    "Volume",
    "make_affine",
]
