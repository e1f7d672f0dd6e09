"""Lung-nodule detection: the LUNA16 reference standard built from LIDC reader marks (the detector to follow)."""

from vesalius.engines.detection.reference import (
    IrrelevantFinding,
    Nodule,
    ReferenceStandard,
    reference_standard,
    to_luna_annotations,
)

__all__ = ["IrrelevantFinding", "Nodule", "ReferenceStandard", "reference_standard", "to_luna_annotations"]
