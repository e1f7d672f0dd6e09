"""`vesalius evaluate PRED_DIR GT_DIR`: prints the per-class table and saves JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from vesalius.cli.main import app

runner = CliRunner()


def _save(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), path)


def test_evaluate_prints_and_saves_the_table(tmp_path: Path) -> None:
    reference = np.zeros((10, 10, 6), dtype=np.uint8)
    reference[2:6, 2:6, 1:4] = 1
    prediction = np.zeros_like(reference)
    prediction[4:8, 2:6, 1:4] = 1  # half of the reference rows: Dice 0.5
    _save(tmp_path / "ref" / "case.nii.gz", reference)
    _save(tmp_path / "pred" / "case.nii.gz", prediction)
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "| label 1 (1) | 0.500 ± n/a [0.500, 0.500] | 2.00 ± n/a [2.00, 2.00] |" in result.output
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved["cases"][0]["case"] == "case"
    assert "| label 1 (1) | 0.500" in (tmp_path / "out" / "evaluation.md").read_text()


def test_evaluate_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
