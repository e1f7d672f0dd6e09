"""Classification datasets: class folders, a CSV, MedMNIST .npz files; images are PNG, JPEG, DICOM or volumes.

All readers give one ``ClassificationDataset``: items with an id, where the pixels are, the label (a class
index; for multi-label a 0/1 tuple), extra targets for multi-task heads, a patient id (so cross-validation
never puts one patient on both sides) and, where the source says so, the split it came from. Pixels are read
later, one item at a time, by ``load_image``; every problem names the file (and the CSV line) at fault.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from vesalius.core.errors import DatasetError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")

__all__ = [
    "ClassificationDataset",
    "ImageSource",
    "Item",
    "is_image_file",
    "load_image",
    "read_class_folders",
    "read_classification_dataset",
    "read_csv_dataset",
    "read_medmnist",
    "resize",
]


@dataclass(frozen=True)
class ImageSource:
    """A file, or one image of an array inside a .npz file."""

    path: Path
    array: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        """How predictions.csv names the input: the path, or ``path:array:index`` inside a .npz."""
        return f"{self.path}:{self.array}:{self.index}" if self.array is not None else str(self.path)


@dataclass(frozen=True)
class Item:
    item_id: str
    source: ImageSource
    label: int | tuple[int, ...]
    patient_id: str
    extra: dict[str, int] = field(default_factory=dict)
    split: str | None = None


@dataclass(frozen=True)
class ClassificationDataset:
    name: str
    class_names: list[str]
    items: list[Item]
    multilabel: bool = False
    extra_targets: dict[str, list[str]] = field(default_factory=dict)

    def class_counts(self) -> list[int]:
        """Items per class (multi-label: positives per label)."""
        labels = self.labels()
        if self.multilabel:
            return [int(v) for v in labels.sum(axis=0)]
        counts = Counter(int(v) for v in labels)
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def labels(self) -> npt.NDArray[np.int64]:
        return np.asarray([item.label for item in self.items], dtype=np.int64)


def is_image_file(path: Path) -> bool:
    """PNG, JPEG, DICOM with a suffix, or a volume file; hidden files are not."""
    name = path.name.lower()
    return not name.startswith(".") and (name.endswith(IMAGE_SUFFIXES) or name.endswith(VOLUME_SUFFIXES))


def read_class_folders(root: Path | str, patient_pattern: str | None = None) -> ClassificationDataset:
    """One sub-folder per class (sorted names give the class order), images at any depth below it.

    ``patient_pattern``: a regular expression with a named group ``patient`` found in each file name, e.g.
    ``(?P<patient>person\\d+|IM-\\d+)`` for the pediatric pneumonia set; without it each image is its own patient.
    """
    folder = Path(root)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder}: no class sub-folders (expected one folder of images per class)")
    pattern = re.compile(patient_pattern) if patient_pattern else None
    items: list[Item] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise DatasetError(f"{folder / name}: class folder holds no PNG, JPEG, DICOM or volume files")
        for file in files:
            patient = file.stem
            if pattern is not None:
                match = pattern.search(file.name)
                if match is None:
                    raise DatasetError(f"{file}: file name does not match the patient pattern {patient_pattern!r}")
                patient = match.group("patient")
            item_id = str(file.relative_to(folder))
            items.append(Item(item_id=item_id, source=ImageSource(file), label=index, patient_id=patient))
    return ClassificationDataset(name=folder.name, class_names=classes, items=items)


def _label_index(value: str, names: list[str], where: str) -> int:
    if value in names:
        return names.index(value)
    raise DatasetError(f"{where}: unknown label {value!r}; known: {', '.join(names)}")


def _sorted_names(values: set[str]) -> list[str]:
    return sorted(values, key=int) if all(v.lstrip("-").isdigit() for v in values) else sorted(values)


def read_csv_dataset(file: Path | str, class_names: list[str] | None = None) -> ClassificationDataset:
    """Columns ``path,label`` (paths relative to the CSV), optional ``patient_id`` and ``split``; every other
    column is an extra target (multi-task). Labels are names or integers."""
    source = Path(file)
    try:
        with source.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{source}: cannot read the CSV ({error})") from error
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{source}: needs a header with the columns 'path' and 'label' and at least one row")
    extra_columns = [c for c in rows[0] if c not in ("path", "label", "patient_id", "split")]
    names = class_names or _sorted_names({row["label"] for row in rows})
    extra_names = {c: _sorted_names({row[c] for row in rows if row[c] != ""}) for c in extra_columns}
    items = []
    for line, row in enumerate(rows, start=2):
        where = f"{source} line {line}"
        path = (source.parent / row["path"]).resolve()
        if not path.exists():
            raise DatasetError(f"{where}: image {path} does not exist")
        extra = {c: _label_index(row[c], extra_names[c], f"{where}, column {c}") for c in extra_columns if row[c]}
        items.append(
            Item(
                item_id=row["path"],
                source=ImageSource(path),
                label=_label_index(row["label"], names, where),
                patient_id=row.get("patient_id") or row["path"],
                extra=extra,
                split=row.get("split") or None,
            )
        )
    return ClassificationDataset(name=source.stem, class_names=names, items=items, extra_targets=extra_names)


def read_medmnist(file: Path | str, class_names: list[str] | None = None) -> ClassificationDataset:
    """A MedMNIST ``.npz`` (``<split>_images``, ``<split>_labels``): every split present, in order."""
    source = Path(file)
    try:
        archive = np.load(source)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{source}: not a readable .npz file ({error})") from error
    splits = [key.removesuffix("_images") for key in archive.files if key.endswith("_images")]
    if not splits:
        raise DatasetError(f"{source}: no '<split>_images' arrays; found {archive.files}")
    items: list[Item] = []
    multilabel, largest = False, 0
    for split in splits:
        if f"{split}_labels" not in archive.files:
            raise DatasetError(f"{source}: '{split}_images' has no '{split}_labels'")
        labels = np.asarray(archive[f"{split}_labels"])
        labels = labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels
        multilabel = multilabel or labels.ndim == 2
        largest = max(largest, int(labels.shape[1] if labels.ndim == 2 else labels.max() + 1))
        for index, label in enumerate(labels):
            value: int | tuple[int, ...] = tuple(int(v) for v in label) if labels.ndim == 2 else int(label)
            item_id = f"{split}_{index}"
            source_ = ImageSource(source, f"{split}_images", index)
            items.append(Item(item_id=item_id, source=source_, label=value, patient_id=item_id, split=split))
    names = class_names or [str(c) for c in range(max(largest, 2))]
    return ClassificationDataset(name=source.stem, class_names=names, items=items, multilabel=multilabel)


def read_classification_dataset(path: Path | str, **options: Any) -> ClassificationDataset:
    """Class folders (a directory), a CSV, or a MedMNIST .npz, chosen by what ``path`` is."""
    source = Path(path)
    if source.is_dir():
        return read_class_folders(source, **options)
    if source.suffix.lower() == ".csv":
        return read_csv_dataset(source, **options)
    if source.suffix.lower() == ".npz":
        return read_medmnist(source, **options)
    raise DatasetError(f"{source}: expected a folder of class folders, a .csv or a MedMNIST .npz")


@lru_cache(maxsize=4)
def _archive(path: Path) -> dict[str, npt.NDArray[Any]]:
    with np.load(path) as archive:
        return {key: archive[key] for key in archive.files}


def _read_dicom(path: Path) -> npt.NDArray[np.float32]:
    import pydicom
    from pydicom.pixels.processing import apply_modality_lut

    try:
        dataset = pydicom.dcmread(path)
        pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    except Exception as error:  # pydicom raises many types for broken files
        raise InputError(f"{path}: cannot read the DICOM image ({error})") from error
    if str(getattr(dataset, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels  # bright means dense in MONOCHROME2
    if pixels.ndim == 3 and getattr(dataset, "SamplesPerPixel", 1) == 3:
        return np.moveaxis(pixels, -1, 0)
    return pixels[None]


def load_image(source: ImageSource) -> npt.NDArray[np.float32]:
    """The pixels, channel-first float32: (C, H, W) for images, (1, D, H, W) for volumes."""
    if source.array is not None and source.index is not None:
        pixels = np.asarray(_archive(source.path)[source.array][source.index], dtype=np.float32)
        return np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 and pixels.shape[-1] == 3 else pixels[None]
    name = source.path.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source.path) as image:
                rgb = image.mode in ("RGB", "RGBA", "P")
                array = np.asarray(image.convert("RGB" if rgb else "L"), dtype=np.float32)
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(f"{source.path}: cannot read the image ({error})") from error
        return np.moveaxis(array, -1, 0) if array.ndim == 3 else array[None]
    if name.endswith(VOLUME_SUFFIXES) or source.path.is_dir():
        from vesalius.io import read_volume

        return np.asarray(read_volume(source.path).array, dtype=np.float32)[None]
    return _read_dicom(source.path)


def resize(array: npt.NDArray[np.float32], size: list[int] | tuple[int, ...]) -> npt.NDArray[np.float32]:
    """Linear resampling of every channel to exactly ``size`` (the spatial shape the network takes)."""
    spatial = array.shape[1:]
    if len(spatial) != len(size):
        raise InputError(f"cannot resize an image of shape {spatial} to {list(size)}")
    if tuple(spatial) == tuple(size):
        return array
    factors = [t / s for t, s in zip(size, spatial, strict=True)]
    out = np.stack([ndimage.zoom(channel, factors, order=1, grid_mode=True, mode="nearest") for channel in array])
    return out.astype(np.float32, copy=False)
