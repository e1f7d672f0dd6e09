"""DICOM Segmentation (binary SEG) from a label map, built with highdicom and referencing the source series.

The label volume must lie exactly on the source series' grid: SEG frames point at source SOP instances, so
a label slice that does not match its source slice would put the mask in the wrong place in every viewer.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from vesalius import __version__
from vesalius.core.errors import InputError
from vesalius.core.results import ModelIdentity, SegmentationResult
from vesalius.core.volume import Volume
from vesalius.writers.uids import derived_uid

__all__ = [
    "MANUFACTURER",
    "algorithm_identification",
    "coded_concept",
    "match_source_slices",
    "segment_codes",
    "segmentation_to_seg",
    "write_dicom",
]

MANUFACTURER = "Vesalius"
_POSITION_TOLERANCE_MM = 0.01
_DIRECTION_TOLERANCE = 1e-4

_ANATOMY = frozenset(
    {"Lung", "Liver", "Spleen", "Kidney", "Pancreas", "Heart", "Aorta", "Brain", "Bone", "Prostate", "Bladder"}
    | {"Stomach", "Gallbladder", "Esophagus", "Trachea", "Vertebra", "Colon"}
)
_ABNORMALITY = frozenset({"Nodule", "Tumor", "Neoplasm", "Lesion", "Mass"})
_ALIASES = {"Tumour": "Tumor", "Oesophagus": "Esophagus", "LungNodule": "Nodule"}


def segment_codes(label_name: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """Segmented property (category, type) for a label name.

    Known organs and lesions get their SNOMED CT concept; any other name gets the generic SCT "Tissue" for
    both, with the name itself carried in SegmentLabel, rather than a made-up code a receiver would trust.
    """
    keyword = "".join(word.capitalize() for word in re.split(r"[^A-Za-z0-9]+", label_name) if word)
    keyword = _ALIASES.get(keyword, keyword)
    if keyword in _ANATOMY:
        return coded_concept(codes.SCT.AnatomicalStructure), coded_concept(getattr(codes.SCT, keyword))
    if keyword in _ABNORMALITY:
        return coded_concept(codes.SCT.MorphologicallyAbnormalStructure), coded_concept(getattr(codes.SCT, keyword))
    return coded_concept(codes.SCT.Tissue), coded_concept(codes.SCT.Tissue)


def coded_concept(code: Code) -> hd.sr.CodedConcept:
    """A pydicom ``Code`` as a highdicom ``CodedConcept`` (value, scheme, meaning; no scheme version)."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


def algorithm_identification(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """Which model made the segments (name, version, package hash), as SEG's Segment Description requires."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version[:64],
        source=MANUFACTURER,
        parameters={"model_sha256": model.sha256},
    )


def _series_label(datasets: Sequence[pydicom.Dataset]) -> str:
    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "?")) for ds in datasets})
    return ", ".join(uids) if uids else "(no source datasets)"


def _slice_by_position(labels: Volume, source: Sequence[pydicom.Dataset], series: str) -> list[pydicom.Dataset]:
    """Source datasets in label k order, found by where each slice lies on the label grid."""
    by_k: dict[int, pydicom.Dataset] = {}
    for ds in source:
        if "ImagePositionPatient" not in ds:
            raise InputError(f"series {series}: instance {ds.SOPInstanceUID} has no ImagePositionPatient")
        index = labels.world_to_index([float(v) for v in ds.ImagePositionPatient])
        k = round(float(index[2]))
        off_grid = abs(float(index[2]) - k) > 1e-3 or not (0 <= k < labels.shape[2])
        if off_grid or k in by_k:
            raise InputError(
                f"series {series}: instance {ds.SOPInstanceUID} does not lie on its own slice of the label grid"
            )
        by_k[k] = ds
    missing = [k for k in range(labels.shape[2]) if k not in by_k]
    if missing:
        raise InputError(f"series {series}: no source instance for label slices {missing[:8]}")
    return [by_k[k] for k in range(labels.shape[2])]


def match_source_slices(labels: Volume, source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The source datasets in the label volume's k order, after checking that each one is that slice.

    Slices are matched by ``labels.identity.sop_instance_uids`` when the volume carries them, else by position.
    Raises InputError naming the series when the grids differ (size, spacing, orientation, position).
    """
    series = labels.identity.series_instance_uid or _series_label(source)
    if labels.array.ndim != 3:
        raise InputError(f"series {series}: a label map must be 3-D, got shape {labels.array.shape}")
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in source):
        raise InputError(f"series {series}: multi-frame source images are not supported by the SEG writer yet")
    uids = labels.identity.sop_instance_uids
    if uids:
        by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
        absent = [uid for uid in uids if uid not in by_uid]
        if absent or len(uids) != labels.shape[2]:
            raise InputError(
                f"series {series}: the label volume has {labels.shape[2]} slices and names {len(uids)} source "
                f"instances, {len(absent)} of them not among the {len(source)} source datasets given"
            )
        ordered = [by_uid[uid] for uid in uids]
    else:
        ordered = _slice_by_position(labels, source, series)
    for k, ds in enumerate(ordered):
        problem = _grid_problem(labels, ds, k)
        if problem:
            raise InputError(f"series {series}: label slice {k} is not on instance {ds.SOPInstanceUID}: {problem}")
    if len({str(ds.FrameOfReferenceUID) for ds in ordered}) != 1:
        raise InputError(f"series {series}: source instances have different FrameOfReferenceUIDs")
    return ordered


def _grid_problem(labels: Volume, ds: pydicom.Dataset, k: int) -> str | None:
    """What differs between label slice ``k`` and a source image, or None when they sample the same points."""
    size_i, size_j, _ = labels.shape
    if (int(ds.Rows), int(ds.Columns)) != (size_j, size_i):
        return f"image is {ds.Rows} rows x {ds.Columns} columns, labels are {size_j} x {size_i}"
    spacing = np.array([float(v) for v in ds.PixelSpacing])
    expected_spacing = labels.spacing[[1, 0]]
    if not np.allclose(spacing, expected_spacing, atol=1e-3, rtol=1e-4):
        return f"PixelSpacing {spacing.tolist()} mm, labels {expected_spacing.tolist()} mm"
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    expected_orientation = np.concatenate([labels.direction[:, 0], labels.direction[:, 1]])
    if not np.allclose(orientation, expected_orientation, atol=_DIRECTION_TOLERANCE):
        return f"ImageOrientationPatient {orientation.tolist()}, labels {expected_orientation.round(6).tolist()}"
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    expected_position = labels.index_to_world([0.0, 0.0, float(k)])
    if not np.allclose(position, expected_position, atol=_POSITION_TOLERANCE_MM):
        return f"ImagePositionPatient {position.tolist()}, labels {expected_position.round(4).tolist()}"
    return None


def _segment_masks(labels: Volume, label_indices: Sequence[int]) -> npt.NDArray[np.bool_]:
    """Binary masks shaped (frames = k, rows = j, columns = i, segments), as highdicom expects."""
    frames = np.transpose(np.asarray(labels.array), (2, 1, 0))
    return np.stack([frames == index for index in label_indices], axis=-1)


def segmentation_to_seg(
    result: SegmentationResult,
    source: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9001,
    manufacturer: str = MANUFACTURER,
    series_description: str | None = None,
) -> hd.seg.Segmentation:
    """A binary DICOM SEG with one segment per named label, referencing the source instances slice by slice.

    Segment numbers follow the sorted label values (1, 2, ...); SegmentLabel is the label name. Series and SOP
    Instance UIDs derive from (source series, model hash), so a repeated job produces the same instance.
    A label with no voxel still gets its segment description (and no frame), so segment numbers stay stable;
    when no label has a voxel, highdicom keeps all frames, empty.
    """
    ordered = match_source_slices(result.labels, source)
    series_uid = str(ordered[0].SeriesInstanceUID)
    label_indices = sorted(result.label_names)
    if not label_indices:
        raise InputError(f"series {series_uid}: the segmentation result names no labels")
    algorithm = algorithm_identification(result.model)
    descriptions = []
    for number, index in enumerate(label_indices, start=1):
        name = result.label_names[index]
        category, property_type = segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=derived_uid(series_uid, result.model.sha256, "seg-segment", str(index)),
                tracking_id=f"{name[:48]} ({index})",
            )
        )
    masks = _segment_masks(result.labels, label_indices)
    return hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid(series_uid, result.model.sha256, "seg-series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, result.model.sha256, "seg-instance"),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=result.model.name[:64],
        software_versions=f"vesalius {__version__}",
        device_serial_number=result.model.sha256[:64],
        content_description=(series_description or f"{result.model.name} segmentation")[:64],
        content_label="VESALIUS_SEG",
        series_description=(series_description or f"{result.model.name} {result.model.version} SEG")[:64],
    )


def write_dicom(dataset: pydicom.Dataset, folder: Path | str) -> Path:
    """Save ``dataset`` as ``<SOPInstanceUID>.dcm`` in ``folder``, atomically (a reader never sees half a file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    handle, scratch = tempfile.mkstemp(prefix=".writing-", suffix=".dcm", dir=folder)
    os.close(handle)
    try:
        dataset.save_as(scratch, enforce_file_format=True)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return path
