"""`vesalius train DATASET --fold K --plan FILE`: trains, reports the best epoch, writes a package."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.engines.common.msd_factory import blob_case, write_msd
from tests.engines.segmentation.test_trainer import tiny_plan
from vesalius.cli.main import app
from vesalius.engines.common.package import load_package

runner = CliRunner()
FP32_QUARTER = ["--precision", "fp32", "--overlap", "0.25"]


@pytest.fixture
def blobs(tmp_path: Path) -> tuple[Path, Path]:
    """Six synthetic cases and a plan small enough to train in seconds."""
    dataset = write_msd(
        tmp_path / "Blobs", [blob_case(f"c{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    )
    return dataset, tiny_plan(dataset).save(tmp_path / "plan.json")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_one_fold_from_a_plan_file(blobs: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, plan_file = blobs
    arguments = ["train", str(dataset), "--fold", "2", "--plan", str(plan_file), "-o", str(tmp_path / "runs")]
    result = runner.invoke(app, [*arguments, "--epochs", "2", "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert "trained 2 epochs; best epoch" in result.output
    assert load_package(tmp_path / "runs" / "fold_2" / "model").manifest.metrics["fold"] == 2


def test_train_rejects_a_bad_fold(tmp_path: Path) -> None:
    dataset = write_msd(tmp_path / "Blobs", [blob_case(f"c{n}", (16, 16, 16), (1.0, 1.0, 1.0)) for n in range(3)])
    result = runner.invoke(app, ["train", str(dataset), "--fold", "first", "-o", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "fold" in result.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_with_the_folds_of_a_training_folder(blobs: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, plan_file = blobs
    for fold in ("0", "1"):
        arguments = ["train", str(dataset), "--fold", fold, "--plan", str(plan_file), "-o", str(tmp_path / "runs")]
        assert runner.invoke(app, [*arguments, "--epochs", "1", "--iterations", "2"]).exit_code == 0
    image = dataset / "imagesTr" / "c0.nii.gz"
    result = runner.invoke(
        app,
        ["predict", str(tmp_path / "runs"), str(image), "-o", str(tmp_path / "out"), "--no-tta", *FP32_QUARTER],
    )
    assert result.exit_code == 0, result.output
    assert "2 model package(s)" in result.output
    written = nib.load(tmp_path / "out" / "c0.nii.gz")
    assert np.allclose(written.affine, nib.load(image).affine)
    assert written.shape == (24, 24, 20)


def test_predict_names_a_bad_precision(blobs: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, plan_file = blobs
    arguments = ["train", str(dataset), "--fold", "0", "--plan", str(plan_file), "-o", str(tmp_path / "runs")]
    assert runner.invoke(app, [*arguments, "--epochs", "1", "--iterations", "1"]).exit_code == 0
    image = dataset / "imagesTr" / "c0.nii.gz"
    result = runner.invoke(
        app, ["predict", str(tmp_path / "runs"), str(image), "-o", str(tmp_path / "o"), "--precision", "fp8"]
    )
    assert result.exit_code == 2
    assert "unknown precision 'fp8'" in result.output


def test_predict_refuses_a_folder_without_packages(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.nii.gz"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "fold_*/model" in result.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_fold_cv_prints_the_summary(blobs: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, plan_file = blobs
    arguments = ["train", str(dataset), "--fold", "cv", "--plan", str(plan_file), "-o", str(tmp_path / "runs")]
    result = runner.invoke(app, [*arguments, "--epochs", "1", "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "# Cross-validation of Fake" in result.output
    assert (tmp_path / "runs" / "cv_summary.json").is_file()
