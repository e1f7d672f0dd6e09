"""Reading images into Volumes and writing them out; DICOM specifics live in vesalius.io.dicom."""

from vesalius.io.nifti import read_nifti, write_nifti
from vesalius.io.read import read_volume

__all__ = ["read_nifti", "read_volume", "write_nifti"]
