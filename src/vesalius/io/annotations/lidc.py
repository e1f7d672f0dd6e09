"""LIDC-IDRI reader XML: per-reader nodule contours, characteristics and non-nodule marks, measured in mm.

An LIDC XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) holds one ``readingSession`` per
radiologist. Each ``unblindedReadNodule`` lists ROIs: one closed contour per slice (``edgeMap`` points in
pixel x = column, y = row), with ``inclusion`` FALSE marking a hole. Nodules a reader judged under 3 mm carry a
single-point ROI and no characteristics; they are kept and flagged ``is_small`` because LUNA16 treats them as
irrelevant findings rather than dropping them. This module reads no DICOM: the caller passes the series'
geometry (``SeriesGeometry.from_volume(read_volume(folder))``), whose affine maps voxel (i, j, k) to patient
LPS mm exactly as ``vesalius.core.volume.Volume`` does, i = edgeMap x, j = edgeMap y, k = the slice.
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume, make_affine

NAMESPACE = "http://www.nih.gov"
CHARACTERISTICS = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
_KEY = 1 << 20
"""Pixels (x, y) are encoded as x * _KEY + y so that set operations on them are numpy's 1-D ones."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

__all__ = [
    "NAMESPACE",
    "LidcRead",
    "NoduleMeasurement",
    "NonNodule",
    "ReaderNodule",
    "ReadingSession",
    "Roi",
    "SeriesGeometry",
    "fill_contour",
    "locus_to_world",
    "measure_nodule",
    "nodule_voxels",
    "parse_lidc_xml",
    "read_lidc_xml",
]


@dataclass(frozen=True)
class Roi:
    """One reader's contour of a nodule on one slice; ``inclusion`` False means the contour bounds a hole."""

    z_position: float
    sop_instance_uid: str
    inclusion: bool
    edge: tuple[tuple[int, int], ...]
    """(x, y) pixel points: x counts columns (voxel index i), y counts rows (voxel index j)."""


@dataclass(frozen=True)
class ReaderNodule:
    """A nodule as one reader marked it: contours on each slice and, for nodules of 3 mm or more, ratings."""

    nodule_id: str
    rois: tuple[Roi, ...]
    characteristics: Mapping[str, int] = field(default_factory=dict)

    @property
    def malignancy(self) -> int | None:
        """The reader's malignancy rating, 1 (highly unlikely) to 5 (highly suspicious); None when not rated."""
        return self.characteristics.get("malignancy")

    @property
    def is_small(self) -> bool:
        """True for a nodule the reader judged under 3 mm: LIDC records those as a single point per ROI."""
        return all(len(roi.edge) == 1 for roi in self.rois)


@dataclass(frozen=True)
class NonNodule:
    """A finding the reader judged not to be a nodule (scar, vessel...), marked by one point."""

    non_nodule_id: str
    z_position: float
    sop_instance_uid: str
    locus: tuple[int, int]


@dataclass(frozen=True)
class ReadingSession:
    """One radiologist's unblinded read; ``reader_id`` is ``servicingRadiologistID`` (anonymised in LIDC)."""

    reader_id: str
    nodules: tuple[ReaderNodule, ...]
    non_nodules: tuple[NonNodule, ...]


@dataclass(frozen=True)
class LidcRead:
    """Every reading session of one XML file and the series it annotates."""

    series_instance_uid: str
    sessions: tuple[ReadingSession, ...]
    study_instance_uid: str | None = None
    source: str = "<string>"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


class _Parser:
    """Walks one document; every failure names the file and the element."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.source}: not a valid LIDC read XML: {what}")

    def text(self, element: ET.Element, name: str, where: str) -> str:
        child = _child(element, name)
        if child is None or child.text is None or not child.text.strip():
            raise self.fail(f"{where} has no <{name}>")
        return child.text.strip()

    def number(self, element: ET.Element, name: str, where: str) -> float:
        text = self.text(element, name, where)
        try:
            value = float(text)
        except ValueError:
            raise self.fail(f"<{name}> of {where} must be a number, found {text!r}") from None
        if not math.isfinite(value):
            raise self.fail(f"<{name}> of {where} must be finite, found {text!r}")
        return value

    def point(self, element: ET.Element, where: str) -> tuple[int, int]:
        x, y = self.number(element, "xCoord", where), self.number(element, "yCoord", where)
        if x != int(x) or y != int(y) or x < 0 or y < 0:
            raise self.fail(f"{where} has a point ({x}, {y}) that is not a pixel index")
        return int(x), int(y)

    def roi(self, element: ET.Element, where: str) -> Roi:
        inclusion = self.text(element, "inclusion", where).upper()
        if inclusion not in ("TRUE", "FALSE"):
            raise self.fail(f"<inclusion> of {where} must be TRUE or FALSE, found {inclusion!r}")
        edge = tuple(self.point(e, where) for e in _children(element, "edgeMap"))
        if not edge:
            raise self.fail(f"{where} has no <edgeMap> point")
        return Roi(
            z_position=self.number(element, "imageZposition", where),
            sop_instance_uid=self.text(element, "imageSOP_UID", where),
            inclusion=inclusion == "TRUE",
            edge=edge,
        )

    def ratings(self, characteristics: ET.Element, where: str) -> dict[str, int]:
        ratings: dict[str, int] = {}
        for name in CHARACTERISTICS:
            child = _child(characteristics, name)
            if child is not None and child.text and child.text.strip():
                value = self.number(characteristics, name, where)
                if value != int(value):
                    raise self.fail(f"<{name}> of {where} must be an integer rating, found {value}")
                ratings[name] = int(value)
        return ratings

    def nodule(self, element: ET.Element, where: str) -> ReaderNodule:
        nodule_id = self.text(element, "noduleID", where)
        where = f"{where}, nodule {nodule_id!r}"
        characteristics = _child(element, "characteristics")
        ratings = self.ratings(characteristics, where) if characteristics is not None else {}
        malignancy = ratings.get("malignancy")
        if malignancy is not None and not 1 <= malignancy <= 5:
            raise self.fail(f"<malignancy> of {where} must lie in 1..5, found {malignancy}")
        rois = tuple(self.roi(roi, f"{where}, ROI {n + 1}") for n, roi in enumerate(_children(element, "roi")))
        if not rois:
            raise self.fail(f"{where} has no <roi>")
        return ReaderNodule(nodule_id=nodule_id, rois=rois, characteristics=ratings)

    def non_nodule(self, element: ET.Element, where: str) -> NonNodule:
        non_nodule_id = self.text(element, "nonNoduleID", where)
        where = f"{where}, non-nodule {non_nodule_id!r}"
        locus = _child(element, "locus")
        if locus is None:
            raise self.fail(f"{where} has no <locus>")
        return NonNodule(
            non_nodule_id=non_nodule_id,
            z_position=self.number(element, "imageZposition", where),
            sop_instance_uid=self.text(element, "imageSOP_UID", where),
            locus=self.point(locus, where),
        )

    def session(self, element: ET.Element, index: int) -> ReadingSession:
        reader = _child(element, "servicingRadiologistID")
        reader_id = reader.text.strip() if reader is not None and reader.text and reader.text.strip() else ""
        where = f"reading session {index + 1}" + (f" (reader {reader_id})" if reader_id else "")
        return ReadingSession(
            reader_id=reader_id or f"session-{index + 1}",
            nodules=tuple(self.nodule(n, where) for n in _children(element, "unblindedReadNodule")),
            non_nodules=tuple(self.non_nodule(n, where) for n in _children(element, "nonNodule")),
        )

    def document(self, root: ET.Element) -> LidcRead:
        if _local(root.tag) != "LidcReadMessage" or (
            root.tag.startswith("{") and not root.tag.startswith(f"{{{NAMESPACE}}}")
        ):
            raise self.fail(f"the root element is <{root.tag}>, expected <LidcReadMessage> in namespace {NAMESPACE}")
        header = _child(root, "ResponseHeader")
        if header is None:
            raise self.fail("there is no <ResponseHeader>")
        series = self.text(header, "SeriesInstanceUid", "<ResponseHeader>")
        study = _child(header, "StudyInstanceUID")
        sessions = _children(root, "readingSession")
        if not sessions:
            kind = "chest radiograph reads only" if _children(root, "CXRreadingSession") else "no <readingSession>"
            raise self.fail(f"{kind}; expected CT reading sessions")
        return LidcRead(
            series_instance_uid=series,
            sessions=tuple(self.session(s, n) for n, s in enumerate(sessions)),
            study_instance_uid=study.text.strip() if study is not None and study.text else None,
            source=self.source,
        )


def parse_lidc_xml(text: str | bytes, source: str = "<string>") -> LidcRead:
    """Parse an LIDC read XML given as text; ``source`` names it in error messages."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise InputError(f"{source}: not well-formed XML ({error})") from None
    return _Parser(source).document(root)


def read_lidc_xml(path: Path | str) -> LidcRead:
    """Read an LIDC read XML file (e.g. ``LIDC-IDRI-0001/069.xml``)."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise InputError(f"{source}: cannot read the file ({error.strerror})") from None
    return parse_lidc_xml(data, source=str(source))


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """Where the annotated series' pixels lie: the index-to-LPS affine of ``Volume`` and the slices' SOP UIDs.

    ROIs name their slice by SOP Instance UID and by z position; the UID is tried first, and the z position
    (Image Position (Patient) z of the slice) when the UID is unknown, as a few LIDC files name SOP UIDs that
    are not in the distributed series.
    """

    affine: FloatArray
    sop_instance_uids: tuple[str, ...] = ()
    n_slices: int | None = None

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise InputError(f"series geometry needs a non-singular 4x4 affine, got shape {affine.shape}")
        affine.flags.writeable = False
        object.__setattr__(self, "affine", affine)
        if self.n_slices is None and self.sop_instance_uids:
            object.__setattr__(self, "n_slices", len(self.sop_instance_uids))

    @classmethod
    def from_volume(cls, volume: Volume) -> SeriesGeometry:
        """The geometry of a series read by ``vesalius.io.read_volume``."""
        return cls(volume.affine, volume.identity.sop_instance_uids, volume.shape[2])

    @classmethod
    def from_dicom(
        cls,
        first_position: Sequence[float],
        orientation: Sequence[float],
        pixel_spacing: Sequence[float],
        slice_spacing: float,
        sop_instance_uids: Sequence[str] = (),
    ) -> SeriesGeometry:
        """From DICOM attributes: Image Position (Patient) of the first slice, Image Orientation (Patient)
        (row then column cosines), Pixel Spacing (between rows, between columns) and the signed step
        between slices along row x column; UIDs in slice order."""
        row, column = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:6], dtype=np.float64)
        direction = np.column_stack([row, column, np.cross(row, column)])
        spacing = (float(pixel_spacing[1]), float(pixel_spacing[0]), float(slice_spacing))
        return cls(make_affine(spacing, first_position, direction), tuple(sop_instance_uids))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def slice_index(self, sop_instance_uid: str, z_position: float, tolerance_mm: float | None = None) -> int:
        """The k index of the slice an ROI lies on: by SOP Instance UID, else by z position."""
        if sop_instance_uid in self.sop_instance_uids:
            return self.sop_instance_uids.index(sop_instance_uid)
        step = float(self.affine[2, 2])
        if abs(step) < 1e-6:
            raise InputError(
                f"SOP Instance UID {sop_instance_uid} is not in the series, and its slices do not advance along z, "
                f"so z position {z_position} cannot name one"
            )
        exact = (z_position - float(self.affine[2, 3])) / step
        k = round(exact)
        tolerance = 0.25 * abs(step) if tolerance_mm is None else tolerance_mm
        inside = self.n_slices is None or 0 <= k < self.n_slices
        if abs(exact - k) * abs(step) > tolerance or not inside:
            raise InputError(
                f"no slice of the series has SOP Instance UID {sop_instance_uid} or z = {z_position} mm "
                f"(nearest slice index {exact:.2f}, {self.n_slices} slices)"
            )
        return int(k)

    def to_world(self, indices: npt.ArrayLike) -> FloatArray:
        """LPS mm of voxel indices (..., 3) in (i, j, k) order."""
        points = np.asarray(indices, dtype=np.float64)
        return np.asarray(points @ self.affine[:3, :3].T + self.affine[:3, 3], dtype=np.float64)


def _encode(pixels: IntArray) -> IntArray:
    return np.asarray(pixels[:, 0] * _KEY + pixels[:, 1], dtype=np.int64)


def _outline(edge: IntArray) -> IntArray:
    """Every pixel on the closed polygon through ``edge``, consecutive points joined by straight lines."""
    closed = np.vstack([edge, edge[:1]])
    pieces = [edge]
    for start, stop in itertools.pairwise(closed):
        steps = int(np.abs(stop - start).max())
        if steps > 1:
            t = np.linspace(0.0, 1.0, steps + 1)[:, None]
            pieces.append(np.rint(start + t * (stop - start)).astype(np.int64))
    return np.unique(np.vstack(pieces), axis=0)


def _inside(edge: IntArray) -> IntArray:
    """Pixel centres strictly inside the polygon by the even-odd rule, one scan line (pixel row) at a time.

    Pixels exactly on an edge are left undecided here; the outline decides them.
    """
    x1, y1 = edge[:, 0].astype(np.float64), edge[:, 1].astype(np.float64)
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    rows = [np.empty((0, 2), dtype=np.int64)]
    for y in range(int(y1.min()), int(y1.max()) + 1):
        straddles = (y1 > y) != (y2 > y)
        if not straddles.any():
            continue
        a, b, c, d = x1[straddles], y1[straddles], x2[straddles], y2[straddles]
        crossings = np.sort(a + (y - b) * (c - a) / (d - b))
        xs = np.arange(math.ceil(crossings[0]), math.floor(crossings[-1]) + 1)
        beyond = crossings.size - np.searchsorted(crossings, xs, side="right")  # crossings right of each pixel
        odd = xs[beyond % 2 == 1]
        rows.append(np.column_stack([odd, np.full(odd.size, y)]).astype(np.int64))
    return np.vstack(rows)


def fill_contour(edge: Sequence[tuple[int, int]] | IntArray, include_edge: bool = True) -> IntArray:
    """(x, y) pixels of a closed contour: the interior and, with ``include_edge``, the outline itself.

    LIDC readers drew the outline on the nodule's outermost pixels, so the outline belongs to the nodule
    (pylidc counts it too); a single point fills one pixel.
    """
    points = np.asarray(edge, dtype=np.int64).reshape(-1, 2)
    outline = _outline(points)
    inside = _inside(points) if len(points) >= 3 else np.empty((0, 2), dtype=np.int64)
    keep = ~np.isin(_encode(inside), _encode(outline)) if inside.size else np.zeros(0, dtype=bool)
    parts = [inside[keep], outline] if include_edge else [inside[keep]]
    return np.unique(np.vstack(parts), axis=0)


def nodule_voxels(nodule: ReaderNodule, geometry: SeriesGeometry, include_edge: bool = True) -> IntArray:
    """(n, 3) voxel indices (i, j, k) of a reader's nodule: inclusion contours filled, holes taken out."""
    by_slice: dict[int, list[Roi]] = {}
    for roi in nodule.rois:
        by_slice.setdefault(geometry.slice_index(roi.sop_instance_uid, roi.z_position), []).append(roi)
    parts: list[IntArray] = []
    for k, rois in sorted(by_slice.items()):
        filled = [_encode(fill_contour(r.edge, include_edge)) for r in rois if r.inclusion]
        holes = [_encode(fill_contour(r.edge, include_edge=False)) for r in rois if not r.inclusion]
        kept = np.unique(np.concatenate(filled)) if filled else np.empty(0, dtype=np.int64)
        if holes:
            kept = np.setdiff1d(kept, np.concatenate(holes))
        parts.append(np.column_stack([kept // _KEY, kept % _KEY, np.full(kept.size, k)]))
    return np.vstack(parts).astype(np.int64) if parts else np.empty((0, 3), dtype=np.int64)


@dataclass(frozen=True)
class NoduleMeasurement:
    """Size and place of one reader's nodule, in patient LPS mm."""

    centre: tuple[float, float, float]
    volume_mm3: float
    diameter_mm: float
    """Diameter of the sphere of the same volume."""
    max_inplane_diameter_mm: float
    """Longest distance between two outline points on one slice."""
    n_voxels: int


def _longest_chord(points: FloatArray) -> float:
    if len(points) < 2:
        return 0.0
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt(np.max(np.sum(differences**2, axis=-1))))


def measure_nodule(nodule: ReaderNodule, geometry: SeriesGeometry, include_edge: bool = True) -> NoduleMeasurement:
    """Centroid (the mean of the filled voxels' centres, i.e. area-weighted over the slices), volume (filled
    voxels times the voxel volume), equivalent-sphere diameter and longest in-plane chord."""
    voxels = nodule_voxels(nodule, geometry, include_edge)
    if len(voxels) == 0:
        raise InputError(f"nodule {nodule.nodule_id!r} has no pixel inside its contours (only holes?)")
    centre = geometry.to_world(voxels).mean(axis=0)
    volume = len(voxels) * geometry.voxel_volume_mm3
    chords = [0.0]
    for roi in nodule.rois:
        if roi.inclusion:
            k = geometry.slice_index(roi.sop_instance_uid, roi.z_position)
            edge = np.asarray(roi.edge, dtype=np.float64)
            chords.append(_longest_chord(geometry.to_world(np.column_stack([edge, np.full(len(edge), k)]))))
    return NoduleMeasurement(
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        volume_mm3=float(volume),
        diameter_mm=float((6.0 * volume / math.pi) ** (1.0 / 3.0)),
        max_inplane_diameter_mm=max(chords),
        n_voxels=len(voxels),
    )


def locus_to_world(
    point: tuple[int, int], sop_instance_uid: str, z_position: float, geometry: SeriesGeometry
) -> tuple[float, float, float]:
    """LPS mm of a single marked pixel (a non-nodule locus or a small nodule's point)."""
    k = geometry.slice_index(sop_instance_uid, z_position)
    world = geometry.to_world([point[0], point[1], k])
    return (float(world[0]), float(world[1]), float(world[2]))
