"""Lossless conversion between Volume and the field's other image types.

SimpleITK images (LPS, arrays [k, j, i]), nibabel images (RAS affine, arrays [i, j, k]) and MONAI
MetaTensors (channel first, RAS affine in ``meta``). Each conversion keeps voxels bit-for-bit and the
geometry exactly; heavy libraries are imported only when a conversion is asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vesalius.core.errors import InputError
from vesalius.core.volume import LPS_TO_RAS, DicomIdentity, Volume

_IDENTITY_KEY = "vesalius_identity"


def _is_orthogonal(direction: np.ndarray[Any, Any]) -> bool:
    return bool(np.allclose(direction.T @ direction, np.eye(3), atol=1e-6))


def to_sitk(volume: Volume) -> Any:
    """A SimpleITK image with the same voxels, spacing, origin and direction."""
    import SimpleITK as sitk

    direction = volume.direction
    if not _is_orthogonal(direction):
        raise InputError("this volume's grid is sheared; SimpleITK images need orthogonal axes")
    vector = volume.array.ndim == 4
    array = np.ascontiguousarray(volume.array.transpose(2, 1, 0, 3) if vector else volume.array.transpose(2, 1, 0))
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in direction.flatten()])
    return image


def from_sitk(image: Any, **fields: Any) -> Volume:
    """A Volume from a 2-D or 3-D SimpleITK image (2-D becomes one slice)."""
    import SimpleITK as sitk

    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    array = sitk.GetArrayFromImage(image)
    array = array.transpose(2, 1, 0, 3) if image.GetNumberOfComponentsPerPixel() > 1 else array.transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return Volume.from_geometry(array, image.GetSpacing(), image.GetOrigin(), direction, **fields)


def to_nibabel(volume: Volume) -> Any:
    import nibabel as nib

    image = nib.Nifti1Image(volume.array, volume.ras_affine)
    image.set_sform(volume.ras_affine, code=1)
    image.set_qform(volume.ras_affine, code=1)
    return image


def from_nibabel(image: Any, **fields: Any) -> Volume:
    array = np.asanyarray(image.dataobj)
    if array.ndim == 2:
        array = array[:, :, None]
    return Volume(array=array, affine=LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64), **fields)


def to_tensor(volume: Volume) -> Any:
    """A channel-first MONAI MetaTensor whose ``affine`` is RAS, as MONAI's transforms expect."""
    import torch
    from monai.data.meta_tensor import MetaTensor

    array = volume.array[None] if volume.array.ndim == 3 else np.moveaxis(volume.array, 3, 0)
    data = torch.from_numpy(np.ascontiguousarray(array))
    meta: dict[str, Any] = {
        "space": "RAS",
        "modality": volume.modality,
        _IDENTITY_KEY: dataclasses.asdict(volume.identity),
        "filename_or_obj": str(volume.metadata.get("source", "")),
    }
    return MetaTensor(data, affine=torch.as_tensor(volume.ras_affine, dtype=torch.float64), meta=meta)


def _identity_from_meta(fields: dict[str, Any]) -> DicomIdentity:
    uids = tuple(str(u) for u in fields.get("sop_instance_uids", ()))
    names = ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid", "sop_class_uid")
    values = {name: (None if fields.get(name) is None else str(fields[name])) for name in names}
    return DicomIdentity(sop_instance_uids=uids, **values)


def from_tensor(tensor: Any, reference: Volume | None = None) -> Volume:
    """A Volume from a channel-first tensor: geometry from its MetaTensor affine, else from ``reference``."""
    meta = getattr(tensor, "meta", {}) or {}
    data = tensor.detach().cpu()
    data = data.as_tensor() if hasattr(data, "as_tensor") else data
    array = data.numpy()
    if array.ndim != 4:
        raise InputError(f"expected a channel-first (C, i, j, k) tensor, got shape {tuple(array.shape)}")
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, 3)
    if hasattr(tensor, "affine") and tensor.affine is not None and "affine" in meta:
        affine = np.asarray(tensor.affine.detach().cpu().numpy(), dtype=np.float64)
        if str(meta.get("space", "RAS")).upper() == "RAS":
            affine = LPS_TO_RAS @ affine
        identity = _identity_from_meta(meta.get(_IDENTITY_KEY) or {})
        return Volume(array=array, affine=affine, modality=meta.get("modality"), identity=identity)
    if reference is None:
        raise InputError("a plain tensor carries no geometry: pass the reference volume it was computed from")
    return reference.with_array(array, history=reference.history)
