"""The reference standard: reader marks clustered into nodules, kept by consensus, the rest irrelevant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.io.annotations.test_lidc import four_reader_xml, geometry, lidc_xml, nodule_xml, roi_xml, session_xml, square
from vesalius.core.errors import InputError
from vesalius.engines.detection.reference import (
    ReaderMark,
    cluster_marks,
    reference_nodules,
    reference_standard,
    to_luna_annotations,
)
from vesalius.io.annotations.lidc import SeriesGeometry, parse_lidc_xml, read_lidc_xml
from vesalius.io.annotations.luna import read_annotations, write_annotations

CUBE_DIAMETER = (6 * 21 * 21 * 3 * (0.5 * 0.6 * 2.0) / math.pi) ** (1 / 3)
"""Equivalent diameter of the 21 x 21 pixel, 3-slice cube each reader of nodule A outlines (about 9.4 mm)."""


def mark(
    reader: int, centre: tuple[float, float, float], diameter: float = 6.0, malignancy: int | None = 3
) -> ReaderMark:
    return ReaderMark(reader, f"r{reader}", centre, diameter, math.pi * diameter**3 / 6, malignancy)


def test_three_readers_of_four_make_one_nodule_with_mean_centre_size_and_malignancy() -> None:
    standard = reference_standard(parse_lidc_xml(four_reader_xml()), geometry())
    (nodule,) = standard.nodules
    assert nodule.readers == 3
    assert nodule.malignancy == pytest.approx(4.5)  # readers rated 4 and 5; the third gave no rating
    # centroids at pixels (110, 110), (112, 110), (110, 108) on slice 11; i steps 0.5 mm, j 0.6 mm
    assert nodule.centre == pytest.approx((-100 + 0.5 * 332 / 3, -120 + 0.6 * 328 / 3, -50 + 11 * 2.0))
    assert nodule.diameter_mm == pytest.approx(CUBE_DIAMETER)
    assert nodule.volume_mm3 == pytest.approx(21 * 21 * 3 * 0.6)
    kinds = sorted(f.kind for f in standard.irrelevant)
    assert kinds == ["below-consensus", "non-nodule", "small-nodule"]  # reader 4's nodule B, and the point marks
    below = next(f for f in standard.irrelevant if f.kind == "below-consensus")
    assert (below.readers, below.centre[2]) == (1, pytest.approx(-50 + 25.5 * 2.0))


def test_the_consensus_and_the_size_limit_are_parameters() -> None:
    read = parse_lidc_xml(four_reader_xml())
    assert len(reference_standard(read, geometry(), min_readers=1).nodules) == 2
    assert [n.readers for n in reference_standard(read, geometry(), min_readers=1).nodules] == [3, 1]
    assert reference_standard(read, geometry(), min_readers=4).nodules == ()
    too_small = reference_standard(read, geometry(), min_diameter_mm=CUBE_DIAMETER + 0.1)
    assert too_small.nodules == ()
    assert "below-size" in {f.kind for f in too_small.irrelevant}
    with pytest.raises(InputError, match="min_readers"):
        reference_standard(read, geometry(), min_readers=0)


def test_marks_link_when_one_centre_lies_inside_the_other_nodule() -> None:
    marks = [mark(0, (0, 0, 0), 10.0), mark(1, (4.9, 0, 0), 4.0), mark(2, (20, 0, 0), 10.0), mark(3, (25.1, 0, 0))]
    groups = sorted(sorted(m.reader for m in g) for g in cluster_marks(marks))
    assert groups == [[0, 1], [2], [3]]  # 4.9 mm <= the larger radius 5 mm; 5.1 mm > 5 mm
    fixed = sorted(sorted(m.reader for m in g) for g in cluster_marks(marks, max_distance_mm=6.0))
    assert fixed == [[0, 1], [2, 3]]


def test_a_reader_contributes_at_most_one_mark_per_nodule() -> None:
    """Reader 0 marked the same nodule twice; the closer mark joins reader 1, the other stays alone."""
    marks = [mark(0, (0, 0, 0)), mark(0, (1, 0, 0)), mark(1, (0.5, 0.2, 0))]
    groups = cluster_marks(marks)
    assert sorted(len(g) for g in groups) == [1, 2]
    assert all(len({m.reader for m in g}) == len(g) for g in groups)
    nodules, rejected = reference_nodules("1.2", marks, min_readers=2)
    assert [n.readers for n in nodules] == [2]
    assert [f.readers for f in rejected] == [1]


def test_single_linkage_chains_marks_of_a_large_nodule() -> None:
    marks = [mark(0, (0, 0, 0), 8.0), mark(1, (3.5, 0, 0), 8.0), mark(2, (7.0, 0, 0), 8.0)]  # ends 7 mm apart
    (group,) = cluster_marks(marks)
    assert len(group) == 3


def test_malignancy_is_none_when_no_reader_rated_it() -> None:
    marks = [mark(r, (0.1 * r, 0, 0), malignancy=None) for r in range(3)]
    (nodule,), _ = reference_nodules("1.2", marks)
    assert nodule.malignancy is None


def test_the_reference_standard_writes_as_luna16_csv(tmp_path: Path) -> None:
    standard = reference_standard(parse_lidc_xml(four_reader_xml()), geometry())
    nodules = read_annotations(write_annotations(tmp_path / "annotations.csv", to_luna_annotations(standard.nodules)))
    (row,) = nodules
    assert (row.seriesuid, row.readers, row.malignancy) == (standard.seriesuid, 3, 4.5)
    assert row.centre == standard.nodules[0].centre
    assert row.diameter_mm == standard.nodules[0].diameter_mm
    excluded = read_annotations(write_annotations(tmp_path / "excluded.csv", to_luna_annotations(standard.irrelevant)))
    assert sorted(r.extra["finding"] for r in excluded) == ["below-consensus", "non-nodule", "small-nodule"]
    assert sum(r.diameter_mm is None for r in excluded) == 2  # point marks: size unknown, written as -1


def test_an_roi_on_a_slice_the_series_lacks_is_an_input_error() -> None:
    xml = lidc_xml([session_xml("1", [nodule_xml("N", [roi_xml(3, square(1, 1, 9, 9), uid="9.9")])])])
    short = SeriesGeometry(geometry().affine, n_slices=2)
    with pytest.raises(InputError, match="no slice"):
        reference_standard(parse_lidc_xml(xml), short)


@pytest.mark.shared_data
def test_lidc_idri_0001_has_one_nodule_rated_malignant_by_all_four_readers(shared_data: Path) -> None:
    folder = shared_data / "lidc" / "LIDC-IDRI-0001"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from vesalius.io import read_volume

    read = read_lidc_xml(folder / "069.xml")
    volume = read_volume(folder)
    assert volume.identity.series_instance_uid == read.series_instance_uid
    standard = reference_standard(read, SeriesGeometry.from_volume(volume), min_readers=3)
    (nodule,) = standard.nodules
    # measured: 4 readers, malignancy 4.75 (5, 5, 5, 4), equivalent diameter 24.3 mm, 7519 mm3,
    # centre (56.4, 86.4, -115.8) LPS mm
    assert nodule.readers == 4
    assert nodule.malignancy is not None
    assert 4.0 <= nodule.malignancy <= 5.0
    assert nodule.malignancy == pytest.approx(4.75)
    assert 20.0 < nodule.diameter_mm < 30.0
    assert nodule.volume_mm3 == pytest.approx(math.pi * nodule.diameter_mm**3 / 6, rel=0.05)
    assert np.allclose(nodule.centre, (56.4, 86.4, -115.8), atol=0.5)
    assert {f.kind for f in standard.irrelevant} == {"non-nodule", "small-nodule"}
