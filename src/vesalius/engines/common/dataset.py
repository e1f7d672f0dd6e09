"""A training dataset in the Medical Segmentation Decathlon layout, read into typed cases and validated.

The layout: ``dataset.json`` (``modality``, ``labels``, ``training``) next to ``imagesTr/`` and ``labelsTr/``.
An image is a NIfTI/NRRD/MHA file or a folder holding one DICOM series (``"image": "./imagesTr/case_1"``);
labels are NIfTI/NRRD/MHA files on the image's grid (for a DICOM series, the grid ``read_volume`` returns).
Multi-channel images are either one 4-D file with channels last (MSD) or one file per channel named
``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``... (nnU-Net's split). Every problem names the file at fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import DatasetError, GridMismatchError, InputError, LabelValueError
from vesalius.core.volume import Volume
from vesalius.io import read_volume

DATASET_JSON = "dataset.json"
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_GRID_ATOL_MM = 1e-3
"""Image and label affines may differ by rounding in the writer; a thousandth of a millimetre is still one grid."""


@dataclass(frozen=True)
class Case:
    """One training case: its image file(s), holding all channels between them, and its label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass(frozen=True)
class SegmentationDataset:
    """What dataset.json declares, with file paths resolved and checked to exist."""

    name: str
    root: Path
    modalities: tuple[str, ...]
    """One entry per input channel, e.g. ("MRI",) or ("FLAIR", "T1w", "t1gd", "T2w")."""
    labels: dict[int, str]
    cases: tuple[Case, ...]

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        """Classes the network predicts, background included."""
        return len(self.labels)


@dataclass(frozen=True)
class LoadedCase:
    """A case's voxels: ``image`` is (i, j, k, channel) float32, ``label`` (i, j, k) int16, on one grid."""

    case: Case
    image: Volume
    label: Volume


def case_id_of(path: Path) -> str:
    """The case identifier is the file name without its image suffix (``hippocampus_001``)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _load_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise DatasetError(
            f"{file}: no {DATASET_JSON}; a dataset needs the Medical Segmentation Decathlon layout "
            "(dataset.json with 'modality', 'labels' and 'training', imagesTr/, labelsTr/)"
        )
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{file}: expected a JSON object at the top level, found {type(content).__name__}")
    for key in ("modality", "labels", "training"):
        if key not in content:
            raise DatasetError(f"{file}: missing the key '{key}'")
    return content


def _int_keyed(file: Path, key: str, mapping: Any) -> dict[int, str]:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{file}: '{key}' must be a non-empty object such as {{\"0\": ...}}, found {mapping!r}")
    try:
        parsed = {int(k): str(v) for k, v in mapping.items()}
    except ValueError as error:
        raise DatasetError(f"{file}: '{key}' keys must be integers, found {sorted(mapping)}") from error
    if sorted(parsed) != list(range(len(parsed))):
        raise DatasetError(f"{file}: '{key}' keys must run 0, 1, 2... without gaps, found {sorted(parsed)}")
    return parsed


def _image_files(root: Path, listed: Path, num_channels: int) -> tuple[Path, ...] | None:
    """The listed file or DICOM series folder, else nnU-Net's per-channel files ``<case>_0000...``; None when
    neither exists."""
    if listed.is_file() or listed.is_dir():
        return (listed,)
    stem = case_id_of(listed)
    suffix = listed.name[len(stem) :]
    split = tuple(listed.with_name(f"{stem}_{c:04d}{suffix}") for c in range(num_channels))
    return split if all(p.is_file() for p in split) else None


def read_msd_dataset(folder: Path | str) -> SegmentationDataset:
    """Read dataset.json and check that every listed image and label file exists (voxels are read later)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    file = root / DATASET_JSON
    content = _load_json(file)
    modality = _int_keyed(file, "modality", content["modality"])
    labels = _int_keyed(file, "labels", content["labels"])
    training = content["training"]
    if not isinstance(training, list) or not training:
        raise DatasetError(f"{file}: 'training' must be a non-empty list of {{'image', 'label'}} entries")
    modalities = tuple(modality[c] for c in range(len(modality)))
    cases: list[Case] = []
    missing: list[str] = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{file}: training entry {index} needs 'image' and 'label', found {entry!r}")
        listed_image = (root / str(entry["image"])).resolve()
        label = (root / str(entry["label"])).resolve()
        case_id = case_id_of(listed_image)
        images = _image_files(root, listed_image, len(modalities))
        if images is None:
            missing.append(f"case {case_id}: image file {listed_image} is missing")
        if not label.is_file():
            missing.append(f"case {case_id}: label file {label} is missing")
        if images is not None:
            cases.append(Case(case_id=case_id, images=images, label=label))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(f"{file}: " + "; ".join(missing[:5]) + more)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"{file}: case ids listed more than once: {duplicated[:5]}")
    name = str(content.get("name") or root.name)
    return SegmentationDataset(name=name, root=root, modalities=modalities, labels=labels, cases=tuple(cases))


def _describe_grid(volume: Volume) -> str:
    spacing = ", ".join(f"{s:.4g}" for s in volume.spacing)
    origin = ", ".join(f"{s:.4g}" for s in volume.origin)
    return f"shape {volume.shape}, spacing ({spacing}) mm, origin ({origin})"


def _check_grid(reference: Volume, other: Volume, case: Case, other_path: Path) -> None:
    if not reference.same_grid(other, atol=_GRID_ATOL_MM):
        raise GridMismatchError(
            f"case {case.case_id}: {other_path} does not lie on the grid of {case.images[0]}: "
            f"expected {_describe_grid(reference)}, found {_describe_grid(other)}"
        )


def _read(path: Path) -> Volume:
    try:
        return read_volume(path)
    except InputError as error:
        raise DatasetError(str(error)) from error


def load_case(dataset: SegmentationDataset, case: Case) -> LoadedCase:
    """Read a case's voxels and validate them: channel count, one grid, integer labels declared in labels."""
    parts = [_read(p) for p in case.images]
    first = parts[0]
    channels: list[npt.NDArray[np.float32]] = []
    for path, part in zip(case.images, parts, strict=True):
        _check_grid(first, part, case, path)
        array = part.array.astype(np.float32, copy=False)
        channels.extend([array] if array.ndim == 3 else [array[..., c] for c in range(array.shape[3])])
    if len(channels) != dataset.num_channels:
        raise DatasetError(
            f"case {case.case_id}: {', '.join(str(p) for p in case.images)} hold {len(channels)} channel(s), "
            f"dataset.json's 'modality' declares {dataset.num_channels}"
        )
    label = _read(case.label)
    if label.array.ndim != 3:
        raise DatasetError(f"case {case.case_id}: label {case.label} must be 3-D, found shape {label.array.shape}")
    _check_grid(first, label, case, case.label)
    values = np.unique(label.array)
    if not np.array_equal(values, np.round(values)):
        raise LabelValueError(f"case {case.case_id}: label {case.label} holds non-integer values {values[:5]}")
    undeclared = sorted(set(int(v) for v in values) - set(dataset.labels))
    if undeclared:
        raise LabelValueError(
            f"case {case.case_id}: label {case.label} holds value(s) {undeclared} that dataset.json's 'labels' "
            f"does not declare (declared: {sorted(dataset.labels)})"
        )
    image = first.evolve(array=np.stack(channels, axis=-1), modality=dataset.modalities[0])
    return LoadedCase(case=case, image=image, label=label.evolve(array=label.array.astype(np.int16)))
