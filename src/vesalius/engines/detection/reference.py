"""The LUNA16 reference standard from LIDC reads: reader marks clustered into nodules, kept by consensus.

LIDC's unblinded reads do not say which marks of different readers are the same nodule. Each reader's
nodule of 3 mm or more is measured (centre, volume, equivalent diameter) and the marks are clustered in world
coordinates; a cluster marked by at least ``min_readers`` readers whose mean diameter is at least
``min_diameter_mm`` is a reference nodule. As in LUNA16, every other mark (non-nodules, nodules under 3 mm,
nodules below consensus or below the size limit) is an irrelevant finding: a detection on it is neither a
true nor a false positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vesalius.core.errors import InputError
from vesalius.io.annotations.lidc import LidcRead, SeriesGeometry, locus_to_world, measure_nodule
from vesalius.io.annotations.luna import LunaAnnotation

FindingKind = Literal["non-nodule", "small-nodule", "below-consensus", "below-size"]

__all__ = [
    "FindingKind",
    "IrrelevantFinding",
    "Nodule",
    "ReaderMark",
    "ReferenceStandard",
    "cluster_marks",
    "irrelevant_findings",
    "reader_marks",
    "reference_nodules",
    "reference_standard",
    "to_luna_annotations",
]


@dataclass(frozen=True)
class ReaderMark:
    """One reader's nodule of 3 mm or more, measured; ``reader`` is the reading session's index."""

    reader: int
    nodule_id: str
    centre: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    malignancy: int | None = None


@dataclass(frozen=True)
class Nodule:
    """A reference nodule: the mean of its readers' marks."""

    seriesuid: str
    centre: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    malignancy: float | None
    """Mean rating over the readers who rated it; None when none did."""
    readers: int
    marks: tuple[ReaderMark, ...]


@dataclass(frozen=True)
class IrrelevantFinding:
    """A mark that is no reference nodule; detections within its radius are ignored in FROC."""

    seriesuid: str
    centre: tuple[float, float, float]
    diameter_mm: float | None
    """None for point marks (non-nodules, nodules under 3 mm), whose size is unknown."""
    kind: FindingKind
    readers: int = 1


@dataclass(frozen=True)
class ReferenceStandard:
    """The nodules of one series and the findings to ignore."""

    seriesuid: str
    nodules: tuple[Nodule, ...]
    irrelevant: tuple[IrrelevantFinding, ...]


def reader_marks(read: LidcRead, geometry: SeriesGeometry, include_edge: bool = True) -> list[ReaderMark]:
    """Every reader's nodule of 3 mm or more, measured on the series' grid (small nodules are left out)."""
    marks = []
    for reader, session in enumerate(read.sessions):
        for nodule in session.nodules:
            if nodule.is_small:
                continue
            measured = measure_nodule(nodule, geometry, include_edge)
            marks.append(
                ReaderMark(
                    reader=reader,
                    nodule_id=nodule.nodule_id,
                    centre=measured.centre,
                    diameter_mm=measured.diameter_mm,
                    volume_mm3=measured.volume_mm3,
                    malignancy=nodule.malignancy,
                )
            )
    return marks


def cluster_marks(marks: Sequence[ReaderMark], max_distance_mm: float | None = None) -> list[tuple[ReaderMark, ...]]:
    """Group marks of different readers that describe the same nodule.

    Single linkage with a cannot-link rule: pairs are taken from the closest up, and two marks are linked
    when their centres lie within ``max(radius_a, radius_b)`` of each other, i.e. one mark's centre lies
    inside the other nodule, the same rule LUNA16 uses to call a detection a hit; a fixed
    ``max_distance_mm`` replaces it when given. The radius rule scales with the nodule, so a 25 mm mass
    whose readers' centroids differ by 3 mm stays one nodule while two 4 mm nodules 3 mm apart stay two.
    Clusters are merged only when they share no reader, so a reader contributes at most one mark to a nodule
    (a reader's second mark of the same nodule stays a separate, one-reader cluster).
    """
    n = len(marks)
    if max_distance_mm is not None and not max_distance_mm > 0:
        raise InputError(f"max_distance_mm must be positive, got {max_distance_mm}")
    centres = np.asarray([m.centre for m in marks], dtype=np.float64).reshape(n, 3)
    radii = np.asarray([m.diameter_mm / 2.0 for m in marks], dtype=np.float64)
    distance = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)
    limit = np.maximum(radii[:, None], radii[None, :]) if max_distance_mm is None else np.full((n, n), max_distance_mm)
    parent = list(range(n))
    readers = [{m.reader} for m in marks]

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first, second = np.triu_indices(n, k=1)
    linked = distance[first, second] <= limit[first, second]
    order = np.argsort(distance[first, second][linked], kind="stable")
    for a, b in zip(first[linked][order], second[linked][order], strict=True):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb and not readers[ra] & readers[rb]:
            parent[rb] = ra
            readers[ra] |= readers[rb]
    groups: dict[int, list[ReaderMark]] = {}
    for i, mark in enumerate(marks):
        groups.setdefault(root(i), []).append(mark)
    return [tuple(group) for group in groups.values()]


def _mean_centre(points: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    centre = np.mean(points, axis=0)
    return (float(centre[0]), float(centre[1]), float(centre[2]))


def _nodule(seriesuid: str, cluster: Sequence[ReaderMark]) -> Nodule:
    ratings = [m.malignancy for m in cluster if m.malignancy is not None]
    return Nodule(
        seriesuid=seriesuid,
        centre=_mean_centre([m.centre for m in cluster]),
        diameter_mm=float(np.mean([m.diameter_mm for m in cluster])),
        volume_mm3=float(np.mean([m.volume_mm3 for m in cluster])),
        malignancy=float(np.mean(ratings)) if ratings else None,
        readers=len({m.reader for m in cluster}),
        marks=tuple(cluster),
    )


def _check(min_readers: int, min_diameter_mm: float) -> None:
    if min_readers < 1:
        raise InputError(f"min_readers must be at least 1, got {min_readers}")
    if not math.isfinite(min_diameter_mm) or min_diameter_mm < 0:
        raise InputError(f"min_diameter_mm must be a finite size in mm, got {min_diameter_mm}")


def reference_nodules(
    seriesuid: str,
    marks: Sequence[ReaderMark],
    min_readers: int = 3,
    min_diameter_mm: float = 3.0,
    max_distance_mm: float | None = None,
) -> tuple[list[Nodule], list[IrrelevantFinding]]:
    """Clusters accepted by ``min_readers`` readers with mean diameter of at least ``min_diameter_mm``, and
    the rejected clusters as irrelevant findings (LUNA16: 3 of 4 readers, 3 mm)."""
    _check(min_readers, min_diameter_mm)
    nodules, rejected = [], []
    for cluster in cluster_marks(marks, max_distance_mm):
        nodule = _nodule(seriesuid, cluster)
        if nodule.readers >= min_readers and nodule.diameter_mm >= min_diameter_mm:
            nodules.append(nodule)
        else:
            kind: FindingKind = "below-consensus" if nodule.readers < min_readers else "below-size"
            rejected.append(IrrelevantFinding(seriesuid, nodule.centre, nodule.diameter_mm, kind, nodule.readers))
    nodules.sort(key=lambda n: (-n.readers, -n.diameter_mm))
    return nodules, rejected


def irrelevant_findings(read: LidcRead, geometry: SeriesGeometry) -> list[IrrelevantFinding]:
    """Every reader's non-nodule mark and nodule under 3 mm, one finding per mark, size unknown."""
    findings = []
    for session in read.sessions:
        for non_nodule in session.non_nodules:
            centre = locus_to_world(non_nodule.locus, non_nodule.sop_instance_uid, non_nodule.z_position, geometry)
            findings.append(IrrelevantFinding(read.series_instance_uid, centre, None, "non-nodule"))
        for nodule in session.nodules:
            if nodule.is_small:
                points = [locus_to_world(r.edge[0], r.sop_instance_uid, r.z_position, geometry) for r in nodule.rois]
                findings.append(IrrelevantFinding(read.series_instance_uid, _mean_centre(points), None, "small-nodule"))
    return findings


def reference_standard(
    read: LidcRead,
    geometry: SeriesGeometry,
    min_readers: int = 3,
    min_diameter_mm: float = 3.0,
    max_distance_mm: float | None = None,
    include_edge: bool = True,
) -> ReferenceStandard:
    """The reference nodules of one LIDC series and its irrelevant findings, as LUNA16 built them."""
    marks = reader_marks(read, geometry, include_edge)
    nodules, rejected = reference_nodules(
        read.series_instance_uid, marks, min_readers, min_diameter_mm, max_distance_mm
    )
    return ReferenceStandard(
        seriesuid=read.series_instance_uid,
        nodules=tuple(nodules),
        irrelevant=tuple(rejected + irrelevant_findings(read, geometry)),
    )


def to_luna_annotations(findings: Sequence[Nodule | IrrelevantFinding]) -> list[LunaAnnotation]:
    """LUNA16 CSV rows (LPS world mm): nodules with malignancy, readers and volume; irrelevant findings with
    their size when known (-1 otherwise) and their kind in a ``finding`` column."""
    rows = []
    for finding in findings:
        x, y, z = finding.centre
        nodule = finding if isinstance(finding, Nodule) else None
        rows.append(
            LunaAnnotation(
                seriesuid=finding.seriesuid,
                coord_x=x,
                coord_y=y,
                coord_z=z,
                diameter_mm=finding.diameter_mm,
                malignancy=nodule.malignancy if nodule else None,
                readers=finding.readers,
                volume_mm3=nodule.volume_mm3 if nodule else None,
                extra={} if isinstance(finding, Nodule) else {"finding": finding.kind},
            )
        )
    return rows
