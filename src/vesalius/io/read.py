"""One entry point for every supported image: a DICOM file or folder, NIfTI, NRRD or MetaImage."""

from __future__ import annotations

from pathlib import Path

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.io.dicom.series import TiltPolicy, read_series
from vesalius.io.itk import is_itk_image, read_itk_image
from vesalius.io.nifti import is_nifti, read_nifti


def read_volume(path: Path | str, series_uid: str | None = None, on_tilt: TiltPolicy = "resample") -> Volume:
    """Read the image at ``path``; the format follows the file name, anything else is tried as DICOM."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_file() and is_nifti(source):
        return read_nifti(source)
    if source.is_file() and is_itk_image(source):
        return read_itk_image(source)
    return read_series(source, series_uid=series_uid, on_tilt=on_tilt)
