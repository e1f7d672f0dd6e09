"""The `vesalius` command: helpful --help, `info` and `convert`, and bad input as one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.dicom_factory import (
    axial,
    corrupt_compressed_pixels,
    gantry_tilted_series,
    oblique,
    random_values,
    truncate_pixel_data,
    write_series,
    write_text_file,
)
from vesalius.cli.main import app
from vesalius.core import LPS_TO_RAS

runner = CliRunner()


def invoke(*arguments: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in arguments])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("command", [[], ["info"], ["convert"]])
def test_every_command_has_help(command: list[str]) -> None:
    code, output = invoke(*command, "--help")
    assert code == 0
    assert "Usage" in output
    if command:
        assert "A DICOM file or folder" in output


def test_version() -> None:
    code, output = invoke("--version")
    assert code == 0
    assert output.startswith("vesalius ")


def test_info_lists_studies_series_problems_and_skipped_files(tmp_path: Path) -> None:
    ct = write_series(tmp_path / "a" / "ct", random_values((6, 7, 5)), axial(), series_uid="1.2.3.4.1")
    gapped = write_series(tmp_path / "b" / "mr", random_values((6, 7, 6)), oblique(), skip_slices=[3])
    write_text_file(tmp_path / "notes.txt")
    code, output = invoke("info", tmp_path)
    assert code == 0
    assert "2 studies, 2 series, 1 files skipped" in output
    assert ct.study_uid in output
    assert gapped.study_uid in output
    assert "6 x 7 x 5 voxels; 0.7 x 0.8 x 2.5 mm; orientation LPS" in output
    assert "problem: missing slices: about 1 missing" in output
    assert "notes.txt: not a DICOM file" in output


def test_info_on_a_nifti_file(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([-1.0, -2.0, 3.0, 1.0]))
    nib.save(image, tmp_path / "image.nii.gz")
    code, output = invoke("info", tmp_path / "image.nii.gz")
    assert code == 0
    assert "2 x 3 x 4 voxels, 1 x 2 x 3 mm, LPS" in output


def test_convert_writes_the_exact_geometry_and_hu(tmp_path: Path) -> None:
    series = write_series(tmp_path / "dicom", random_values((6, 7, 5)), oblique(), intercept=-1024.0)
    code, output = invoke("convert", series.folder, tmp_path / "out.nii.gz")
    assert code == 0, output
    image = nib.load(tmp_path / "out.nii.gz")
    assert np.allclose(image.affine, LPS_TO_RAS @ series.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(image.dataobj), series.array)


def test_convert_picks_the_named_series_and_asks_when_ambiguous(tmp_path: Path) -> None:
    first = write_series(tmp_path / "one", random_values((4, 4, 3)), axial())
    write_series(tmp_path / "two", random_values((5, 5, 3)), axial(), study_uid=first.study_uid)
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2
    assert "2 series found; choose one with --series UID" in output
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz", "--series", first.series_uid)
    assert code == 0, output
    assert nib.load(tmp_path / "x.nii.gz").shape == (4, 4, 3)


def test_a_gap_is_refused_naming_the_neighbouring_files(tmp_path: Path) -> None:
    series = write_series(tmp_path, random_values((4, 4, 6)), axial(), skip_slices=[2], file_names="index")
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2
    assert "missing slices" in output
    assert series.files[1].name in output
    assert series.files[2].name in output
    assert not (tmp_path / "x.nii.gz").exists()


def test_gantry_tilt_is_resampled_or_refused_on_request(tmp_path: Path) -> None:
    phantom = gantry_tilted_series(tmp_path / "tilt", tilt_deg=12.0)
    code, output = invoke("convert", phantom.series.folder, tmp_path / "t.nii.gz", "--on-tilt", "refuse")
    assert code == 2
    assert "gantry tilt of 12.00 degrees" in output
    code, output = invoke("convert", phantom.series.folder, tmp_path / "t.nii.gz")
    assert code == 0
    assert "resampled for a gantry tilt of 12.00 degrees" in output


def test_empty_folder(tmp_path: Path) -> None:
    code, output = invoke("info", tmp_path)
    assert code == 2
    assert "empty" in output


def test_folder_of_non_dicom_files(tmp_path: Path) -> None:
    write_text_file(tmp_path / "readme.md")
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2
    assert "no DICOM image found" in output
    assert "readme.md" in output


def test_truncated_file_is_named(tmp_path: Path) -> None:
    series = write_series(tmp_path, random_values((4, 4, 3)), axial(), file_names="index")
    truncate_pixel_data(series.files[1])
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2
    assert series.files[1].name in output
    assert "truncated" in output


def test_undecodable_pixel_data_names_file_and_transfer_syntax(tmp_path: Path) -> None:
    series = write_series(tmp_path, random_values((4, 4, 3)), axial(), file_names="index")
    corrupt_compressed_pixels(series.files[0])
    code, output = invoke("convert", tmp_path, tmp_path / "x.nii.gz")
    assert code == 2
    assert series.files[0].name in output
    assert "JPEG 2000" in output


def test_wrong_output_suffix(tmp_path: Path) -> None:
    series = write_series(tmp_path / "d", random_values((4, 4, 3)), axial())
    code, output = invoke("convert", series.folder, tmp_path / "out.png")
    assert code == 2
    assert ".nii or .nii.gz" in output


def test_info_json_is_machine_readable(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", random_values((6, 7, 5)), axial())
    write_series(tmp_path / "gap", random_values((4, 4, 6)), axial(), skip_slices=[2], study_uid=series.study_uid)
    write_text_file(tmp_path / "notes.txt")
    code, output = invoke("info", tmp_path, "--json")
    assert code == 0
    document = json.loads(output)
    (study,) = document["studies"]
    assert study["study_instance_uid"] == series.study_uid
    by_uid = {s["series_instance_uid"]: s for s in study["series"]}
    ct = by_uid[series.series_uid]
    assert ct["shape"] == [6, 7, 5]
    assert ct["spacing_mm"] == [0.7, 0.8, 2.5]
    assert ct["readable"] is True
    gapped = next(s for uid, s in by_uid.items() if uid != series.series_uid)
    assert gapped["readable"] is False
    assert any("missing slices" in p for p in gapped["problems"])
    assert [Path(s["path"]).name for s in document["skipped"]] == ["notes.txt"]
