"""LUNA16-style CSV: annotations and candidates round-trip exactly; bad cells are named by file, line, column."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vesalius.core.errors import InputError
from vesalius.io.annotations.luna import (
    COORDINATE_SYSTEM,
    LunaAnnotation,
    LunaCandidate,
    read_annotations,
    read_candidates,
    write_annotations,
    write_candidates,
)

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def test_the_luna16_layout_reads_as_written_by_the_challenge(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{UID},-128.6994211,-175.3192718,-298.3875167,5.651470635\n"
        "\n"  # blank lines are skipped
        f"{UID},103.7836509,-211.9251487,-227.12,-1\n"  # excluded finding of unknown size
    )
    first, second = read_annotations(path)
    assert first.centre == (-128.6994211, -175.3192718, -298.3875167)
    assert (first.diameter_mm, first.malignancy, first.readers, first.extra) == (5.651470635, None, None, {})
    assert second.diameter_mm is None
    assert COORDINATE_SYSTEM == "LPS"


def test_annotations_with_optional_and_extra_columns_round_trip_exactly(tmp_path: Path) -> None:
    annotations = [
        LunaAnnotation(UID, 56.37017429558895, 86.36252525035705, -115.81, 24.28, 4.75, 4, 7518.67),
        LunaAnnotation(UID, -1.0 / 3.0, 2.0, 3.0, None, readers=1, extra={"finding": "non-nodule"}),
    ]
    path = write_annotations(tmp_path / "out" / "reference.csv", annotations)
    header = path.read_text().splitlines()[0]
    assert header == "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,readers,volume_mm3,finding"
    # a row without the extra column reads back with it empty
    assert read_annotations(path) == [replace(annotations[0], extra={"finding": ""}), annotations[1]]


def test_plain_annotations_are_written_without_optional_columns(tmp_path: Path) -> None:
    path = write_annotations(tmp_path / "a.csv", [LunaAnnotation(UID, 1.5, 2.5, 3.5, 6.0)])
    assert path.read_text() == f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1.5,2.5,3.5,6.0\n"


def test_candidates_round_trip_with_and_without_diameter(tmp_path: Path) -> None:
    plain = [LunaCandidate(UID, 1.0, 2.0, 3.0, 0.91), LunaCandidate("2.25", -4.125, 5.0, 6.0, 1e-7)]
    assert read_candidates(write_candidates(tmp_path / "p.csv", plain)) == plain
    assert "diameter_mm" not in (tmp_path / "p.csv").read_text()
    sized = [LunaCandidate(UID, 1.0, 2.0, 3.0, 0.5, 7.25), LunaCandidate(UID, 1.0, 2.0, 3.0, 0.25)]
    assert read_candidates(write_candidates(tmp_path / "s.csv", sized)) == sized


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("seriesuid,coordX,coordY,coordZ\n", "line 1: missing column\\(s\\) probability"),
        (
            "seriesuid,coordX,coordY,coordZ,probability\n1.2,1,2,3,0.5\n1.2,1,,3,0.5\n",
            "line 3, column 'coordY': value missing",
        ),
        (
            "seriesuid,coordX,coordY,coordZ,probability\n1.2,1,2,3,high\n",
            "line 2, column 'probability': expected a number, found 'high'",
        ),
        (
            "seriesuid,coordX,coordY,coordZ,probability\n1.2,nan,2,3,0.5\n",
            "line 2, column 'coordX': expected a finite number",
        ),
        ("seriesuid,coordX,coordY,coordZ,probability\n,1,2,3,0.5\n", "line 2, column 'seriesuid': value missing"),
    ],
)
def test_bad_candidate_files_name_the_file_line_and_column(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "candidates.csv"
    path.write_text(body)
    with pytest.raises(InputError, match=message) as caught:
        read_candidates(path)
    assert str(caught.value).startswith(str(path))


def test_bad_annotation_files_name_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "annotations.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,readers\n1.2,1,2,3,4,2.5\n")
    with pytest.raises(InputError, match=f"{path.name}, line 2, column 'readers': expected a count"):
        read_annotations(path)
    path.write_text("seriesuid,coordX,coordY,coordZ\n1.2,1,2,3\n")
    with pytest.raises(InputError, match="missing column\\(s\\) diameter_mm"):
        read_annotations(path)
    with pytest.raises(InputError, match="cannot read"):
        read_annotations(tmp_path / "absent.csv")
