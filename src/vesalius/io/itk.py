"""NRRD and MetaImage (.nrrd, .nhdr, .mha, .mhd) through SimpleITK, which already speaks LPS."""

from __future__ import annotations

from pathlib import Path

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.io.interop import from_sitk

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk_image(path: Path) -> bool:
    return path.name.lower().endswith(ITK_SUFFIXES)


def read_itk_image(path: Path | str) -> Volume:
    file = Path(path)
    try:
        import SimpleITK as sitk
    except ImportError as error:
        raise InputError(f"{file}: reading NRRD/MetaImage needs SimpleITK: pip install 'vesalius[itk]'") from error
    try:
        image = sitk.ReadImage(str(file))
    except RuntimeError as error:
        raise InputError(f"{file}: not a readable image ({str(error).strip().splitlines()[-1]})") from error
    volume = from_sitk(image)
    return volume.evolve(metadata={**volume.metadata, "source": str(file)})
