"""Classification datasets: what each layout reads as, the pixels ``load_image`` gives, and the splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from vesalius.core.errors import DatasetError, InputError
from vesalius.core.volume import Volume
from vesalius.engines.classification.dataset import (
    ImageSource,
    Item,
    make_folds,
    official_split,
    read_class_folders,
    read_classification_dataset,
    read_csv_dataset,
    read_medmnist,
)
from vesalius.engines.classification.images import load_image, resize
from vesalius.io import write_nifti


def png(path: Path, value: int | np.ndarray, size: tuple[int, int] = (12, 10), mode: str = "L") -> Path:
    """A (height 10, width 12) image filled with ``value``, or the array ``value`` as it is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = value if isinstance(value, np.ndarray) else np.full(shape, value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def dicom_image(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", elements: dict[str, object] | None = None
) -> Path:
    """A single-frame 12-bit DICOM image; ``elements`` set more attributes (it is an X-ray unless ``Modality`` says
    otherwise)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", photometric, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in (elements or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_xray_folders(root: Path, patients: int = 12) -> Path:
    """NORMAL and PNEUMONIA folders; patient ``personN`` has one to three images, all of one class."""
    for n in range(patients):
        label = "PNEUMONIA" if n % 2 else "NORMAL"
        for image in range(1 + n % 3):
            png(root / label / f"person{n}_bacteria_{image}.jpeg", 10 * n)
    return root


# -------------------------------------------------------------------------------------------------- class folders


def test_class_folders_are_classes_in_sorted_order_with_images_at_any_depth(tmp_path: Path) -> None:
    png(tmp_path / "PNEUMONIA" / "person1_bacteria_1.jpeg", 200)
    png(tmp_path / "PNEUMONIA" / "person1_virus_2.png", 190)
    png(tmp_path / "NORMAL" / "sub" / "deeper" / "IM-0115-0001.png", 50)
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    (tmp_path / "NORMAL" / ".DS_Store").write_text("hidden")
    png(tmp_path / "NORMAL" / ".thumbs" / "small.png", 1)  # inside a hidden folder
    (tmp_path / "README.md").write_text("next to the class folders")
    dataset = read_class_folders(tmp_path)
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    assert [(item.item_id, item.label) for item in dataset.items] == [
        ("NORMAL/sub/deeper/IM-0115-0001.png", 0),
        ("PNEUMONIA/person1_bacteria_1.jpeg", 1),
        ("PNEUMONIA/person1_virus_2.png", 1),
    ]
    assert dataset.skipped == 4
    assert dataset.dims == 2
    assert dataset.kind == "binary"
    assert dataset.class_counts() == [1, 2]
    assert [item.patient_id for item in dataset.items] == [item.item_id for item in dataset.items]
    assert all(item.split is None for item in dataset.items)


def test_a_patient_pattern_groups_the_images_of_one_patient(tmp_path: Path) -> None:
    png(tmp_path / "PNEUMONIA" / "person12_bacteria_51.jpeg", 200)
    png(tmp_path / "PNEUMONIA" / "person12_bacteria_52.jpeg", 190)
    png(tmp_path / "PNEUMONIA" / "person3_virus_9.jpeg", 180)
    png(tmp_path / "NORMAL" / "IM-0115-0001.jpeg", 50)
    dataset = read_class_folders(tmp_path, patient_pattern=r"(?P<patient>person\d+|IM-\d+)")
    assert [item.patient_id for item in dataset.items] == ["IM-0115", "person12", "person12", "person3"]


def test_patient_folders_below_a_class_folder_are_found_by_the_pattern(tmp_path: Path) -> None:
    png(tmp_path / "tumour" / "patient_07" / "slice_1.png", 1)
    png(tmp_path / "tumour" / "patient_07" / "slice_2.png", 2)
    png(tmp_path / "normal" / "patient_08" / "slice_1.png", 3)
    dataset = read_class_folders(tmp_path, patient_pattern=r"(?P<patient>patient_\d+)/")
    assert [item.patient_id for item in dataset.items] == ["patient_08", "patient_07", "patient_07"]


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    png(tmp_path / "a" / "x.png", 1)
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match=r"/b: class folder holds no PNG, JPEG, DICOM or volume files$"):
        read_class_folders(tmp_path)
    (tmp_path / "b" / "notes.txt").write_text("only text")
    with pytest.raises(DatasetError, match=r"/b: class folder holds no PNG.*\(1 other files skipped\)"):
        read_class_folders(tmp_path)


def test_class_folder_mistakes_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        read_class_folders(tmp_path / "absent")
    png(tmp_path / "loose.png", 1)
    with pytest.raises(DatasetError, match="no class sub-folders"):
        read_class_folders(tmp_path)
    png(tmp_path / "a" / "person1_x.png", 1)
    png(tmp_path / "b" / "unnamed.png", 1)
    with pytest.raises(DatasetError, match=r"unnamed.png: file name does not match the patient pattern"):
        read_class_folders(tmp_path, patient_pattern=r"(?P<patient>person\d+)_")
    with pytest.raises(DatasetError, match="needs a named group"):
        read_class_folders(tmp_path, patient_pattern=r"person\d+")
    with pytest.raises(DatasetError, match="not a regular expression"):
        read_class_folders(tmp_path, patient_pattern=r"(?P<patient>person")


# -------------------------------------------------------------------------------------------------- DICOM X-rays


def test_a_monochrome1_xray_is_inverted_so_bone_is_bright(tmp_path: Path) -> None:
    stored = np.array([[0, 1000], [2000, 4000]])
    dicom_image(tmp_path / "inverted" / "x.dcm", stored, "MONOCHROME1")
    dicom_image(tmp_path / "plain" / "x.dcm", stored, "MONOCHROME2")
    dataset = read_class_folders(tmp_path)
    assert dataset.dims == 2
    inverted, plain = (load_image(item, dataset) for item in dataset.items)
    assert inverted.dtype == np.float32
    assert inverted.shape == plain.shape == (1, 2, 2)
    np.testing.assert_array_equal(plain[0], stored)
    np.testing.assert_array_equal(inverted[0], 4000 - stored)


def test_an_xray_gets_its_rescale_and_window_but_a_ct_slice_keeps_hounsfield_units(tmp_path: Path) -> None:
    stored = np.array([[0, 1000], [2000, 4000]])
    window: dict[str, object] = {"WindowCenter": 2000, "WindowWidth": 1000}
    xray = load_image(ImageSource(dicom_image(tmp_path / "xray.dcm", stored, elements=window)))[0]
    assert xray[0, 0] == xray[0, 1] == xray.min()  # both below the window
    assert xray[1, 1] == xray.max()  # above it
    assert xray[0, 1] < xray[1, 0] < xray[1, 1]
    ct_elements = {"Modality": "CT", "RescaleSlope": 1, "RescaleIntercept": -1024, **window}
    ct = load_image(ImageSource(dicom_image(tmp_path / "ct.dcm", stored, elements=ct_elements)))[0]
    np.testing.assert_array_equal(ct, stored - 1024)


def test_a_file_that_is_not_dicom_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "fake.dcm").write_bytes(b"not a DICOM file")
    with pytest.raises(DatasetError, match=r"fake.dcm: cannot read the DICOM image"):
        load_image(ImageSource(tmp_path / "fake.dcm"))


# -------------------------------------------------------------------------------------------------- CSV


def test_a_csv_with_label_names_patients_splits_and_extra_targets(tmp_path: Path) -> None:
    png(tmp_path / "img" / "a.png", 10, mode="RGB")
    png(tmp_path / "img" / "b.png", 20)
    png(tmp_path / "img" / "c.png", 30)
    (tmp_path / "labels.csv").write_text(
        "path,label,patient_id,split,haemorrhage,fracture\n"
        "img/a.png,PNEUMONIA,p1,train,yes,1\n"
        "img/b.png,NORMAL,p1,train,no,\n"
        "\n"
        "img/c.png,NORMAL,,test,no,0\n"
    )
    dataset = read_classification_dataset(tmp_path / "labels.csv")
    assert dataset.name == "labels"
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    assert [item.label for item in dataset.items] == [1, 0, 0]
    assert [item.patient_id for item in dataset.items] == ["p1", "p1", "img/c.png"]
    assert [item.split for item in dataset.items] == ["train", "train", "test"]
    assert dataset.extra_targets == {"haemorrhage": ("no", "yes"), "fracture": ("0", "1")}
    assert [item.extra for item in dataset.items] == [
        {"haemorrhage": 1, "fracture": 1},
        {"haemorrhage": 0},  # an empty cell: unknown
        {"haemorrhage": 0, "fracture": 0},
    ]
    assert dataset.items[0].source.path == (tmp_path / "img" / "a.png").resolve()
    assert load_image(dataset.items[0], dataset).shape == (3, 10, 12)
    only = read_csv_dataset(tmp_path / "labels.csv", extra_columns=["fracture"])
    assert list(only.extra_targets) == ["fracture"]


def test_integer_labels_sort_as_numbers_or_index_the_given_class_names(tmp_path: Path) -> None:
    for name in "abcd":
        png(tmp_path / f"{name}.png", 1)
    (tmp_path / "grades.csv").write_text("path,label\na.png,2\nb.png,10\nc.png,0\nd.png,2\n")
    grades = read_csv_dataset(tmp_path / "grades.csv")
    assert grades.class_names == ("0", "2", "10")
    assert [item.label for item in grades.items] == [1, 2, 0, 1]
    assert grades.kind == "multiclass"
    assert read_csv_dataset(tmp_path / "grades.csv", kind="ordinal").kind == "ordinal"
    (tmp_path / "coded.csv").write_text("path,label\na.png,1\nb.png,0\n")
    coded = read_csv_dataset(tmp_path / "coded.csv", class_names=["NORMAL", "PNEUMONIA"])
    assert [item.label for item in coded.items] == [1, 0]
    (tmp_path / "out_of_range.csv").write_text("path,label\na.png,1\nb.png,2\n")
    with pytest.raises(DatasetError, match=r"out_of_range.csv line 3: label 2 is not a class index 0..1"):
        read_csv_dataset(tmp_path / "out_of_range.csv", class_names=["NORMAL", "PNEUMONIA"])


def test_an_unknown_label_is_an_error_naming_the_csv_line(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 10)
    png(tmp_path / "b.png", 10)
    (tmp_path / "labels.csv").write_text("path,label\na.png,NORMAL\nb.png,pneumonai\n")
    with pytest.raises(DatasetError, match=r"labels.csv line 3: unknown label 'pneumonai'; known: NORMAL, PNEUMONIA$"):
        read_csv_dataset(tmp_path / "labels.csv", class_names=["NORMAL", "PNEUMONIA"])


def test_a_missing_image_is_an_error_naming_the_file_and_the_line(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 10)
    (tmp_path / "labels.csv").write_text("path,label\na.png,0\ngone.png,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv line 3: image .*/gone.png does not exist"):
        read_csv_dataset(tmp_path / "labels.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,label\na.png,0\n", "'path' and 'label'"),
        ("path,label\n", "no rows"),
        ("path,label\na.png,0,extra\n", "line 2: 3 fields; the header has 2"),
        ("path,label\na.png,\n", "line 2: empty label"),
        ("path,label,split\na.png,0,holdout\n", "line 2: split 'holdout' is not one of train, val, test"),
        ("path,label\na.png,0\na.png,1\n", "line 3: a.png is listed again \\(first on line 2\\)"),
        ("path,label\nnotes.txt,0\n", "line 2: .*notes.txt is not a PNG, JPEG, DICOM or NIfTI"),
        ("path,label\na.png,0\nb.png,0\n", "at least two distinct class names"),
    ],
)
def test_csv_mistakes_are_errors_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    png(tmp_path / "a.png", 10)
    png(tmp_path / "b.png", 10)
    (tmp_path / "notes.txt").write_text("text")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=rf"labels.csv.*{message}"):
        read_csv_dataset(tmp_path / "labels.csv")


def test_a_csv_of_nifti_volumes_is_3d_with_depth_first(tmp_path: Path) -> None:
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # [i, j, k]
    for name in ("a", "b"):
        write_nifti(Volume.from_geometry(array, spacing=(1.0, 1.0, 2.0)), tmp_path / f"{name}.nii.gz")
    (tmp_path / "volumes.csv").write_text("path,label\na.nii.gz,benign\nb.nii.gz,malignant\n")
    dataset = read_csv_dataset(tmp_path / "volumes.csv")
    assert dataset.dims == 3
    pixels = load_image(dataset.items[0], dataset)
    assert pixels.shape == (1, 6, 5, 4)  # (C, D, H, W) = (1, k, j, i)
    assert pixels[0, 5, 2, 1] == array[1, 2, 5]
    png(tmp_path / "c.png", 1)
    (tmp_path / "mixed.csv").write_text("path,label\na.nii.gz,benign\nc.png,malignant\n")
    with pytest.raises(DatasetError, match=r"mixes 2-D images .* and 3-D volumes"):
        read_csv_dataset(tmp_path / "mixed.csv")


# -------------------------------------------------------------------------------------------------- MedMNIST


def test_npz_grey_and_colour_images_with_their_splits(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "grey.npz",
        train_images=np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8),
        train_labels=np.array([[0], [2], [1], [0]]),
        val_images=np.zeros((2, 8, 8), np.uint8),
        val_labels=np.array([1, 0]),  # (N,) as some copies store it
        test_images=np.zeros((1, 8, 8), np.uint8),
        test_labels=np.array([[2]]),
    )
    grey = read_medmnist(tmp_path / "grey.npz")
    assert grey.dims == 2
    assert grey.class_names == ("0", "1", "2")
    assert grey.kind == "multiclass"
    assert [item.item_id for item in grey.items] == [f"train_{i}" for i in range(4)] + ["val_0", "val_1", "test_0"]
    assert [item.split for item in grey.items] == ["train"] * 4 + ["val"] * 2 + ["test"]
    assert [item.label for item in grey.items] == [0, 2, 1, 0, 1, 0, 2]
    first = load_image(grey.items[1], grey)
    assert first.shape == (1, 8, 8)
    np.testing.assert_array_equal(first[0], np.arange(64, 128).reshape(8, 8))
    assert str(grey.items[1].source).endswith("grey.npz:train_images:1")

    np.savez(tmp_path / "rgb.npz", train_images=np.full((3, 8, 8, 3), 7, np.uint8), train_labels=np.array([0, 1, 1]))
    rgb = read_medmnist(tmp_path / "rgb.npz", class_names=["benign", "malignant"])
    assert rgb.class_names == ("benign", "malignant")
    assert load_image(rgb.items[0], rgb).shape == (3, 8, 8)
    assert load_image(rgb.items[0], rgb, grayscale=True).shape == (1, 8, 8)
    np.testing.assert_allclose(load_image(rgb.items[0], rgb, grayscale=True), 7, rtol=1e-6)


def test_npz_volumes_and_multilabel(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "vol.npz",
        train_images=np.zeros((2, 6, 7, 8), np.uint8),
        train_labels=np.array([[1, 0, 1], [0, 1, 0]]),
    )
    volumes = read_medmnist(tmp_path / "vol.npz", class_names=["cyst", "nodule", "stone"])
    assert volumes.dims == 3
    assert volumes.kind == "multilabel"
    assert volumes.multilabel
    assert [item.label for item in volumes.items] == [(1, 0, 1), (0, 1, 0)]
    assert volumes.class_counts() == [1, 1, 1]
    assert load_image(volumes.items[1], volumes).shape == (1, 6, 7, 8)


def test_npz_mistakes_are_errors_naming_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "short.npz", train_images=np.zeros((3, 8, 8)), train_labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"short.npz: 'train_labels' has shape \(2,\); expected \(3,\)"):
        read_medmnist(tmp_path / "short.npz")
    np.savez(tmp_path / "unlabelled.npz", train_images=np.zeros((3, 8, 8)))
    with pytest.raises(DatasetError, match="'train_images' has no 'train_labels'"):
        read_medmnist(tmp_path / "unlabelled.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match=r"other.npz: no 'train_images'"):
        read_medmnist(tmp_path / "other.npz")
    np.savez(tmp_path / "three.npz", train_images=np.zeros((3, 8, 8)), train_labels=np.array([0, 1, 2]))
    with pytest.raises(DatasetError, match="need 3 class names, 2 given"):
        read_medmnist(tmp_path / "three.npz", class_names=["a", "b"])
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"broken.npz: not a readable .npz file"):
        read_medmnist(tmp_path / "broken.npz")


@pytest.mark.shared_data
def test_the_real_medmnist_files(shared_data: Path) -> None:
    """The copies in ../shared/data/medmnist hold the official train and val splits (no test arrays)."""
    folder = shared_data / "medmnist"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    breast = read_medmnist(folder / "breastmnist.npz")
    assert (breast.dims, breast.kind, breast.class_names) == (2, "binary", ("0", "1"))
    train, val = official_split(breast)
    assert (len(train), len(val)) == (546, 78)
    assert np.bincount([item.label for item in breast.items if item.split == "train"]).tolist() == [147, 399]
    assert np.bincount([item.label for item in breast.items if item.split == "val"]).tolist() == [21, 57]
    assert load_image(breast.items[0], breast).shape == (1, 28, 28)
    for name, side in (("adrenalmnist3d.npz", 28), ("adrenalmnist3d_64.npz", 64)):
        adrenal = read_medmnist(folder / name)
        assert (adrenal.dims, adrenal.kind) == (3, "binary")
        assert [len(ids) for ids in official_split(adrenal)] == [1188, 98]
        assert adrenal.class_counts() == [929 + 76, 259 + 22]
        assert load_image(adrenal.items[-1], adrenal).shape == (1, side, side, side)  # a val image: a small array


# -------------------------------------------------------------------------------------------------- dispatch, pixels


def test_read_classification_dataset_chooses_the_reader_and_refuses_options_it_cannot_use(tmp_path: Path) -> None:
    chest_xray_folders(tmp_path / "cxr", patients=4)
    assert read_classification_dataset(tmp_path / "cxr", patient_pattern=r"(?P<patient>person\d+)_").name == "cxr"
    np.savez(tmp_path / "m.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.array([0, 1]))
    assert read_classification_dataset(tmp_path / "m.npz").name == "m"
    with pytest.raises(DatasetError, match="patient pattern applies to class folders"):
        read_classification_dataset(tmp_path / "m.npz", patient_pattern=r"(?P<patient>x)")
    with pytest.raises(DatasetError, match="class folders take their class names from the folder names"):
        read_classification_dataset(tmp_path / "cxr", class_names=["a", "b"])
    with pytest.raises(DatasetError, match=r"data\.json: no such file or folder"):
        read_classification_dataset(tmp_path / "data.json")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"expected a folder of class folders, a \.csv or a MedMNIST \.npz"):
        read_classification_dataset(tmp_path / "data.json")
    with pytest.raises(DatasetError, match="a binary task needs two classes"):
        read_classification_dataset(tmp_path / "m.npz", class_names=["a", "b", "c"], kind="binary")


def test_load_image_keeps_16_bit_grey_values_and_refuses_an_image_of_the_wrong_dimension(tmp_path: Path) -> None:
    deep = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    assert load_image(ImageSource(png(tmp_path / "deep.png", deep)))[0].tolist() == deep.tolist()
    np.savez(tmp_path / "v.npz", train_images=np.zeros((2, 4, 4, 4)), train_labels=np.array([0, 1]))
    volumes = read_medmnist(tmp_path / "v.npz")
    flat = Item(item_id="flat", source=ImageSource(tmp_path / "deep.png"), label=0)
    with pytest.raises(DatasetError, match=r"deep.png: holds a 2-D image of shape \(2, 2\); the dataset v is 3-D"):
        load_image(flat, volumes)


def test_resize_reaches_the_exact_size_without_aliasing() -> None:
    image = np.random.default_rng(0).normal(size=(2, 28, 28)).astype(np.float32)
    assert resize(image, [32, 40]).shape == (2, 32, 40)
    assert resize(image, (28, 28)) is image
    assert resize(np.zeros((1, 10, 12, 14), np.float32), [16, 16, 16]).shape == (1, 16, 16, 16)
    constant = resize(np.full((1, 9, 9), 5.0, np.float32), [4, 13])
    np.testing.assert_allclose(constant, 5.0, rtol=1e-6)
    stripes = np.broadcast_to(np.arange(63) % 2 * np.float32(100), (1, 63, 63)).astype(np.float32)
    shrunk = resize(stripes, [9, 9])  # every 7th column, sampled without smoothing, is 100, 0, 100...
    assert shrunk.dtype == np.float32
    np.testing.assert_allclose(shrunk, 50.0, atol=1.0)  # the stripes' mean: no aliasing
    with pytest.raises(InputError, match=r"cannot resize an image of shape \(28, 28\) to \[32\]"):
        resize(image, [32])


# -------------------------------------------------------------------------------------------------- splits


def test_folds_never_split_a_patient_and_are_stored(tmp_path: Path) -> None:
    dataset = read_class_folders(chest_xray_folders(tmp_path / "cxr"), patient_pattern=r"(?P<patient>person\d+)_")
    assert len({item.patient_id for item in dataset.items}) == 12
    assert len(dataset.items) == 24
    split = make_folds(dataset, n_folds=3, seed=1, path=tmp_path / "splits.json")
    patient = {item.item_id: item.patient_id for item in dataset.items}
    label = {item.item_id: item.label for item in dataset.items}
    for fold in split.folds:
        assert not {patient[i] for i in fold.train} & {patient[i] for i in fold.validation}
        assert {label[i] for i in fold.validation} == {0, 1}  # stratified: both classes validate every fold
    assert split.cases == sorted(item.item_id for item in dataset.items)
    assert (tmp_path / "splits.json").is_file()
    assert make_folds(dataset, n_folds=3, seed=99, path=tmp_path / "splits.json") == split  # the stored split


def test_test_items_never_enter_a_fold_and_val_items_form_the_official_split(tmp_path: Path) -> None:
    labels = np.array([0, 1] * 5)
    np.savez(
        tmp_path / "m.npz",
        train_images=np.zeros((10, 4, 4)),
        train_labels=labels,
        val_images=np.zeros((4, 4, 4)),
        val_labels=labels[:4],
        test_images=np.zeros((4, 4, 4)),
        test_labels=labels[:4],
    )
    dataset = read_medmnist(tmp_path / "m.npz")
    split = make_folds(dataset, n_folds=2, path=tmp_path / "splits.json")
    used = {case for fold in split.folds for case in fold.train + fold.validation}
    assert used == {f"train_{i}" for i in range(10)} | {f"val_{i}" for i in range(4)}
    train, val = official_split(dataset)
    assert train == [f"train_{i}" for i in range(10)]
    assert val == [f"val_{i}" for i in range(4)]
    no_val = read_medmnist(_without_val(tmp_path))
    with pytest.raises(DatasetError, match="no items marked 'val'; use make_folds"):
        official_split(no_val)


def _without_val(tmp_path: Path) -> Path:
    np.savez(tmp_path / "train_only.npz", train_images=np.zeros((2, 4, 4)), train_labels=np.array([0, 1]))
    return tmp_path / "train_only.npz"


def test_the_official_split_refuses_a_patient_in_both_sets(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 1)
    png(tmp_path / "b.png", 2)
    (tmp_path / "labels.csv").write_text("path,label,patient_id,split\na.png,0,p7,train\nb.png,1,p7,val\n")
    with pytest.raises(DatasetError, match=r"patients in both the 'train' and 'val' splits: \['p7'\]"):
        official_split(read_csv_dataset(tmp_path / "labels.csv"))
