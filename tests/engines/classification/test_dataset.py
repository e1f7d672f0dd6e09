"""Classification datasets: every layout gives items with labels, patients and a way to the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from vesalius.core.errors import DatasetError
from vesalius.engines.classification.dataset import (
    load_image,
    read_class_folders,
    read_classification_dataset,
    read_csv_dataset,
    read_medmnist,
    resize,
)

MEDMNIST = Path(__file__).resolve().parents[4] / "shared" / "data" / "medmnist"


def png(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(channels, value, dtype=np.uint8), mode=mode).save(path)
    return path


def dicom_xray(path: Path, pixels: np.ndarray, photometric: str) -> Path:
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
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_class_folders_give_sorted_classes_and_patients_from_the_file_name(tmp_path: Path) -> None:
    png(tmp_path / "PNEUMONIA" / "person1_bacteria_1.jpeg", 200)
    png(tmp_path / "PNEUMONIA" / "person1_virus_2.jpeg", 190)
    png(tmp_path / "NORMAL" / "sub" / "IM-0115-0001.png", 50)
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    dataset = read_class_folders(tmp_path, patient_pattern=r"(?P<patient>person\d+|IM-\d+)")
    assert dataset.class_names == ["NORMAL", "PNEUMONIA"]
    assert dataset.class_counts() == [1, 2]
    assert sorted({item.patient_id for item in dataset.items}) == ["IM-0115", "person1"]
    pixels = load_image(dataset.items[0].source)
    assert pixels.shape == (1, 10, 12)
    assert pixels.max() == 50


def test_an_empty_class_folder_or_an_unmatched_name_is_an_error(tmp_path: Path) -> None:
    png(tmp_path / "a" / "x.png", 1)
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="holds no PNG"):
        read_class_folders(tmp_path)
    png(tmp_path / "b" / "y.png", 1)
    with pytest.raises(DatasetError, match="patient pattern"):
        read_class_folders(tmp_path, patient_pattern=r"(?P<patient>person\d+)")


def test_a_csv_with_names_patients_and_an_extra_target(tmp_path: Path) -> None:
    png(tmp_path / "img" / "a.png", 10, mode="RGB")
    png(tmp_path / "img" / "b.png", 20)
    (tmp_path / "labels.csv").write_text("path,label,patient_id,haemorrhage\nimg/a.png,2,p1,yes\nimg/b.png,10,p1,no\n")
    dataset = read_classification_dataset(tmp_path / "labels.csv")
    assert dataset.class_names == ["2", "10"]  # integers sort as numbers
    assert [item.label for item in dataset.items] == [0, 1]
    assert dataset.extra_targets == {"haemorrhage": ["no", "yes"]}
    assert dataset.items[0].extra == {"haemorrhage": 1}
    assert {item.patient_id for item in dataset.items} == {"p1"}
    assert load_image(dataset.items[0].source).shape == (3, 10, 12)


def test_csv_problems_name_the_line(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 10)
    (tmp_path / "bad.csv").write_text("path,label\na.png,NORMAL\na.png,PNEUMONAI\n")
    with pytest.raises(DatasetError, match="line 3: unknown label 'PNEUMONAI'"):
        read_csv_dataset(tmp_path / "bad.csv", class_names=["NORMAL", "PNEUMONIA"])
    (tmp_path / "missing.csv").write_text("path,label\ngone.png,0\n")
    with pytest.raises(DatasetError, match=r"line 2: image .*gone.png does not exist"):
        read_csv_dataset(tmp_path / "missing.csv")


def test_dicom_monochrome1_is_inverted_so_bone_is_bright(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000], [2000, 4000]])
    inverted = load_image(read_classification_dataset(_folder_with(tmp_path, pixels, "MONOCHROME1")).items[0].source)
    plain = load_image(
        read_classification_dataset(_folder_with(tmp_path / "m2", pixels, "MONOCHROME2")).items[0].source
    )
    np.testing.assert_array_equal(plain[0], pixels)
    np.testing.assert_array_equal(inverted[0], 4000 - pixels)


def _folder_with(root: Path, pixels: np.ndarray, photometric: str) -> Path:
    dicom_xray(root / "cls" / "x.dcm", pixels, photometric)
    return root


def test_npz_images_volumes_and_multilabel(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "two.npz",
        train_images=np.zeros((4, 8, 8), np.uint8),
        train_labels=np.array([[0], [1], [1], [0]]),
        val_images=np.ones((2, 8, 8, 3), np.uint8),
        val_labels=np.array([[1], [0]]),
    )
    dataset = read_medmnist(tmp_path / "two.npz")
    assert [item.split for item in dataset.items] == ["train"] * 4 + ["val"] * 2
    assert load_image(dataset.items[0].source).shape == (1, 8, 8)
    assert load_image(dataset.items[-1].source).shape == (3, 8, 8)
    np.savez(
        tmp_path / "vol.npz",
        train_images=np.zeros((2, 6, 6, 6), np.uint8),
        train_labels=np.array([[1, 0, 1], [0, 1, 0]]),
    )
    volumes = read_medmnist(tmp_path / "vol.npz")
    assert volumes.multilabel
    assert volumes.items[0].label == (1, 0, 1)
    assert volumes.class_counts() == [1, 1, 1]
    assert load_image(volumes.items[1].source).shape == (1, 6, 6, 6)


def test_resize_reaches_the_exact_size() -> None:
    image = np.random.default_rng(0).normal(size=(1, 28, 28)).astype(np.float32)
    assert resize(image, [32, 32]).shape == (1, 32, 32)
    assert resize(image, (28, 28)) is image
    assert resize(np.zeros((1, 10, 12, 14), np.float32), [16, 16, 16]).shape == (1, 16, 16, 16)


@pytest.mark.shared_data
def test_the_real_medmnist_files() -> None:
    if not MEDMNIST.is_dir():
        pytest.skip("../shared/data/medmnist is absent")
    breast = read_medmnist(MEDMNIST / "breastmnist.npz")
    assert len(breast.items) == 546 + 78
    assert breast.class_counts() == [
        147 + sum(1 for i in breast.items if i.split == "val" and i.label == 0) - 0,
        399 + sum(1 for i in breast.items if i.split == "val" and i.label == 1),
    ]
    adrenal = read_medmnist(MEDMNIST / "adrenalmnist3d_64.npz")
    assert len(adrenal.items) == 1188 + 98
    assert load_image(adrenal.items[0].source).shape == (1, 64, 64, 64)
