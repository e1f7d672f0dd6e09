"""LIDC-IDRI reader XML: parsing, errors that name the file, and contours measured in patient LPS mm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests import dicom_factory as factory
from vesalius.core.errors import InputError
from vesalius.io import read_volume
from vesalius.io.annotations.lidc import (
    SeriesGeometry,
    fill_contour,
    locus_to_world,
    measure_nodule,
    nodule_voxels,
    parse_lidc_xml,
    read_lidc_xml,
)

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
SOP_UIDS = tuple(f"1.2.826.0.1.3680043.8.498.2.{k}" for k in range(40))
Z0, DZ = -50.0, 2.0  # slice k lies at z = Z0 + k * DZ


def square(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """The corners of an axis-aligned square contour, as a reader's edgeMap could list them."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def roi_xml(k: int, points: Sequence[tuple[int, int]], inclusion: bool = True, uid: str | None = None) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (
        f"<roi><imageZposition>{Z0 + k * DZ:.6f} </imageZposition>"
        f"<imageSOP_UID>{uid or SOP_UIDS[k]}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


def nodule_xml(nodule_id: str, rois: Sequence[str], malignancy: int | None = None) -> str:
    ratings = (
        ""
        if malignancy is None
        else f"<characteristics><subtlety>4</subtlety><malignancy>{malignancy}</malignancy></characteristics>"
    )
    return f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{ratings}{''.join(rois)}</unblindedReadNodule>"


def non_nodule_xml(non_nodule_id: str, k: int, x: int, y: int) -> str:
    return (
        f"<nonNodule><nonNoduleID>{non_nodule_id}</nonNoduleID><imageZposition>{Z0 + k * DZ}</imageZposition>"
        f"<imageSOP_UID>{SOP_UIDS[k]}</imageSOP_UID><locus><xCoord>{x}</xCoord><yCoord>{y}</yCoord></locus></nonNodule>"
    )


def session_xml(reader: str, marks: Sequence[str]) -> str:
    return (
        "<readingSession><annotationVersion>3.12</annotationVersion>"
        f"<servicingRadiologistID>{reader}</servicingRadiologistID>{''.join(marks)}</readingSession>"
    )


def lidc_xml(sessions: Sequence[str], series_uid: str = SERIES_UID) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<LidcReadMessage uid="1.2.3" xmlns="http://www.nih.gov" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{series_uid}</SeriesInstanceUid>"
        "<StudyInstanceUID>1.2.826.0.1.3680043.8.498.3</StudyInstanceUID></ResponseHeader>"
        f"{''.join(sessions)}</LidcReadMessage>"
    )


def shifted_cube(dx: int, dy: int) -> list[str]:
    """A 21 x 21 pixel square on slices 10..12, shifted by (dx, dy) pixels: one reader's view of nodule A."""
    return [roi_xml(k, square(100 + dx, 100 + dy, 120 + dx, 120 + dy)) for k in (10, 11, 12)]


def four_reader_xml() -> str:
    """Readers 1-3 outline nodule A with slightly offset contours; reader 4 outlines nodule B elsewhere.
    Reader 1 also marks a nodule under 3 mm (one point) and a non-nodule."""
    return lidc_xml(
        [
            session_xml(
                "111",
                [
                    nodule_xml("A1", shifted_cube(0, 0), malignancy=4),
                    nodule_xml("small", [roi_xml(20, [(300, 50)])]),
                    non_nodule_xml("non-1", 30, 60, 70),
                ],
            ),
            session_xml("222", [nodule_xml("A2", shifted_cube(2, 0), malignancy=5)]),
            session_xml("333", [nodule_xml("A3", shifted_cube(0, -2))]),
            session_xml("444", [nodule_xml("B", [roi_xml(k, square(300, 300, 310, 310)) for k in (25, 26)], 2)]),
        ]
    )


def geometry() -> SeriesGeometry:
    """Axial, row spacing 0.6 mm and column spacing 0.5 mm (so i steps 0.5 mm and j 0.6 mm), 2 mm slices."""
    return SeriesGeometry.from_dicom(
        first_position=(-100.0, -120.0, Z0),
        orientation=(1, 0, 0, 0, 1, 0),
        pixel_spacing=(0.6, 0.5),
        slice_spacing=DZ,
        sop_instance_uids=SOP_UIDS,
    )


# parsing


def test_readers_nodules_ratings_small_nodules_and_non_nodules_are_read(tmp_path: Path) -> None:
    path = tmp_path / "069.xml"
    path.write_text(four_reader_xml())
    read = read_lidc_xml(path)
    assert read.series_instance_uid == SERIES_UID
    assert read.study_instance_uid == "1.2.826.0.1.3680043.8.498.3"
    assert [s.reader_id for s in read.sessions] == ["111", "222", "333", "444"]
    first = read.sessions[0]
    assert [n.nodule_id for n in first.nodules] == ["A1", "small"]
    a1, small = first.nodules
    assert (a1.malignancy, a1.characteristics["subtlety"], a1.is_small) == (4, 4, False)
    assert (small.malignancy, dict(small.characteristics), small.is_small) == (None, {}, True)
    roi = a1.rois[0]
    assert (roi.z_position, roi.sop_instance_uid, roi.inclusion) == (Z0 + 10 * DZ, SOP_UIDS[10], True)
    assert roi.edge == ((100, 100), (120, 100), (120, 120), (100, 120))
    (non_nodule,) = first.non_nodules
    assert (non_nodule.non_nodule_id, non_nodule.locus, non_nodule.z_position) == ("non-1", (60, 70), Z0 + 30 * DZ)
    assert read.sessions[2].nodules[0].malignancy is None  # a reader may leave the rating out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<LidcReadMessage", "not well-formed XML"),
        ('<IdriReadMessage xmlns="http://www.nih.gov"/>', "root element"),
        ('<LidcReadMessage xmlns="http://example.org"/>', "namespace http://www.nih.gov"),
        ('<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader/></LidcReadMessage>', "<SeriesInstanceUid>"),
        (lidc_xml([]), "no <readingSession>"),
        (lidc_xml([session_xml("9", [nodule_xml("N", [])])]), "nodule 'N' has no <roi>"),
        (lidc_xml([session_xml("9", [nodule_xml("N", [roi_xml(1, [])])])]), "no <edgeMap>"),
        (lidc_xml([session_xml("9", [nodule_xml("N", [roi_xml(1, [(1, 2)])], malignancy=7)])]), "1..5"),
        (
            lidc_xml([session_xml("9", [nodule_xml("N", [roi_xml(1, [(1, 2)]).replace("TRUE", "maybe")])])]),
            "TRUE or FALSE",
        ),
        (
            lidc_xml([session_xml("9", [nodule_xml("N", [roi_xml(1, [(1, 2)]).replace("-48.000000", "high")])])]),
            "<imageZposition> of reading session 1 \\(reader 9\\), nodule 'N', ROI 1 must be a number",
        ),
    ],
)
def test_malformed_or_wrong_schema_xml_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        read_lidc_xml(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_lidc_xml(tmp_path / "absent.xml")


# filling contours


def test_a_square_contour_fills_its_interior_and_its_outline() -> None:
    assert len(fill_contour(square(10, 10, 20, 20))) == 11 * 11
    assert len(fill_contour(square(10, 10, 20, 20), include_edge=False)) == 9 * 9
    assert fill_contour([(5, 7)]).tolist() == [[5, 7]]  # a nodule under 3 mm: one pixel


def test_a_dense_outline_fills_like_its_corners_and_a_disc_has_the_area_of_the_circle() -> None:
    dense = [(x, 10) for x in range(10, 21)] + [(20, y) for y in range(11, 21)]
    dense += [(x, 20) for x in range(19, 9, -1)] + [(10, y) for y in range(19, 10, -1)]
    assert np.array_equal(fill_contour(dense), fill_contour(square(10, 10, 20, 20)))
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    circle = {(round(50 + 30 * np.cos(a)), round(50 + 30 * np.sin(a))) for a in angles}
    ordered = sorted(circle, key=lambda p: math.atan2(p[1] - 50, p[0] - 50))
    assert len(fill_contour(ordered)) == pytest.approx(math.pi * 30**2, rel=0.05)


def test_an_exclusion_contour_cuts_a_hole_but_keeps_its_rim() -> None:
    xml = lidc_xml(
        [
            session_xml(
                "1", [nodule_xml("ring", [roi_xml(5, square(0, 0, 10, 10)), roi_xml(5, square(3, 3, 7, 7), False)])]
            )
        ]
    )
    (nodule,) = parse_lidc_xml(xml).sessions[0].nodules
    voxels = nodule_voxels(nodule, geometry())
    assert len(voxels) == 121 - 3 * 3  # the hole's strict interior, 4..6 x 4..6, is taken out
    assert not np.any(np.all(voxels == [5, 5, 5], axis=1))
    assert np.any(np.all(voxels == [3, 3, 5], axis=1))


# measuring in world coordinates


def test_centroid_volume_and_diameters_match_the_analytic_values_of_known_contours() -> None:
    """Slice 10: 11 x 11 pixels centred on pixel (110, 110); slice 11: 21 x 21 pixels, same centre."""
    xml = lidc_xml(
        [
            session_xml(
                "1",
                [nodule_xml("N", [roi_xml(10, square(105, 105, 115, 115)), roi_xml(11, square(100, 100, 120, 120))])],
            )
        ]
    )
    (nodule,) = parse_lidc_xml(xml).sessions[0].nodules
    measured = measure_nodule(nodule, geometry())
    voxel = 0.5 * 0.6 * DZ
    assert measured.n_voxels == 121 + 441
    assert measured.volume_mm3 == pytest.approx(562 * voxel)
    assert measured.diameter_mm == pytest.approx((6 * 562 * voxel / math.pi) ** (1 / 3))
    z = (121 * (Z0 + 10 * DZ) + 441 * (Z0 + 11 * DZ)) / 562  # area-weighted over the slices
    assert measured.centre == pytest.approx((-100.0 + 110 * 0.5, -120.0 + 110 * 0.6, z))
    assert measured.max_inplane_diameter_mm == pytest.approx(math.hypot(20 * 0.5, 20 * 0.6))


def test_slices_are_found_by_sop_uid_and_else_by_z_position() -> None:
    g = geometry()
    assert g.slice_index(SOP_UIDS[7], 999.0) == 7  # the UID wins over a wrong z
    assert g.slice_index("1.2.3.unknown", Z0 + 12 * DZ + 0.1) == 12
    with pytest.raises(InputError, match="no slice"):
        g.slice_index("1.2.3.unknown", Z0 + 12.5 * DZ)
    with pytest.raises(InputError, match="no slice"):
        g.slice_index("1.2.3.unknown", Z0 + 40 * DZ)  # past the last slice
    assert locus_to_world((10, 20), "1.2.3.unknown", Z0 + 3 * DZ, g) == pytest.approx((-95.0, -108.0, Z0 + 6.0))


def test_pixel_x_y_map_to_lps_as_image_position_and_orientation_say(tmp_path: Path) -> None:
    """On a real (generated) oblique DICOM series read by vesalius: edgeMap (x, y) on a slice lies at
    ImagePositionPatient + x * row cosine * column spacing + y * column cosine * row spacing."""
    affine = factory.oblique(spacing=(0.7, 0.8, 2.5))
    written = factory.write_series(tmp_path / "series", np.zeros((24, 20, 6)), affine)
    volume = read_volume(tmp_path / "series")
    g = SeriesGeometry.from_volume(volume)
    k, x, y = 4, 13, 7
    header = pydicom.dcmread(written.files[k], stop_before_pixels=True)
    position = np.asarray(header.ImagePositionPatient, dtype=float)
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    expected = position + x * orientation[:3] * column_spacing + y * orientation[3:] * row_spacing
    uid = str(header.SOPInstanceUID)
    assert locus_to_world((x, y), uid, float(position[2]), g) == pytest.approx(tuple(expected), abs=1e-4)
    rebuilt = SeriesGeometry.from_dicom(
        written_position(written.files[0]),
        orientation,
        (row_spacing, column_spacing),
        2.5,
        volume.identity.sop_instance_uids,
    )
    np.testing.assert_allclose(rebuilt.affine, g.affine, atol=1e-4)


def written_position(path: Path) -> list[float]:
    return [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
