"""DICOM specifics: discovery, geometry, pixel decoding, series reading."""

from vesalius.io.dicom.discover import ScanReport, SeriesInfo, SkippedFile, StudyInfo, scan
from vesalius.io.dicom.geometry import GeometryProblem, StackGeometry, stack_geometry
from vesalius.io.dicom.series import read_series, select_series, volume_from_series

__all__ = [
    "GeometryProblem",
    "ScanReport",
    "SeriesInfo",
    "SkippedFile",
    "StackGeometry",
    "StudyInfo",
    "read_series",
    "scan",
    "select_series",
    "stack_geometry",
    "volume_from_series",
]
