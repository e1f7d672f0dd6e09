"""The gateway's job processor: a study folder in; SEG, SR, a FHIR bundle and a summary out; delivered back.

`StudyProcessor` is what `WorkerPool` runs in each spawned worker process, so it holds only settings, rules and
folders (the model registry loads its packages in the worker, on first use). For each series of the study it picks
the models (the job's own list, else the routing rules), runs them, and writes one SR per result and one SEG per
segmentation with the writers, whose UIDs derive from (source series, model hash): the same job run twice writes
the same SOP instances. The summary names series by UID and gives findings as numbers: no patient data. It also
gives the seconds each model ran (``compute_seconds`` per model and in total: reading the series, the engine's
first load in this process, and inference), so the gateway's own overhead can be told apart from model compute.

A ``pull`` job first fetches its study by C-GET from ``spec.source`` into ``spec.input_folder`` (as the AE title
``settings.calling_ae``); a pull that fails raises, so the queue retries the job.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydantic import BaseModel, ConfigDict, Field
from pydicom.errors import InvalidDicomError

from vesalius.core.errors import InputError, VesaliusError
from vesalius.core.results import ClassificationResult, NoduleResult, Result, SegmentationResult
from vesalius.gateway.delivery import DeliverySettings, deliver
from vesalius.gateway.jobs import JobOutput, JobSpec, ModelInfo, OutputFile
from vesalius.gateway.models import ModelRegistry
from vesalius.gateway.routing import Routing
from vesalius.gateway.studies import SeriesInfo

__all__ = ["ProcessingError", "ProcessorSettings", "StudyProcessor", "find_series"]

LOGGER = logging.getLogger(__name__)
FHIR_FILE = "fhir/DiagnosticReport.json"
SUMMARY_FILE = "summary.json"
_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "Rows",
    "Columns",
]


class ProcessingError(VesaliusError):
    """A model could not be run on a series, or its results not written; the message names the series UID."""


class ProcessorSettings(BaseModel):
    """How results are written and where they go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seg_series_number: int = Field(default=9001, ge=1)
    sr_series_number: int = Field(default=9002, ge=1)
    write_fhir: bool = True
    delivery: DeliverySettings | None = None
    calling_ae: str = Field(default="VESALIUS", min_length=1, max_length=16)
    """Our AE title when a pull job fetches its study (C-GET); the archive must accept it."""
    pull_timeout_seconds: float = Field(default=60.0, gt=0)


@dataclass(frozen=True)
class StudySeries:
    """One series found in a job's input: what routing sees, plus its files and their headers (no pixels)."""

    info: SeriesInfo
    study_uid: str
    files: list[Path]
    headers: list[pydicom.Dataset]


def find_series(folder: Path) -> list[StudySeries]:
    """Every DICOM series under ``folder`` (any depth; ``<study>/<series>/<sop>.dcm`` as stored), in UID order.

    Headers are read without pixel data. Files that are not DICOM are skipped: the store only keeps DICOM, and an
    upload folder may hold other things (NIfTI) that this processor does not take.
    """
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as error:
            LOGGER.warning("skipping unreadable file %s: %s", path.name, type(error).__name__)
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        if uid:
            groups.setdefault(uid, []).append((path, header))
    found: list[StudySeries] = []
    for uid, members in sorted(groups.items()):
        first = members[0][1]
        rows, columns = first.get("Rows"), first.get("Columns")
        info = SeriesInfo(
            series_uid=uid,
            modality=str(first.get("Modality", "")),
            description=str(first.get("SeriesDescription", "")),
            body_part=str(first.get("BodyPartExamined", "")),
            rows=None if rows is None else int(rows),
            columns=None if columns is None else int(columns),
            instance_count=len({str(h.SOPInstanceUID) for _, h in members}),
            folder=members[0][0].parent,
        )
        study_uid = str(first.get("StudyInstanceUID", ""))
        found.append(StudySeries(info, study_uid, [p for p, _ in members], [h for _, h in members]))
    return found


def findings(result: Result) -> dict[str, Any]:
    """The key numbers of a result, for the summary (no PHI: class names, volumes, counts)."""
    if isinstance(result, SegmentationResult):
        return {"volumes_ml": {name: round(ml, 3) for name, ml in result.volumes_ml().items()}}
    if isinstance(result, NoduleResult):
        return {
            "nodules": len(result.nodules),
            "candidates": len(result.findings),
            "diameters_mm": [round(f.diameter_mm, 1) for f in result.nodules],
        }
    summary: dict[str, Any] = {
        "class": result.predicted,
        "probability": round(result.probabilities[result.predicted], 4),
    }
    if result.grade is not None:
        summary["grade"] = result.grade
    return summary


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".writing-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


class StudyProcessor:
    """``Processor`` for WorkerPool: ``processor(spec, output_folder) -> JobOutput``. Picklable."""

    def __init__(
        self, registry: ModelRegistry, routing: Routing | None = None, settings: ProcessorSettings | None = None
    ) -> None:
        self.registry = registry
        self.routing = routing
        self.settings = settings or ProcessorSettings()

    def models_for(self, spec: JobSpec, series: SeriesInfo) -> list[str]:
        """The models to run on one series of the job.

        A ``dicom-study`` job (submitted by the listener, whose ``models`` is the union routed over the whole
        study) is routed series by series, limited to the job's models, so a scout never gets the volume model.
        Other jobs (uploads, pulls) run the models they name on every series, or are routed when they name none.
        """
        routed = self.routing.models_for(series) if self.routing is not None else []
        if spec.kind == "dicom-study" and self.routing is not None:
            return [name for name in routed if not spec.models or name in spec.models]
        return list(spec.models) if spec.models else routed

    def pull(self, spec: JobSpec) -> int:
        """Fetch a pull job's study (C-GET) from ``spec.source`` into ``spec.input_folder``; the count stored.

        Raises (so the queue retries) when the archive cannot be reached, refuses, holds nothing for the study, or
        fails a sub-operation. Instances already fetched by an earlier attempt are kept: storing is idempotent.
        """
        from vesalius.gateway.pull import pull_study
        from vesalius.gateway.scu import DicomPeer
        from vesalius.gateway.storage import InstanceStore

        if not spec.source or not spec.study_instance_uid:
            raise InputError(f"job {spec.job_id}: a pull job needs a source (AE@host:port) and a study_instance_uid")
        peer = DicomPeer.parse(spec.source)
        store = InstanceStore(Path(spec.input_folder))
        uid = spec.study_instance_uid
        try:
            report = pull_study(
                peer,
                uid,
                store,
                method="get",
                calling_ae=self.settings.calling_ae,
                timeout=self.settings.pull_timeout_seconds,
            )
        except VesaliusError as error:
            raise ProcessingError(f"job {spec.job_id}: pulling study {uid} from {peer} failed: {error}") from error
        except Exception as error:  # pynetdicom or socket trouble: name the study, keep the type
            message = f"{type(error).__name__}: {error}"
            raise ProcessingError(f"job {spec.job_id}: pulling study {uid} from {peer} failed: {message}") from error
        if not report.ok or not report.stored:
            raise ProcessingError(
                f"job {spec.job_id}: pulling study {uid} from {peer} got {len(report.stored)} instances "
                f"(status 0x{report.status:04X}, {report.completed} completed, {report.failed} failed)"
            )
        LOGGER.info("job %s: pulled %d instances from %s", spec.job_id, len(report.stored), peer)
        return len(report.stored)

    def __call__(self, spec: JobSpec, output: Path) -> JobOutput:
        output = Path(output)
        if spec.kind == "pull":
            self.pull(spec)
        study = find_series(Path(spec.input_folder))
        if not study:
            raise InputError(f"job {spec.job_id}: no DICOM series in its input folder")
        files: list[OutputFile] = []
        results: list[Result] = []
        written: list[pydicom.Dataset] = []
        models: dict[str, ModelInfo] = {}
        per_series: list[dict[str, Any]] = []
        compute_seconds = 0.0
        for series in study:
            uid = series.info.series_uid
            entry: dict[str, Any] = {
                "series_instance_uid": uid,
                "modality": series.info.modality,
                "instances": series.info.instance_count,
            }
            names = self.models_for(spec, series.info)
            if not names:
                entry["skipped"] = "no model routed to this series"
                per_series.append(entry)
                continue
            entry["models"] = []
            for name in names:
                started = time.perf_counter()
                result = self._run(name, series)
                seconds = time.perf_counter() - started
                compute_seconds += seconds
                identity = result.model
                models.setdefault(name, ModelInfo(name=identity.name, version=identity.version, sha256=identity.sha256))
                datasets = self._write(result, series, output, files)
                written.extend(datasets)
                results.append(result)
                entry["models"].append(
                    {
                        "name": name,
                        "version": identity.version,
                        "findings": findings(result),
                        "compute_seconds": round(seconds, 4),
                    }
                )
            per_series.append(entry)
        if results and self.settings.write_fhir:
            self._write_fhir(spec, study, results, written, output)
            files.append(OutputFile(name=FHIR_FILE, kind="fhir"))
        summary: dict[str, Any] = {
            "series": per_series,
            "results": len(results),
            "compute_seconds": round(compute_seconds, 4),
        }
        job_output = JobOutput(
            files=files,
            output_uids=[f.sop_instance_uid for f in files if f.sop_instance_uid],
            models=list(models.values()),
            input_series_uids=[s.info.series_uid for s in study],
            input_instance_count=sum(s.info.instance_count for s in study),
            summary=summary,
        )
        _write_json(summary, output / SUMMARY_FILE)
        job_output.files.append(OutputFile(name=SUMMARY_FILE, kind="report"))
        if self.settings.delivery is not None and results:
            report = deliver(output, job_output, self.settings.delivery)
            job_output.summary["delivery"] = report.as_summary()
        return job_output

    def _run(self, name: str, series: StudySeries) -> Result:
        uid = series.info.series_uid
        single_image = len(series.files) == 1
        source = series.files[0] if single_image else series.info.folder
        try:
            return self.registry.run(name, source, series_uid=uid)
        except VesaliusError as error:
            raise ProcessingError(f"series {uid}: model {name!r} failed: {error}") from error
        except Exception as error:  # an engine bug: name the series, keep the type
            raise ProcessingError(f"series {uid}: model {name!r} failed: {type(error).__name__}: {error}") from error

    def _write(
        self, result: Result, series: StudySeries, output: Path, files: list[OutputFile]
    ) -> list[pydicom.Dataset]:
        """SEG (segmentations only) and SR files of one result, listed in ``files``; returns the datasets."""
        from vesalius.writers.seg import segmentation_to_seg, write_dicom
        from vesalius.writers.sr import result_to_sr

        uid = series.info.series_uid
        datasets: list[pydicom.Dataset] = []
        try:
            seg = None
            if isinstance(result, SegmentationResult):
                seg = segmentation_to_seg(result, series.headers, series_number=self.settings.seg_series_number)
                path = write_dicom(seg, output / "seg")
                files.append(OutputFile(name=f"seg/{path.name}", kind="seg", sop_instance_uid=str(seg.SOPInstanceUID)))
                datasets.append(seg)
            sr = result_to_sr(result, series.headers, seg=seg, series_number=self.settings.sr_series_number)
            path = write_dicom(sr, output / "sr")
            files.append(OutputFile(name=f"sr/{path.name}", kind="sr", sop_instance_uid=str(sr.SOPInstanceUID)))
            datasets.append(sr)
        except VesaliusError as error:
            raise ProcessingError(f"series {uid}: writing the {result.model.name} results failed: {error}") from error
        return datasets

    def _write_fhir(
        self,
        spec: JobSpec,
        study: list[StudySeries],
        results: list[Result],
        dicom_outputs: list[pydicom.Dataset],
        output: Path,
    ) -> None:
        from vesalius.writers.fhir import diagnostic_report_bundle, write_bundle

        study_uid = spec.study_instance_uid or study[0].study_uid
        reported = {r.series_instance_uid for r in results if isinstance(r, ClassificationResult | NoduleResult)}
        modalities = Counter(s.info.modality for s in study if s.info.series_uid in reported and s.info.modality)
        modality = modalities.most_common(1)[0][0] if modalities else "OT"
        bundle = diagnostic_report_bundle(
            results,
            study_instance_uid=study_uid,
            issued=datetime.now(UTC),
            modality=modality,
            dicom_outputs=dicom_outputs,
            status="preliminary",
        )
        write_bundle(bundle, output / FHIR_FILE)
