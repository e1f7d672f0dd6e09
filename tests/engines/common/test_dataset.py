"""Reading the MSD layout, and the errors a broken dataset gives: each names the file at fault."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests import dicom_factory as factory
from tests.engines.common.msd_factory import blob_case, write_msd
from vesalius.core.errors import DatasetError, GridMismatchError, InputError, LabelValueError
from vesalius.engines.common.dataset import load_case, read_msd_dataset
from vesalius.engines.common.plan import plan_dataset
from vesalius.io import read_volume, write_nifti


def test_reads_cases_modalities_and_labels(tmp_path: Path) -> None:
    root = write_msd(
        tmp_path / "ds", [blob_case("b_002", (8, 9, 6), (1, 1, 2)), blob_case("a_001", (8, 9, 6), (1, 1, 2))]
    )
    dataset = read_msd_dataset(root)
    assert dataset.name == "Fake"
    assert dataset.modalities == ("MRI",)
    assert dataset.labels == {0: "background", 1: "outer", 2: "inner"}
    assert [c.case_id for c in dataset.cases] == ["b_002", "a_001"]
    assert dataset.cases[0].images == ((root / "imagesTr" / "b_002.nii.gz").resolve(),)
    assert dataset.cases[0].label == (root / "labelsTr" / "b_002.nii.gz").resolve()
    loaded = load_case(dataset, dataset.cases[1])
    assert loaded.image.array.shape == (8, 9, 6, 1)
    assert loaded.image.array.dtype == np.float32
    np.testing.assert_allclose(loaded.image.spacing, [1, 1, 2])
    assert loaded.label.array.dtype == np.int16


def test_missing_dataset_json(tmp_path: Path) -> None:
    tmp_path.joinpath("imagesTr").mkdir()
    with pytest.raises(DatasetError, match=r"no dataset\.json"):
        read_msd_dataset(tmp_path)


def test_errors_are_input_errors() -> None:
    assert issubclass(DatasetError, InputError)
    assert issubclass(LabelValueError, DatasetError)
    assert issubclass(GridMismatchError, DatasetError)


def test_missing_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": []}))
    with pytest.raises(DatasetError, match="'labels'"):
        read_msd_dataset(tmp_path)


def test_labels_keys_must_be_contiguous(tmp_path: Path) -> None:
    root = write_msd(tmp_path, [blob_case("a", (8, 8, 8), (1, 1, 1))], labels={"0": "background", "2": "x"})
    with pytest.raises(DatasetError, match=r"'labels' keys must run 0, 1, 2"):
        read_msd_dataset(root)


def test_missing_label_file_is_named(tmp_path: Path) -> None:
    root = write_msd(tmp_path, [blob_case("a", (8, 8, 8), (1, 1, 1)), blob_case("b", (8, 8, 8), (1, 1, 1))])
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case b: label file .*labelsTr/b\.nii\.gz is missing"):
        read_msd_dataset(root)


def test_missing_image_file_is_named(tmp_path: Path) -> None:
    root = write_msd(tmp_path, [blob_case("a", (8, 8, 8), (1, 1, 1))])
    (root / "imagesTr" / "a.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case a: image file .*imagesTr/a\.nii\.gz is missing"):
        read_msd_dataset(root)


def test_undeclared_label_value(tmp_path: Path) -> None:
    case = blob_case("a", (8, 8, 8), (1, 1, 1))
    case.label[0, 0, 0] = 7
    dataset = read_msd_dataset(write_msd(tmp_path, [case]))
    with pytest.raises(LabelValueError, match=r"labelsTr/a\.nii\.gz holds value\(s\) \[7\]"):
        load_case(dataset, dataset.cases[0])


def test_grid_mismatch_names_both_grids(tmp_path: Path) -> None:
    case = blob_case("a", (8, 8, 8), (1, 1, 1))
    case.label_spacing = (1.0, 1.0, 1.5)
    dataset = read_msd_dataset(write_msd(tmp_path, [case]))
    with pytest.raises(
        GridMismatchError, match=r"labelsTr/a\.nii\.gz does not lie on the grid.*spacing \(1, 1, 1\.5\)"
    ):
        load_case(dataset, dataset.cases[0])


def test_grid_mismatch_in_shape(tmp_path: Path) -> None:
    case = blob_case("a", (8, 8, 8), (1, 1, 1))
    case.label = case.label[:, :, :7]
    dataset = read_msd_dataset(write_msd(tmp_path, [case]))
    with pytest.raises(GridMismatchError, match=r"shape \(8, 8, 7\)"):
        load_case(dataset, dataset.cases[0])


def test_four_d_image_holds_the_channels(tmp_path: Path) -> None:
    case = blob_case("a", (8, 8, 8), (1, 1, 1))
    case.image = np.stack([case.image, -case.image], axis=-1)
    dataset = read_msd_dataset(write_msd(tmp_path, [case], modality={"0": "T2", "1": "ADC"}))
    assert dataset.num_channels == 2
    loaded = load_case(dataset, dataset.cases[0])
    assert loaded.image.array.shape == (8, 8, 8, 2)
    np.testing.assert_allclose(loaded.image.array[..., 1], -loaded.image.array[..., 0])


def test_channel_count_must_match_modality(tmp_path: Path) -> None:
    dataset = read_msd_dataset(
        write_msd(tmp_path, [blob_case("a", (8, 8, 8), (1, 1, 1))], modality={"0": "T2", "1": "ADC"})
    )
    with pytest.raises(DatasetError, match=r"hold 1 channel\(s\), dataset.json's 'modality' declares 2"):
        load_case(dataset, dataset.cases[0])


def test_split_channel_files(tmp_path: Path) -> None:
    root = write_msd(tmp_path, [blob_case("a", (8, 8, 8), (1, 1, 1))], modality={"0": "T2", "1": "ADC"})
    source = root / "imagesTr" / "a.nii.gz"
    image = nib.load(source)
    for channel in range(2):
        nib.save(image, root / "imagesTr" / f"a_{channel:04d}.nii.gz")
    source.unlink()
    dataset = read_msd_dataset(root)
    assert [p.name for p in dataset.cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert load_case(dataset, dataset.cases[0]).image.array.shape == (8, 8, 8, 2)


def test_a_dicom_series_folder_is_an_image(tmp_path: Path) -> None:
    """MSD with DICOM: imagesTr/<case>/ holds the series; the NIfTI label lies on the grid it reads to."""
    root = tmp_path / "CT"
    hu = np.random.default_rng(0).integers(-500, 500, (20, 18, 9))
    factory.write_series(root / "imagesTr" / "ct_001", hu, factory.oblique(spacing=(0.8, 0.9, 2.5)))
    image = read_volume(root / "imagesTr" / "ct_001")
    label = (image.array > 0).astype(np.uint8)
    write_nifti(image.with_array(label), root / "labelsTr" / "ct_001.nii.gz")
    content = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "bright"},
        "training": [{"image": "./imagesTr/ct_001", "label": "./labelsTr/ct_001.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(content))
    dataset = read_msd_dataset(root)
    assert [c.case_id for c in dataset.cases] == ["ct_001"]
    loaded = load_case(dataset, dataset.cases[0])
    assert loaded.image.array.shape == (20, 18, 9, 1)
    np.testing.assert_array_equal(loaded.image.array[..., 0], image.array)
    np.testing.assert_array_equal(loaded.label.array, label)
    fingerprint, plan = plan_dataset(root)
    assert len(fingerprint.cases) == 1
    series_bytes = sum(f.stat().st_size for f in (root / "imagesTr" / "ct_001").iterdir())
    assert fingerprint.cases[0].file_bytes == series_bytes + (root / "labelsTr" / "ct_001.nii.gz").stat().st_size
    assert plan.normalization[0].scheme == "ct"
