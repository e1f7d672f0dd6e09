"""Reader annotations of lung nodules: LIDC-IDRI XML (per-reader contours) and LUNA16-style CSV (world mm, LPS)."""

from vesalius.io.annotations.lidc import LidcRead, SeriesGeometry, measure_nodule, read_lidc_xml
from vesalius.io.annotations.luna import (
    LunaAnnotation,
    LunaCandidate,
    read_annotations,
    read_candidates,
    write_annotations,
    write_candidates,
)

__all__ = [
    "LidcRead",
    "LunaAnnotation",
    "LunaCandidate",
    "SeriesGeometry",
    "measure_nodule",
    "read_annotations",
    "read_candidates",
    "read_lidc_xml",
    "write_annotations",
    "write_candidates",
]
