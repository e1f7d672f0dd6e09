"""Workers: results published exactly once, retries end, PHI stays out, and a job survives kill -9 of its worker."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from vesalius.gateway.audit import AuditLog
from vesalius.gateway.jobs import JobOutput, JobSpec, JobState, ModelInfo, OutputFile
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import OUTPUT_MANIFEST, PARTIAL_DIR, WorkerPool, _publish, execute_job, run_worker

PATIENT_NAME = "Zebulon^Quixotica"
MODEL = ModelInfo(name="lung", version="1.0.0", sha256="ab" * 32)


# --- fake processors (module level, so spawned workers can import them) -------------------------------------------


def _count_run(spec: JobSpec) -> int:
    runs = spec.input_folder.with_name(f"{spec.job_id}.runs")  # beside the inputs, not among them
    with runs.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return len(runs.read_text().splitlines())


def writing_processor(spec: JobSpec, out: Path) -> JobOutput:
    (out / "volumes.csv").write_text("label,volume_ml\nnodule,1.5\n")
    (out / "completed.txt").write_text(str(_count_run(spec)))
    uid = spec.output_uid("sr")
    return JobOutput(
        files=[OutputFile(name="volumes.csv", kind="csv")],
        output_uids=[uid],
        models=[MODEL],
        input_series_uids=["1.2.3.4"],
        input_instance_count=1,
        summary={"nodules": 1},
    )


def flaky_processor(spec: JobSpec, out: Path) -> JobOutput:
    """Fails on the first two runs, then succeeds."""
    attempts = spec.input_folder / "attempts.txt"
    n = len(attempts.read_text()) if attempts.exists() else 0
    attempts.write_text("x" * (n + 1))
    if n < 2:
        raise RuntimeError(f"transient failure {n + 1}")
    return writing_processor(spec, out)


def failing_processor(spec: JobSpec, out: Path) -> JobOutput:
    (out / "half-written.dcm").write_bytes(b"partial")
    raise RuntimeError("the model crashed")


def phi_leaking_processor(spec: JobSpec, out: Path) -> JobOutput:
    """Quotes the patient's name in its error, as careless code does; the worker must scrub it."""
    raise ValueError(f"cannot segment study of {PATIENT_NAME.replace('^', ' ')} ({PATIENT_NAME}, id PID-778899)")


def blocking_processor(spec: JobSpec, out: Path) -> JobOutput:
    """Blocks (until released or 60 s) unless `release` exists, after writing a `started` marker with its pid."""
    release = spec.input_folder / "release"
    if not release.exists():
        (spec.input_folder / "started").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return writing_processor(spec, out)


# --- helpers -------------------------------------------------------------------------------------------------------


def write_dicom(path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "PID-778899"
    ds.PatientBirthDate = "19510203"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def settings_for(tmp_path: Path, **overrides: object) -> QueueSettings:
    values: dict[str, object] = {"path": tmp_path / "queue" / "queue.sqlite3", "retry_delay_seconds": 0.0}
    values.update(overrides)
    return QueueSettings.model_validate(values)


def submit(queue: JobQueue, tmp_path: Path, job_id: str = "job1") -> JobSpec:
    folder = tmp_path / "inputs" / job_id
    write_dicom(folder / "00000.dcm")
    spec = JobSpec(
        job_id=job_id,
        kind="dicom-study",
        study_instance_uid="1.2.3",
        input_folder=folder,
        models=["lung"],
        requester="STORESCU",
    )
    queue.submit(spec, f"key-{job_id}")
    return spec


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def in_thread_worker(tmp_path: Path) -> Iterator[Callable[..., JobQueue]]:
    """Starts run_worker in a thread for a processor; stops it at the end."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(processor: Callable[[JobSpec, Path], JobOutput], **overrides: object) -> JobQueue:
        queue = JobQueue(settings_for(tmp_path, **overrides))
        audit = AuditLog(tmp_path / "audit.jsonl")
        kwargs = {"stop_event": stop, "poll_seconds": 0.02, "audit": audit}
        thread = threading.Thread(target=run_worker, args=(queue, processor, tmp_path / "out"), kwargs=kwargs)
        thread.start()
        threads.append(thread)
        return JobQueue(settings_for(tmp_path, **overrides))  # a second handle, as the API would hold

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)


def finished(queue: JobQueue, job_id: str = "job1") -> Callable[[], bool]:
    return lambda: queue.get(job_id).state in (JobState.DONE, JobState.FAILED)


# --- tests ---------------------------------------------------------------------------------------------------------


def test_a_job_runs_and_its_output_is_published_with_a_manifest(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(writing_processor)
    submit(queue, tmp_path)
    wait_for(finished(queue), what="job1 to finish")
    record = queue.get("job1")
    final = tmp_path / "out" / "job1"
    assert record.state is JobState.DONE
    assert record.attempts == 1
    assert record.output_dir == final
    assert (final / "volumes.csv").read_text().startswith("label")
    assert JobOutput.model_validate_json((final / OUTPUT_MANIFEST).read_text()) == record.output
    assert not list((tmp_path / "out" / PARTIAL_DIR).iterdir())
    (entry,) = AuditLog(tmp_path / "audit.jsonl").read()
    assert entry.outcome == "done"
    assert entry.models == [MODEL]
    assert entry.output_uids == record.output.output_uids
    assert entry.input_file_count == 1


def test_transient_failures_are_retried_until_success(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(flaky_processor, retries=3)
    submit(queue, tmp_path)
    wait_for(finished(queue), what="job1 to finish")
    record = queue.get("job1")
    assert record.state is JobState.DONE
    assert record.attempts == 3


def test_a_job_that_always_fails_stops_after_its_retries(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(failing_processor, retries=2)
    submit(queue, tmp_path)
    wait_for(finished(queue), what="job1 to fail")
    time.sleep(0.2)  # a looping retry would show up as more attempts
    record = queue.get("job1")
    assert record.state is JobState.FAILED
    assert record.attempts == 3
    assert "the model crashed" in (record.last_error or "")
    assert not (tmp_path / "out" / "job1").exists()  # nothing half-written is published
    assert queue.huey.pending_count() + queue.huey.scheduled_count() == 0
    (entry,) = AuditLog(tmp_path / "audit.jsonl").read()
    assert entry.outcome == "failed"
    assert entry.attempts == 3


def test_phi_reaches_neither_logs_nor_audit_nor_job_table(in_thread_worker, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    queue = in_thread_worker(phi_leaking_processor, retries=1)
    submit(queue, tmp_path)
    wait_for(finished(queue), what="job1 to fail")
    record = queue.get("job1")
    assert record.state is JobState.FAILED
    assert "<redacted>" in (record.last_error or "")
    texts = [caplog.text, (tmp_path / "audit.jsonl").read_text(), record.model_dump_json()]
    for text in texts:
        for secret in ("Zebulon", "Quixotica", "PID-778899", "19510203"):
            assert secret.lower() not in text.lower()


def test_a_second_completion_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = JobQueue(settings_for(tmp_path))
    submit(queue, tmp_path)
    out, audit = tmp_path / "out", AuditLog(tmp_path / "audit.jsonl")
    # The worker dies after publishing its output, before the job table hears of it ...
    monkeypatch.setattr(queue, "complete", lambda *a: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        execute_job(queue, "job1", writing_processor, out, audit)
    monkeypatch.undo()
    assert queue.get("job1").state is JobState.RUNNING
    # ... the reaper requeues the job, and the next run finds the published output instead of computing it again.
    queue.store.update("job1", lambda r: r.model_copy(update={"state": JobState.QUEUED}))
    execute_job(queue, "job1", writing_processor, out, audit)
    assert queue.get("job1").state is JobState.DONE
    execute_job(queue, "job1", writing_processor, out, audit)  # a stale message for a done job: nothing happens
    assert (out / "job1" / "completed.txt").read_text() == "1"
    assert len((tmp_path / "inputs" / "job1.runs").read_text().splitlines()) == 1
    # Two finished copies race for the same folder: the second is discarded.
    late = out / PARTIAL_DIR / "late"
    late.mkdir(parents=True)
    (late / OUTPUT_MANIFEST).write_text(JobOutput().model_dump_json())
    assert _publish(late, out / "job1") is False
    assert not late.exists()
    assert (out / "job1" / "volumes.csv").exists()
    assert len(audit.read()) == 1


def test_a_processor_that_lists_missing_files_fails_the_attempt(tmp_path: Path) -> None:
    def lying(spec: JobSpec, out: Path) -> JobOutput:
        return JobOutput(files=[OutputFile(name="seg.dcm", kind="seg")])

    queue = JobQueue(settings_for(tmp_path, retries=0))
    submit(queue, tmp_path)
    execute_job(queue, "job1", lying, tmp_path / "out")
    record = queue.get("job1")
    assert record.state is JobState.FAILED
    assert "seg.dcm" in (record.last_error or "")


def test_a_job_survives_kill_9_of_its_worker_and_completes_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, lease_seconds=1.0, retry_delay_seconds=0.1, retries=2)
    queue = JobQueue(settings)
    audit_path = tmp_path / "audit.jsonl"
    pool = WorkerPool(1, settings, blocking_processor, tmp_path / "out", audit_path=audit_path, poll_seconds=0.1)
    spec = submit(queue, tmp_path)
    pool.start()
    try:
        started = spec.input_folder / "started"
        wait_for(started.exists, timeout=60, what="the worker to start the job")
        pid = int(started.read_text())
        assert pid in pool.pids
        assert queue.get("job1").state is JobState.RUNNING
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pool.ensure_alive() == 1, timeout=10, what="the pool to notice the dead worker")
        (spec.input_folder / "release").touch()
        wait_for(finished(queue), timeout=60, what="the job to complete on the new worker")
    finally:
        pool.stop(timeout=10)
    record = queue.get("job1")
    assert record.state is JobState.DONE
    assert record.attempts == 2  # the killed run counts
    runs = spec.input_folder.with_name("job1.runs").read_text().splitlines()
    assert len(runs) == 1  # the result was produced exactly once
    assert runs[0] != str(pid)
    assert (tmp_path / "out" / "job1" / "volumes.csv").exists()
    assert not list((tmp_path / "out" / PARTIAL_DIR).iterdir())  # the killed run's partial folder was removed
    (entry,) = AuditLog(audit_path).read()
    assert entry.outcome == "done"
    assert entry.attempts == 2
