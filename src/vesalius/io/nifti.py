"""NIfTI (.nii, .nii.gz) reading and writing with nibabel; the affine is converted between RAS and LPS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vesalius.core.errors import InputError
from vesalius.core.volume import LPS_TO_RAS, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path | str) -> Volume:
    """A NIfTI image as a Volume; the sform is used when set, else the qform (nibabel's choice)."""
    import nibabel as nib  # imported on use: it costs a fifth of a second at start-up

    file = Path(path)
    try:
        image: Any = nib.load(file)
        array = np.asanyarray(image.dataobj)
    except Exception as error:
        raise InputError(f"{file}: not a readable NIfTI file ({error})") from error
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim > 4 or (array.ndim == 4 and array.shape[3] > 4):
        raise InputError(f"{file}: {array.ndim}-D image with shape {array.shape}; Vesalius reads 3-D volumes")
    affine = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
    return Volume(array=array, affine=affine, metadata={"source": str(file)})


def write_nifti(volume: Volume, path: Path | str) -> Path:
    """Write voxels and geometry; sform and qform both carry the affine (code 1, scanner anatomical)."""
    import nibabel as nib

    file = Path(path)
    if not is_nifti(file):
        raise InputError(f"{file}: a NIfTI output name must end in .nii or .nii.gz")
    file.parent.mkdir(parents=True, exist_ok=True)
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, volume.ras_affine)
    image.set_sform(volume.ras_affine, code=1)
    image.set_qform(volume.ras_affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, file)
    return file
