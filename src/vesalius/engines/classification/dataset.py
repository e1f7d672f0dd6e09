"""Classification datasets: class folders, a CSV or a MedMNIST ``.npz``, read into one typed, frozen description.

Every reader gives a ``ClassificationDataset``: items with a unique id, where the pixels are (a file, a DICOM
series folder, or one image of an array in a ``.npz``), the label (a class index; for ordinal tasks the grade's
index; for multi-label MedMNIST a 0/1 tuple), extra targets for multi-task heads, a patient id (the item id
when the source names none) so cross-validation never puts one patient on both sides, and the split the
source assigns, if any. The dataset knows its class names, whether it is 2-D or 3-D and the task kind it
suggests. Pixels are read later, one item at a time, by ``images.load_image``; every problem names the file (and the
CSV line) at fault.

Items marked ``test`` are never used for training or model selection: ``make_folds`` leaves them out, and
``official_split`` returns only the source's own ``train``/``val`` sets.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import DatasetError
from vesalius.engines.common.cv import CrossValidationSplit, load_or_make_split

TaskKind = Literal["binary", "multiclass", "ordinal", "multilabel"]
"""The same values as ``vesalius.engines.classification.plan.TaskKind``."""
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
"""ITU-R 601 weights: what Pillow's ``convert("L")`` uses."""

__all__ = [
    "ClassificationDataset",
    "ImageSource",
    "Item",
    "TaskKind",
    "is_image_file",
    "make_folds",
    "official_split",
    "read_class_folders",
    "read_classification_dataset",
    "read_csv_dataset",
    "read_medmnist",
    "stratum",
]


@dataclass(frozen=True)
class ImageSource:
    """A file or DICOM series folder, or image ``index`` of the array ``array`` inside a ``.npz`` file."""

    path: Path
    array: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        """How predictions.csv names the input: the path, or ``path:array:index`` inside a .npz."""
        return f"{self.path}:{self.array}:{self.index}" if self.array is not None else str(self.path)


@dataclass(frozen=True)
class Item:
    """One labelled image; ``patient_id`` defaults to ``item_id`` (each image its own patient)."""

    item_id: str
    source: ImageSource
    label: int | tuple[int, ...]
    patient_id: str = ""
    extra: Mapping[str, int] = field(default_factory=dict)
    split: Split | None = None

    def __post_init__(self) -> None:
        if not self.patient_id:
            object.__setattr__(self, "patient_id", self.item_id)


@dataclass(frozen=True)
class ClassificationDataset:
    """What a source holds, checked when built: unique ids, labels and extra targets within their classes."""

    name: str
    source: Path
    """The class-folder root, the CSV or the .npz that was read."""
    class_names: tuple[str, ...]
    items: tuple[Item, ...]
    dims: Literal[2, 3]
    kind: TaskKind
    """The task the labels suggest (multilabel, binary for two classes, else multiclass) unless a reader was told."""
    extra_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Multi-task heads: column name -> class names; ``Item.extra`` holds indices into them."""
    skipped: int = 0
    """Files passed over while reading class folders: hidden files and files that are not images."""

    def __post_init__(self) -> None:
        where = str(self.source)
        if not self.items:
            raise DatasetError(f"{where}: the dataset holds no items")
        ids = Counter(item.item_id for item in self.items)
        if repeated := sorted(i for i, n in ids.items() if n > 1):
            raise DatasetError(f"{where}: item ids listed more than once: {repeated[:5]}")
        _check_kind(where, self.kind, self.class_names, self.items)
        for item in self.items:
            for name, value in item.extra.items():
                if name not in self.extra_targets or not 0 <= value < len(self.extra_targets[name]):
                    raise DatasetError(f"{where}: item {item.item_id}: extra target {name}={value} is undeclared")

    @property
    def multilabel(self) -> bool:
        return self.kind == "multilabel"

    def class_counts(self) -> list[int]:
        """Items per class (multi-label: positives per label)."""
        labels = self.labels()
        if self.multilabel:
            return [int(v) for v in labels.sum(axis=0)]
        counts = Counter(int(v) for v in labels)
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def labels(self) -> npt.NDArray[np.int64]:
        """(N,) class indices, or (N, L) 0/1 for multi-label."""
        return np.asarray([item.label for item in self.items], dtype=np.int64)


# a class-folder dataset in a folder named like a split takes its parent's name (cxr-pneumonia/train)
_SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "validation", "test", "images", "data"})


def _check_kind(where: str, kind: TaskKind, class_names: Sequence[str], items: Iterable[Item]) -> None:
    n = len(class_names)
    if kind not in get_args(TaskKind):
        raise DatasetError(f"{where}: unknown task kind {kind!r}; expected one of {', '.join(get_args(TaskKind))}")
    if len(set(class_names)) != n or n < 2:
        raise DatasetError(f"{where}: needs at least two distinct class names, found {list(class_names)}")
    if kind == "binary" and n != 2:
        raise DatasetError(f"{where}: a binary task needs two classes, found {n}: {', '.join(class_names)}")
    for item in items:
        label = item.label
        if kind == "multilabel":
            if not isinstance(label, tuple) or len(label) != n or not set(label) <= {0, 1}:
                raise DatasetError(f"{where}: item {item.item_id}: a multi-label label is {n} values 0/1, not {label}")
        elif not isinstance(label, int) or not 0 <= label < n:
            raise DatasetError(f"{where}: item {item.item_id}: label {label} is not a class index 0..{n - 1}")


def _suggest_kind(class_names: Sequence[str], multilabel: bool) -> TaskKind:
    return "multilabel" if multilabel else "binary" if len(class_names) == 2 else "multiclass"


def is_image_file(path: Path) -> bool:
    """PNG, JPEG, DICOM with a ``.dcm``/``.dicom`` suffix, or a volume file; hidden files are not."""
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES)


def _dims_of(path: Path) -> Literal[2, 3]:
    """Volume files and DICOM series folders are 3-D; PNG, JPEG and DICOM files are 2-D images."""
    return 3 if path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES) else 2


def _common_dims(where: Path | str, items: Sequence[Item]) -> Literal[2, 3]:
    first: dict[int, Item] = {}
    for item in items:
        first.setdefault(_dims_of(item.source.path), item)
    if len(first) > 1:
        raise DatasetError(f"{where}: mixes 2-D images ({first[2].source}) and 3-D volumes ({first[3].source})")
    return 3 if 3 in first else 2


# -------------------------------------------------------------------------------------------------- class folders


def _patient_regex(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise DatasetError(f"patient pattern {pattern!r} is not a regular expression ({error})") from error
    if "patient" not in compiled.groupindex:
        raise DatasetError(f"patient pattern {pattern!r} needs a named group, e.g. (?P<patient>person\\d+)")
    return compiled


def _images_below(folder: Path) -> tuple[list[Path], int]:
    """Image files at any depth below ``folder`` (sorted), and how many other files were passed over."""
    images, other = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if not hidden and is_image_file(path):
            images.append(path)
        else:
            other += 1
    return images, other


def read_class_folders(
    root: Path | str, patient_pattern: str | None = None, *, kind: TaskKind | None = None
) -> ClassificationDataset:
    """One sub-folder per class; the sorted folder names give the class order; images at any depth below.

    Hidden files and folders and files that are not images are skipped and counted (``skipped``); a class
    folder without images is an error. ``patient_pattern`` is a regular expression with a named group
    ``patient``, searched in each image's path below its class folder (so a patient sub-folder works too),
    e.g. ``(?P<patient>person\\d+)_`` for ``person12_bacteria_51.jpeg``; without it each image is its own patient.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder of class folders")
    pattern = _patient_regex(patient_pattern)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder}: no class sub-folders (expected one folder of images per class)")
    items: list[Item] = []
    skipped = sum(1 for p in folder.iterdir() if p.is_file())
    for label, name in enumerate(classes):
        files, other = _images_below(folder / name)
        skipped += other
        if not files:
            passed = f" ({other} other files skipped)" if other else ""
            raise DatasetError(f"{folder / name}: class folder holds no PNG, JPEG, DICOM or volume files{passed}")
        for file in files:
            item_id = file.relative_to(folder).as_posix()
            patient = ""
            if pattern is not None:
                match = pattern.search(file.relative_to(folder / name).as_posix())
                if match is None or not match.group("patient"):
                    raise DatasetError(f"{file}: file name does not match the patient pattern {patient_pattern!r}")
                patient = match.group("patient")
            items.append(Item(item_id=item_id, source=ImageSource(file), label=label, patient_id=patient))
    return ClassificationDataset(
        name=folder.parent.name if folder.name.lower() in _SPLIT_FOLDER_NAMES else folder.name,
        source=folder,
        class_names=tuple(classes),
        items=tuple(items),
        dims=_common_dims(folder, items),
        kind=kind or _suggest_kind(classes, multilabel=False),
        skipped=skipped,
    )


# -------------------------------------------------------------------------------------------------- CSV


def _is_int(value: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", value) is not None


def _sorted_names(values: Iterable[str]) -> tuple[str, ...]:
    """Unique values sorted; integers numerically (2 before 10)."""
    unique = set(values)
    return tuple(sorted(unique, key=int) if all(_is_int(v) for v in unique) else sorted(unique))


def _label_index(value: str, names: Sequence[str], by_index: bool, where: str) -> int:
    if value == "":
        raise DatasetError(f"{where}: empty label")
    if by_index:
        if 0 <= int(value) < len(names):
            return int(value)
        raise DatasetError(f"{where}: label {value} is not a class index 0..{len(names) - 1} ({', '.join(names)})")
    if value in names:
        return list(names).index(value)
    raise DatasetError(f"{where}: unknown label {value!r}; known: {', '.join(names)}")


def _read_csv(source: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and each non-blank row with its line number; fields stripped."""
    if not source.is_file():
        raise DatasetError(f"{source}: no such CSV file")
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                if header is None:
                    header = [f.strip() for f in fields]
                    continue
                if len(fields) != len(header):
                    raise DatasetError(
                        f"{source} line {reader.line_num}: {len(fields)} fields; the header has {len(header)}"
                    )
                rows.append((reader.line_num, dict(zip(header, (f.strip() for f in fields), strict=True))))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{source}: cannot read the CSV ({error})") from error
    if header is None or not {"path", "label"} <= set(header) or len(set(header)) != len(header):
        raise DatasetError(f"{source}: needs a header with distinct column names, 'path' and 'label' among them")
    if not rows:
        raise DatasetError(f"{source}: the CSV has a header but no rows")
    return header, rows


def _looks_readable(path: Path) -> bool:
    """An image or volume suffix, a DICOM series folder, or a DICOM file without suffix (``DICM`` at byte 128)."""
    if path.is_dir() or path.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES):
        return True
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _csv_item(
    source: Path, line: int, row: dict[str, str], names: Sequence[str], by_index: bool, extra: Mapping[str, Any]
) -> Item:
    where = f"{source} line {line}"
    if not row["path"]:
        raise DatasetError(f"{where}: empty path")
    path = (source.parent / row["path"]).resolve()
    if not path.exists():
        raise DatasetError(f"{where}: image {path} does not exist")
    if not _looks_readable(path):
        raise DatasetError(f"{where}: {path} is not a PNG, JPEG, DICOM or NIfTI/NRRD/MHA file")
    split = row.get("split", "")
    if split and split not in SPLITS:
        raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    return Item(
        item_id=row["path"],
        source=ImageSource(path),
        label=_label_index(row["label"], names, by_index, where),
        patient_id=row.get("patient_id", ""),
        extra={c: _label_index(row[c], extra[c], False, f"{where}, column {c!r}") for c in extra if row[c]},
        split=split or None,  # checked against SPLITS above
    )


def read_csv_dataset(
    file: Path | str,
    class_names: Sequence[str] | None = None,
    *,
    extra_columns: Sequence[str] | None = None,
    kind: TaskKind | None = None,
) -> ClassificationDataset:
    """Columns ``path`` (relative to the CSV's folder, or absolute) and ``label``; optional ``patient_id`` and
    ``split`` (train, val or test). Every other column is an extra target (multi-task/multi-label: names or
    integers; an empty cell means unknown), or only ``extra_columns`` when given.

    Paths name PNG, JPEG or DICOM images (2-D) or NIfTI/NRRD/MHA volumes or DICOM series folders (3-D), not both.
    Labels are names or integers; the class order is ``class_names`` or the sorted labels (integers numerically,
    so grades keep their order). When ``class_names`` are given and every label is an integer that is not one
    of them, the integers are indices into ``class_names``.
    """
    source = Path(file)
    header, rows = _read_csv(source)
    reserved = ("path", "label", "patient_id", "split")
    columns = [c for c in header if c not in reserved] if extra_columns is None else list(extra_columns)
    if missing := [c for c in columns if c not in header or c in reserved]:
        raise DatasetError(f"{source}: extra target column(s) {missing} are not in the header {header}")
    labels = [row["label"] for _, row in rows]
    names = tuple(class_names) if class_names is not None else _sorted_names(v for v in labels if v)
    by_index = class_names is not None and all(_is_int(v) for v in labels) and not set(labels) & set(names)
    extra = {c: _sorted_names(row[c] for _, row in rows if row[c]) for c in columns}
    items: list[Item] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        if row["path"] in first_line:
            raise DatasetError(
                f"{source} line {line}: {row['path']} is listed again (first on line {first_line[row['path']]})"
            )
        first_line[row["path"]] = line
        items.append(_csv_item(source, line, row, names, by_index, extra))
    return ClassificationDataset(
        name=source.stem,
        source=source,
        class_names=names,
        items=tuple(items),
        dims=_common_dims(source, items),
        kind=kind or _suggest_kind(names, multilabel=False),
        extra_targets=extra,
    )


# -------------------------------------------------------------------------------------------------- MedMNIST


def _npz_shapes(source: Path) -> dict[str, tuple[int, ...]]:
    """Each array's shape, read from the .npy headers without loading (or decompressing) the arrays."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(source) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as handle:
                        version = np.lib.format.read_magic(handle)
                        if version == (1, 0):
                            shape = np.lib.format.read_array_header_1_0(handle)[0]
                        else:
                            shape = np.lib.format.read_array_header_2_0(handle)[0]
                    shapes[member.removesuffix(".npy")] = tuple(int(n) for n in shape)
    except FileNotFoundError as error:
        raise DatasetError(f"{source}: no such .npz file") from error
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DatasetError(f"{source}: not a readable .npz file ({error})") from error
    return shapes


def _npz_dims(source: Path, key: str, shape: tuple[int, ...]) -> Literal[2, 3]:
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] == 3):
        return 2
    if len(shape) == 4:
        return 3
    raise DatasetError(f"{source}: '{key}' has shape {shape}; expected (N, H, W), (N, H, W, 3) or (N, D, H, W)")


def _npz_labels(source: Path, split: str, count: int) -> npt.NDArray[np.int64]:
    """(N,) class indices or (N, L) 0/1 labels; (N, 1) is single-label."""
    with np.load(source) as archive:
        raw = np.asarray(archive[f"{split}_labels"])
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim not in (1, 2) or len(raw) != count:
        raise DatasetError(f"{source}: '{split}_labels' has shape {raw.shape}; expected ({count},) or ({count}, L)")
    labels = raw.astype(np.int64)
    if not np.array_equal(labels, raw) or labels.min(initial=0) < 0:
        raise DatasetError(f"{source}: '{split}_labels' must hold non-negative integers")
    return labels


def read_medmnist(
    file: Path | str, class_names: Sequence[str] | None = None, *, kind: TaskKind | None = None
) -> ClassificationDataset:
    """A MedMNIST ``.npz``: ``<split>_images`` with ``<split>_labels`` for each split present (train, val, test).

    Images are (N, H, W), (N, H, W, 3) or (N, D, H, W) for 3-D; labels (N,) or (N, 1) for one class index, or
    (N, L) of 0/1 for multi-label (a tuple label per item). Item ids are ``<split>_<index>``; each image is its
    own patient. Class names are "0".."K-1" unless given. Only label arrays are read here; images on demand.
    """
    source = Path(file)
    shapes = _npz_shapes(source)
    splits = [s for s in SPLITS if f"{s}_images" in shapes]
    if not splits:
        raise DatasetError(f"{source}: no 'train_images', 'val_images' or 'test_images' array; found {sorted(shapes)}")
    dims = {split: _npz_dims(source, f"{split}_images", shapes[f"{split}_images"]) for split in splits}
    if len(set(dims.values())) > 1:
        raise DatasetError(f"{source}: the splits mix 2-D and 3-D images: {', '.join(shapes)}")
    if absent := [s for s in splits if f"{s}_labels" not in shapes]:
        raise DatasetError(f"{source}: '{absent[0]}_images' has no '{absent[0]}_labels'")
    labels = {split: _npz_labels(source, split, shapes[f"{split}_images"][0]) for split in splits}
    widths = {array.shape[1] if array.ndim == 2 else 0 for array in labels.values()}
    if len(widths) > 1:
        raise DatasetError(f"{source}: the splits' labels differ in shape: {[a.shape for a in labels.values()]}")
    multilabel = widths != {0}
    count = widths.pop() if multilabel else max(int(a.max(initial=0)) + 1 for a in labels.values())
    names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(max(count, 2)))
    if (multilabel and len(names) != count) or len(names) < count:
        raise DatasetError(f"{source}: the labels need {count} class names, {len(names)} given: {list(names)}")
    items = [
        Item(
            item_id=f"{split}_{index}",
            source=ImageSource(source, f"{split}_images", index),
            label=tuple(int(v) for v in label) if multilabel else int(label),
            split=split,
        )
        for split in splits
        for index, label in enumerate(labels[split])
    ]
    return ClassificationDataset(
        name=source.stem,
        source=source,
        class_names=names,
        items=tuple(items),
        dims=dims[splits[0]],
        kind=kind or _suggest_kind(names, multilabel),
    )


def read_classification_dataset(
    path: Path | str,
    *,
    patient_pattern: str | None = None,
    class_names: Sequence[str] | None = None,
    extra_columns: Sequence[str] | None = None,
    kind: TaskKind | None = None,
) -> ClassificationDataset:
    """Class folders (a directory), a CSV or a MedMNIST .npz, chosen by what ``path`` is; options go to the
    reader that takes them, and one given to a reader that does not is an error."""
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder")
    if source.is_dir():
        if class_names is not None or extra_columns is not None:
            raise DatasetError(f"{source}: class folders take their class names from the folder names")
        return read_class_folders(source, patient_pattern, kind=kind)
    if patient_pattern is not None:
        raise DatasetError(f"{source}: a patient pattern applies to class folders; a CSV has a patient_id column")
    if source.suffix.lower() == ".csv":
        return read_csv_dataset(source, class_names, extra_columns=extra_columns, kind=kind)
    if source.suffix.lower() == ".npz":
        if extra_columns is not None:
            raise DatasetError(f"{source}: extra target columns apply to a CSV; a MedMNIST .npz has none")
        return read_medmnist(source, class_names, kind=kind)
    raise DatasetError(f"{source}: expected a folder of class folders, a .csv or a MedMNIST .npz")


# -------------------------------------------------------------------------------------------------- pixels


def stratum(label: int | tuple[int, ...]) -> int:
    """The class; for multi-label, the number of positive labels (as the engine stratifies)."""
    return label if isinstance(label, int) else sum(label)


def make_folds(
    dataset: ClassificationDataset, n_folds: int = 5, seed: int = 0, *, path: Path | str
) -> CrossValidationSplit:
    """K folds stored at ``path`` (reused when it matches): a patient's items in one fold, class balance kept.

    Items marked ``test`` by the source are left out of every fold, training and validation alike: they are
    for a final, untouched evaluation. ``val`` items join the folds like any other item.
    """
    usable = [item for item in dataset.items if item.split != "test"]
    groups = {item.item_id: item.patient_id for item in usable}
    strata = {item.item_id: stratum(item.label) for item in usable}
    return load_or_make_split(path, list(groups), n_folds=n_folds, seed=seed, groups=groups, strata=strata)


def official_split(dataset: ClassificationDataset) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) as the source assigns them: ``val`` items validate; ``train`` items and
    items without a split train; ``test`` items are in neither. A patient in both sets is an error."""
    train = [item for item in dataset.items if item.split in (None, "train")]
    val = [item for item in dataset.items if item.split == "val"]
    if not val:
        raise DatasetError(f"{dataset.source}: no items marked 'val'; use make_folds for cross-validation")
    if shared := sorted({i.patient_id for i in train} & {i.patient_id for i in val}):
        raise DatasetError(f"{dataset.source}: patients in both the 'train' and 'val' splits: {shared[:5]}")
    return [item.item_id for item in train], [item.item_id for item in val]
