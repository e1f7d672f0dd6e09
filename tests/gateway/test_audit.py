"""The audit log and the PHI helpers."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.gateway.job_fakes import make_spec
from vesalius.gateway.audit import REDACTED, AuditLog, Scrubber, redact, safe_log
from vesalius.gateway.jobs import JobOutput, JobRecord, JobState, ModelInfo, OutputFile, utcnow


def finished_record(tmp_path: Path, job_id: str = "job1", state: JobState = JobState.DONE) -> JobRecord:
    spec = make_spec(tmp_path, job_id, kind="pull", requester="ris-key")
    now = utcnow()
    output = JobOutput(
        files=[OutputFile(name="seg.dcm", kind="seg", sop_instance_uid="1.2.3.9")],
        output_uids=["1.2.3.9"],
        models=[ModelInfo(name="lung", version="2.1", sha256="cd" * 32)],
        input_series_uids=["1.2.3.4"],
        input_instance_count=120,
    )
    return JobRecord(
        spec=spec,
        idempotency_key="k",
        state=state,
        attempts=1,
        started=now,
        finished=now + timedelta(seconds=3),
        output=output if state is JobState.DONE else None,
    )


def test_each_finished_job_is_one_json_line_with_uids_models_and_times(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "logs" / "audit.jsonl")
    log.append(finished_record(tmp_path, "a"))
    log.append(finished_record(tmp_path, "b", JobState.FAILED))
    lines = (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["job_id"] == "a"
    assert first["outcome"] == "done"
    assert first["requester"] == "ris-key"
    assert first["study_instance_uid"] == "1.2.3"
    assert first["series_instance_uids"] == ["1.2.3.4"]
    assert first["instance_count"] == 120
    assert first["models"] == [{"name": "lung", "version": "2.1", "sha256": "cd" * 32}]
    assert first["output_uids"] == ["1.2.3.9"]
    assert {"received", "started", "finished"} <= first.keys()
    assert [r.outcome for r in log.read()] == ["done", "failed"]


def test_unfinished_jobs_are_not_audited(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only finished jobs"):
        AuditLog(tmp_path / "a.jsonl").append(finished_record(tmp_path, state=JobState.RUNNING))


def test_concurrent_appends_keep_every_line_whole(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    threads = [threading.Thread(target=log.append, args=(finished_record(tmp_path, f"j{i}"),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.job_id for r in log.read()) == sorted(f"j{i}" for i in range(8))


def test_scrubber_removes_names_ids_and_their_parts_case_insensitively() -> None:
    scrub = Scrubber(["Doe^Jane", "PID-778899", ""])
    text = scrub("failed for DOE^JANE (Jane Doe, jane), id PID-778899; series 1.2.3")
    for secret in ("doe", "jane", "778899"):
        assert secret not in text.lower()
    assert "series 1.2.3" in text
    assert Scrubber()("unchanged") == "unchanged"


def test_scrubber_reads_phi_from_dicom_headers_and_skips_other_files(tmp_path: Path) -> None:
    ds = Dataset()
    ds.PatientName = "Roe^Richard"
    ds.PatientID = "X123"
    ds.OtherPatientIDs = ["Y456", "Z789"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.save_as(tmp_path / "a.dcm", implicit_vr=True, little_endian=True, enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not dicom")
    scrub = Scrubber.from_dicom_folder(tmp_path)
    assert scrub("Roe X123 Y456 Z789 Richard") == " ".join([REDACTED] * 5)


def test_redact_masks_phi_keywords_and_reduces_datasets_to_uids() -> None:
    ds = Dataset()
    ds.PatientName = "Roe^Richard"
    ds.StudyInstanceUID = "1.2.3"
    safe = redact({"PatientID": "X123", "dataset": ds, "nested": {"PatientBirthDate": "19500101"}, "n": 3})
    assert safe == {
        "PatientID": REDACTED,
        "dataset": {"StudyInstanceUID": "1.2.3"},
        "nested": {"PatientBirthDate": REDACTED},
        "n": 3,
    }


def test_safe_log_never_writes_phi(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("vesalius.test")
    safe_log(
        logger, logging.INFO, "received Roe^Richard", scrubber=Scrubber(["Roe^Richard"]), PatientName="Roe^Richard"
    )
    assert "Roe" not in caplog.text
    assert "PatientName=<redacted>" in caplog.text
