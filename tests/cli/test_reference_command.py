"""`vesalius reference`: the LUNA16 reference standard of a chest CT from its LIDC reads."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vesalius.cli.main import app

runner = CliRunner()


@pytest.mark.shared_data
def test_lidc_idri_0001_gives_its_one_consensus_nodule_and_the_irrelevant_findings(
    shared_data: Path, tmp_path: Path
) -> None:
    series = shared_data / "lidc" / "LIDC-IDRI-0001"
    arguments = ["reference", str(series), "-o", str(tmp_path / "ref.csv"), "--excluded", str(tmp_path / "ex.csv")]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "4 readers; 1 nodule(s)" in result.output
    (nodule,) = list(csv.DictReader((tmp_path / "ref.csv").open()))
    assert nodule["seriesuid"].endswith("179049373636438705059720603192")
    centre = [float(nodule[c]) for c in ("coordX", "coordY", "coordZ")]
    assert centre == pytest.approx([56.4, 86.4, -115.8], abs=0.5)  # LUNA16 lists about (56.2, 86.3, -115.9)
    assert 20 < float(nodule["diameter_mm"]) < 28
    assert float(nodule["malignancy"]) == pytest.approx(4.75)
    excluded = list(csv.DictReader((tmp_path / "ex.csv").open()))
    assert excluded
    assert {row["finding"] for row in excluded} <= {"non-nodule", "small-nodule", "below-consensus"}


def test_a_series_without_a_read_asks_for_the_xml(tmp_path: Path) -> None:
    result = runner.invoke(app, ["reference", str(tmp_path), "-o", str(tmp_path / "ref.csv")])
    assert result.exit_code == 2
    assert "--xml" in result.output
    assert "0 XML files" in result.output


def test_training_the_nodule_model_on_a_series_without_a_read_asks_for_the_xml(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train-nodules", str(tmp_path), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--xml" in result.output
    assert not (tmp_path / "run").exists()
