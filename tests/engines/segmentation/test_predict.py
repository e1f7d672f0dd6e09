"""Inference: predictions land exactly on the input grid; TTA, Gaussian weighting, ensembling, post-processing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from tests import dicom_factory as factory
from tests.engines.segmentation.test_preprocess import oblique_affine, tiny_plan
from vesalius.core.volume import Volume
from vesalius.engines.common.package import ModelPackage, load_package, save_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.segmentation.predict import Predictor, keep_largest_component, predict_files
from vesalius.engines.segmentation.sliding_window import sliding_window_probabilities
from vesalius.io import read_nifti, read_volume, write_nifti
from vesalius.transforms import pad

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def make_package(folder: Path, seed: int, plan: SegmentationPlan | None = None) -> ModelPackage:
    """A package holding a randomly initialised tiny DynUNet."""
    plan = plan or tiny_plan()
    torch.manual_seed(seed)
    network = plan.network.build()
    save_package(
        folder,
        name="tiny",
        version="0.1.0",
        task="segmentation",
        labels=plan.labels,
        plan=plan,
        metrics={},
        data_fingerprint={},
        state_dict=network.state_dict(),
    )
    return load_package(folder)


def oblique_volume(seed: int = 0) -> Volume:
    """20 x 18 x 9 voxels of 0.8 x 0.9 x 2.5 mm on a rotated grid: every axis differs."""
    values = np.random.default_rng(seed).normal(40.0, 60.0, (20, 18, 9)).astype(np.float32)
    return Volume(array=values, affine=oblique_affine(), modality="CT")


def tiny_network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network: torch.nn.Module = tiny_plan().network.build()
    return network.eval()


def test_predict_returns_labels_on_exactly_the_input_grid(tmp_path: Path) -> None:
    volume = oblique_volume()
    labels = Predictor(make_package(tmp_path / "fold0", seed=0), tta=True).predict(volume)
    assert labels.shape == volume.shape
    assert labels.array.shape == volume.array.shape
    assert np.array_equal(labels.affine, volume.affine)
    assert labels.array.dtype == np.uint8
    assert set(np.unique(labels.array)) <= {0, 1, 2}


def test_predict_only_undoes_its_own_preprocessing(tmp_path: Path) -> None:
    padded = pad(oblique_volume(), shape=(24, 20, 11))  # an input that already carries a history of its own
    labels = Predictor(make_package(tmp_path / "fold0", seed=0), tta=False).predict(padded)
    assert labels.shape == padded.shape
    assert np.array_equal(labels.affine, padded.affine)


def test_mirror_tta_makes_the_prediction_flip_equivariant() -> None:
    network = tiny_network()
    image = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    dims = [2, 4]
    results = {}
    for axes in ((), (0, 1, 2)):
        plain = sliding_window_probabilities(network, image, (16, 16, 16), mirror_axes=axes)
        flipped = sliding_window_probabilities(network, torch.flip(image, dims), (16, 16, 16), mirror_axes=axes)
        results[axes] = float((torch.flip(plain, dims) - flipped).abs().max())
    assert results[(0, 1, 2)] < 1e-5
    assert results[()] > 1e-4  # a random network alone is not equivariant: the test has teeth


def test_sliding_window_pads_an_input_smaller_than_the_patch() -> None:
    image = torch.randn(1, 1, 10, 7, 5)
    probabilities = sliding_window_probabilities(tiny_network(), image, (16, 16, 16), mirror_axes=(0,))
    assert probabilities.shape == (1, 3, 10, 7, 5)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(1, 10, 7, 5))


def test_gaussian_and_constant_weighting_differ_where_windows_overlap() -> None:
    network = tiny_network()
    image = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(4))
    gaussian = sliding_window_probabilities(network, image, (16, 16, 16), overlap=0.5, gaussian=True)
    constant = sliding_window_probabilities(network, image, (16, 16, 16), overlap=0.5, gaussian=False)
    assert float((gaussian - constant).abs().max()) > 1e-4
    torch.testing.assert_close(constant.sum(dim=1), torch.ones(1, 24, 24, 24))


def test_largest_component_removes_a_small_island_of_its_class_only() -> None:
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[1:6, 1:6, 1:6] = 1
    labels[9:11, 9:11, 9:11] = 1  # island
    labels[8:10, 1:3, 1:3] = 2
    labels[1:2, 10:11, 10:11] = 2  # class 2 is not post-processed
    result = keep_largest_component(labels, [1])
    assert (result[1:6, 1:6, 1:6] == 1).all()
    assert (result[9:11, 9:11, 9:11] == 0).all()
    assert np.array_equal(result == 2, labels == 2)


def test_two_packages_ensemble_as_the_mean_of_their_probabilities(tmp_path: Path) -> None:
    volume = oblique_volume(seed=2)
    first, second = make_package(tmp_path / "f0", seed=0), make_package(tmp_path / "f1", seed=1)
    one = Predictor(first, tta=False).predict_probabilities(volume).array
    two = Predictor(second, tta=False).predict_probabilities(volume).array
    both = Predictor([first, second], tta=False)
    mean = both.predict_probabilities(volume)
    assert np.array_equal(mean.affine, volume.affine)
    assert mean.array.shape == (*volume.shape, 3)
    np.testing.assert_allclose(mean.array, (one + two) / 2, atol=1e-5)
    np.testing.assert_allclose(mean.array.sum(axis=-1), 1.0, atol=1e-4)
    assert np.array_equal(both.predict(volume).array, np.argmax(mean.array, axis=-1))


def test_predict_files_writes_the_inputs_geometry_for_nifti_and_dicom(tmp_path: Path) -> None:
    package = make_package(tmp_path / "fold0", seed=0)
    nifti = write_nifti(oblique_volume(), tmp_path / "in" / "case_7.nii.gz")
    hu = np.random.default_rng(5).integers(-200, 300, (20, 18, 9))
    dicom = tmp_path / "in" / "series_a"
    factory.write_series(dicom, hu, factory.oblique(spacing=(0.8, 0.9, 2.5)))
    written = predict_files([package.folder], [nifti, dicom], tmp_path / "out", tta=False)
    assert [p.name for p in written] == ["case_7.nii.gz", "series_a.nii.gz"]
    for source, output in zip([nifti, dicom], written, strict=True):
        original = read_volume(source)
        image: Any = nib.load(output)
        assert image.shape == original.shape
        np.testing.assert_allclose(image.affine, original.ras_affine, atol=1e-4)
    assert np.array_equal(read_nifti(written[0]).affine, read_nifti(nifti).affine)
