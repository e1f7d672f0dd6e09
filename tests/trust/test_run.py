"""`vesalius explain` and `predict --explain --uncertainty`: every input gets its maps on its own grid, overlays,
DICOM objects for DICOM inputs, a case report and a trust.csv row; an abstain policy flags for review."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from typer.testing import CliRunner

import tests.dicom_factory as factory
from tests.engines.segmentation.test_predict import make_package
from tests.engines.segmentation.test_preprocess import tiny_plan
from tests.trust.test_uncertainty import make_classifier
from vesalius.cli.main import app
from vesalius.core.errors import InputError
from vesalius.engines.common.plan import ZScoreNormalization
from vesalius.io import read_volume
from vesalius.trust.abstain import AbstainPolicy
from vesalius.trust.case import TrustSettings
from vesalius.trust.run import read_policy, run_trust

runner = CliRunner()


def policy(threshold: float) -> AbstainPolicy:
    return AbstainPolicy(
        score="predictive_entropy",
        threshold=threshold,
        target_accuracy=0.99,
        validation_n=10,
        validation_coverage=0.5,
        validation_accuracy_kept=1.0,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two grey PNGs, 20 rows x 28 columns: not the network's 16 x 16, so maps must be resized back."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("first.png", "second.png"):
        Image.fromarray(rng.integers(0, 255, (20, 28), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def classification_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cls") / "model"
    make_classifier(folder, seed=0)
    return folder


def rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_image_gets_a_map_on_its_pixels_an_overlay_a_report_and_a_flag(
    classification_package: Path, images: list[Path], tmp_path: Path
) -> None:
    settings = TrustSettings(explain="gradcam", uncertainty="tta", policy=policy(-math.inf))
    table = run_trust(classification_package, images, tmp_path, settings, device="cpu")

    found = rows(table)
    assert [Path(row["input"]).name for row in found] == ["first.png", "second.png"]
    for row in found:
        assert row["flagged"] == "true"  # a threshold of -inf sends every case to a reader
        assert float(row["predictive_entropy"]) >= float(row["mutual_information"]) >= 0.0
        assert row["sanity_passed"] in ("true", "false")
        assert row["explanation"] == "gradcam"
    heat = nib.load(tmp_path / "first.heatmap.nii.gz")
    assert heat.shape[:2] == (28, 20)  # columns, rows of the PNG, not the network's 16 x 16
    assert float(np.min(heat.get_fdata())) >= 0.0
    assert float(np.max(heat.get_fdata())) <= 1.0
    assert Image.open(tmp_path / "first.overlay1.png").size == (280, 200)  # 28 x 20 enlarged by whole pixels
    report = (tmp_path / "first.report.html").read_text()
    assert "Flagged for review" in report
    assert "gradcam" in report


def test_no_case_is_flagged_below_a_threshold_it_cannot_reach(
    classification_package: Path, images: list[Path], tmp_path: Path
) -> None:
    settings = TrustSettings(explain=None, uncertainty="mc_dropout", passes=3, policy=policy(math.inf))
    table = run_trust(classification_package, images[:1], tmp_path, settings, device="cpu")
    (row,) = rows(table)
    assert row["flagged"] == "false"
    assert row["explanation"] == ""
    assert row["sanity_spearman"] == ""
    assert not (tmp_path / "first.heatmap.nii.gz").exists()
    report = (tmp_path / "first.report.html").read_text()
    assert "Flagged for review" not in report
    assert "is within the review threshold" in report


def test_a_policy_reading_a_score_the_method_does_not_give_is_refused(
    classification_package: Path, images: list[Path], tmp_path: Path
) -> None:
    settings = TrustSettings(explain=None, uncertainty=None, policy=policy(0.5))
    with pytest.raises(InputError, match="predictive_entropy"):
        run_trust(classification_package, images[:1], tmp_path, settings, device="cpu")


def test_a_dicom_series_gets_maps_on_its_grid_and_a_parametric_map_and_capture_in_its_study(tmp_path: Path) -> None:
    plan = tiny_plan(target_spacing=(1.0, 1.0, 2.0), normalization=[ZScoreNormalization()])
    package = make_package(tmp_path / "seg", seed=1, plan=plan)
    values = factory.random_values((24, 20, 10), seed=2)
    written = factory.write_series(tmp_path / "ct", values, factory.axial(spacing=(0.9, 0.8, 2.5)))
    settings = TrustSettings(explain="gradcam", uncertainty="tta")

    table = run_trust(package.folder, [written.folder], tmp_path / "out", settings, device="cpu")

    volume = read_volume(written.folder)
    stem = Path(rows(table)[0]["report"]).name.removesuffix(".report.html")
    for name in ("labels", "heatmap", "entropy", "mutual_information", "variance"):
        image = nib.load(tmp_path / "out" / f"{stem}.{name}.nii.gz")
        assert image.shape[:3] == volume.shape  # exactly the input grid
    dicom = [pydicom.dcmread(path) for path in sorted((tmp_path / "out" / f"{stem}.dicom").glob("*.dcm"))]
    assert len(dicom) == 2  # one Parametric Map of the heat, one Secondary Capture of the overlay
    assert {str(ds.StudyInstanceUID) for ds in dicom} == {written.study_uid}
    sop_classes = {str(ds.SOPClassUID) for ds in dicom}
    assert "1.2.840.10008.5.1.4.1.1.30" in sop_classes  # Parametric Map Storage
    assert "1.2.840.10008.5.1.4.1.1.7" in sop_classes  # Secondary Capture Image Storage


def test_predict_with_explain_and_uncertainty_adds_the_trust_folder(
    classification_package: Path, images: list[Path], tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["predict", str(classification_package), *map(str, images), "-o", str(tmp_path), "--device", "cpu",
         "--explain", "--uncertainty"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "predictions.csv").is_file()
    assert len(rows(tmp_path / "trust" / "trust.csv")) == 2
    assert (tmp_path / "trust" / "second.report.html").is_file()


def test_explain_command_takes_a_method_and_refuses_an_unknown_one(
    classification_package: Path, images: list[Path], tmp_path: Path
) -> None:
    ok = runner.invoke(
        app,
        ["explain", str(classification_package), str(images[0]), "-o", str(tmp_path), "--method", "occlusion",
         "--uncertainty", "softmax", "--no-sanity-check", "--device", "cpu"],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert rows(tmp_path / "trust.csv")[0]["explanation"] == "occlusion"
    assert "No review policy was given" in (tmp_path / "first.report.html").read_text()
    bad = runner.invoke(
        app, ["explain", str(classification_package), str(images[0]), "-o", str(tmp_path), "--method", "x"]
    )
    assert bad.exit_code != 0
    assert "unknown" in bad.output


def test_a_policy_file_that_is_not_one_is_named(tmp_path: Path) -> None:
    file = tmp_path / "policy.json"
    file.write_text('{"threshold": "high"}')
    with pytest.raises(InputError, match=r"policy\.json: not an abstain policy"):
        read_policy(file)
    with pytest.raises(InputError, match="no such abstain-policy file"):
        read_policy(tmp_path / "missing.json")
    file.write_text(policy(0.25).model_dump_json())
    assert read_policy(file).threshold == 0.25


def test_a_dicom_radiograph_gets_a_secondary_capture_in_its_study(classification_package: Path, tmp_path: Path) -> None:
    radiograph = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    if radiograph is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    settings = TrustSettings(explain="gradcam", uncertainty=None, sanity_check=False)
    run_trust(classification_package, [Path(radiograph)], tmp_path, settings, device="cpu")
    (capture,) = [pydicom.dcmread(p) for p in (tmp_path / "RG1_UNCR.dicom").glob("*.dcm")]
    source = pydicom.dcmread(radiograph, stop_before_pixels=True)
    assert str(capture.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.PatientID == source.PatientID
