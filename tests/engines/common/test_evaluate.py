"""evaluate_folders on small NIfTI label maps written with nibabel: known Dice, pairing, grids, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from vesalius.core.errors import EvaluationError
from vesalius.engines.common.evaluate import EvaluationReport, evaluate_folders

SHAPE = (12, 10, 8)
SPACING = (0.8, 0.8, 2.0)


def save(path: Path, labels: npt.NDArray[np.uint8], spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.diag([*spacing, 1.0])), path)
    return path


def label_map(box_1: tuple[int, int], box_2: tuple[int, int] | None = None) -> npt.NDArray[np.uint8]:
    """Class 1 fills rows box_1 of a 4x4x4 block, class 2 (optional) another block."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[box_1[0] : box_1[1], 1:5, 1:5] = 1
    if box_2 is not None:
        labels[box_2[0] : box_2[1], 6:9, 3:6] = 2
    return labels


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    save(ref / "case_a.nii.gz", label_map((1, 5), (6, 9)))
    save(pred / "case_a.nii.gz", label_map((1, 5), (6, 9)))  # perfect
    save(ref / "case_b.nii.gz", label_map((1, 5), (6, 9)))
    save(pred / "case_b.nii.gz", label_map((3, 7)))  # class 1 overlaps 2 of 4 rows; class 2 missing
    return pred, ref


def test_known_dice_per_case_and_summary(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred, ref = folders
    report = evaluate_folders(pred, ref, labels={1: "liver", 2: "tumour"}, output=tmp_path / "out")
    by_case = {case.case: case for case in report.cases}
    assert by_case["case_a"].classes[1].dice == 1.0
    assert by_case["case_a"].classes[2].hd95 == 0.0
    assert by_case["case_b"].classes[1].dice == pytest.approx(0.5)
    assert by_case["case_b"].classes[1].hd95 == pytest.approx(2 * 0.8)  # two rows of 0.8 mm
    assert by_case["case_b"].classes[2].dice == 0.0
    assert math.isnan(by_case["case_b"].classes[2].hd95)
    liver, tumour = report.classes
    assert (liver.name, liver.dice.mean, liver.dice.n) == ("liver", pytest.approx(0.75), 2)
    assert (tumour.n_empty_prediction, tumour.hd95.n, tumour.hd95.n_missing) == (1, 1, 1)
    assert report.foreground_mean.dice.mean == pytest.approx((1.0 + 0.25) / 2)
    assert report.missing_predictions == report.unmatched_predictions == []

    table = (tmp_path / "out" / "evaluation.md").read_text()
    assert table == report.to_table()
    assert "| liver (1) | 0.750 ± 0.354 [" in table
    assert "mean (foreground)" in table
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved["cases"][1]["classes"]["2"]["hd95"] is None
    reloaded = EvaluationReport.model_validate_json((tmp_path / "out" / "evaluation.json").read_text())
    assert reloaded.classes[0].dice == liver.dice


def test_classes_default_to_reference_labels(folders: tuple[Path, Path]) -> None:
    pred, ref = folders
    extra = label_map((1, 5), (6, 9))
    extra[10:, 8:, 6:] = 3  # a class no reference has: ignored
    save(pred / "case_a.nii.gz", extra)
    report = evaluate_folders(pred, ref)
    assert report.labels == {1: "label 1", 2: "label 2"}
    assert [row.label for row in report.classes] == [1, 2]


def test_missing_and_unmatched_predictions(folders: tuple[Path, Path]) -> None:
    pred, ref = folders
    save(ref / "case_c.nii.gz", label_map((1, 5)))
    save(pred / "case_z.nii.gz", label_map((1, 5)))
    (pred / "plans.json").write_text("{}")  # not an image: ignored
    report = evaluate_folders(pred, ref, labels={1: "liver"})
    assert report.missing_predictions == ["case_c"]
    assert report.unmatched_predictions == ["case_z"]
    missing = next(case for case in report.cases if case.case == "case_c")
    assert missing.prediction is None
    assert missing.classes[1].dice == 0.0
    assert report.classes[0].dice.n == 3
    assert report.classes[0].n_empty_prediction == 1
    table = report.to_table()
    assert "Missing predictions (scored Dice 0): case_c." in table
    assert "case_z" in table


def test_grid_mismatch_names_both_files(folders: tuple[Path, Path]) -> None:
    pred, ref = folders
    save(pred / "case_b.nii.gz", label_map((3, 7)), spacing=(0.8, 0.8, 2.5))
    with pytest.raises(EvaluationError, match=r"case_b\.nii\.gz.*ref.*case_b\.nii\.gz.*affine"):
        evaluate_folders(pred, ref)
    save(pred / "case_b.nii.gz", np.zeros((12, 10, 9), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_folders(pred, ref)


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    save(tmp_path / "ref" / "case_a.nii.gz", label_map((1, 5)))
    with pytest.raises(EvaluationError, match="no images found"):
        evaluate_folders(tmp_path / "empty", tmp_path / "ref")
    with pytest.raises(EvaluationError, match="no such folder"):
        evaluate_folders(tmp_path / "absent", tmp_path / "ref")
    save(tmp_path / "pred" / "other.nii.gz", label_map((1, 5)))
    with pytest.raises(EvaluationError, match=r"matches a reference in .* by name"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    save(tmp_path / "pred" / "case_a.nii", label_map((1, 5)))
    save(tmp_path / "pred" / "case_a.nii.gz", label_map((1, 5)))
    with pytest.raises(EvaluationError, match="appears twice"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")


def test_non_integer_labels_are_refused(tmp_path: Path) -> None:
    save(tmp_path / "ref" / "case_a.nii.gz", label_map((1, 5)))
    path = tmp_path / "pred" / "case_a.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(label_map((1, 5)).astype(np.float32) * 0.5, np.diag([*SPACING, 1.0])), path)
    with pytest.raises(EvaluationError, match="non-integer"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
