"""Shared job fakes for the queue and worker tests (sqlite and redis backends): job specs, fake processors, a worker
in a thread, waiting helpers, and the scenarios both backends must pass.

The processors are module-level so that spawned worker processes can import them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from vesalius.gateway.audit import AuditLog
from vesalius.gateway.jobs import JobKind, JobOutput, JobSpec, JobState, ModelInfo, OutputFile, utcnow
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import PARTIAL_DIR, WorkerPool, run_worker

PATIENT_NAME = "Zebulon^Quixotica"
MODEL = ModelInfo(name="lung", version="1.0.0", sha256="ab" * 32)


def make_spec(
    tmp_path: Path,
    job_id: str = "job1",
    study: str | None = "1.2.3",
    kind: JobKind = "dicom-study",
    requester: str = "STORESCU",
) -> JobSpec:
    """A job for the lung model whose (not written) inputs would be in ``tmp_path / job_id``."""
    return JobSpec(
        job_id=job_id,
        kind=kind,
        study_instance_uid=study,
        input_folder=tmp_path / job_id,
        models=["lung"],
        requester=requester,
    )


# --- fake processors ---------------------------------------------------------------------------------------------


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


def submit(queue: JobQueue, tmp_path: Path, job_id: str = "job1") -> JobSpec:
    """Writes one DICOM instance under ``tmp_path / inputs / job_id`` and submits a job for it."""
    spec = make_spec(tmp_path / "inputs", job_id)
    write_dicom(spec.input_folder / "00000.dcm")
    queue.submit(spec, f"key-{job_id}")
    return spec


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def finished(queue: JobQueue, job_id: str = "job1") -> Callable[[], bool]:
    return lambda: queue.get(job_id).state in (JobState.DONE, JobState.FAILED)


@contextmanager
def worker_threads(tmp_path: Path, settings: Callable[..., QueueSettings]) -> Iterator[Callable[..., JobQueue]]:
    """``start(processor, **overrides)`` runs run_worker in a thread on its own JobQueue handle and returns a second
    handle, as the API would hold; every worker is stopped at the end."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(processor: Callable[[JobSpec, Path], JobOutput], **overrides: object) -> JobQueue:
        worker_queue = JobQueue(settings(**overrides))
        kwargs = {"stop_event": stop, "poll_seconds": 0.02, "audit": AuditLog(tmp_path / "audit.jsonl")}
        thread = threading.Thread(target=run_worker, args=(worker_queue, processor, tmp_path / "out"), kwargs=kwargs)
        thread.start()
        threads.append(thread)
        return JobQueue(settings(**overrides))

    try:
        yield start
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)  # a blocking dequeue (redis) returns within huey's 1 s read timeout


# --- scenarios both queue backends must pass ---------------------------------------------------------------------


def check_submit_is_idempotent(queue: JobQueue, tmp_path: Path) -> None:
    first, created = queue.submit(make_spec(tmp_path, "a"), "key-1")
    second, created_again = queue.submit(make_spec(tmp_path, "b"), "key-1")
    assert created
    assert not created_again
    assert second.job_id == first.job_id == "a"
    assert queue.huey.pending_count() == 1
    assert queue.get("a").state is JobState.QUEUED
    assert queue.counts()[JobState.QUEUED] == 1


def check_complete_twice_is_a_no_op(queue: JobQueue, tmp_path: Path) -> None:
    queue.submit(make_spec(tmp_path), "k")
    queue.claim("job1", "t")
    record, changed = queue.complete("job1", JobOutput(summary={"n": 1}), tmp_path / "out")
    again, changed_again = queue.complete("job1", JobOutput(summary={"n": 2}), tmp_path / "other")
    assert changed
    assert not changed_again
    assert record.state is again.state is JobState.DONE
    assert again.output.summary == {"n": 1}
    assert queue.durations() == [pytest.approx(record.duration_seconds)]
    assert queue.counts()[JobState.DONE] == 1


def check_reaper_requeues_then_fails(queue: JobQueue, tmp_path: Path) -> None:
    """``queue`` has a lease of 0.05 s and one retry."""
    queue.submit(make_spec(tmp_path), "k")
    queue.huey.flush()  # the message was taken by a worker that then died holding the job
    queue.claim("job1", "dead-worker")
    assert queue.reap_expired(utcnow() - timedelta(seconds=1)) == []  # lease still valid
    time.sleep(0.1)
    (reaped,) = queue.reap_expired()
    assert reaped.state is JobState.QUEUED
    assert reaped.attempts == 1
    assert "lease" in (reaped.last_error or "")
    assert queue.huey.pending_count() + queue.huey.scheduled_count() == 1
    assert queue.renew("job1", "dead-worker") is False
    assert queue.counts()[JobState.QUEUED] == 1
    # Second death: out of attempts, the job fails instead of looping.
    queue.claim("job1", "dead-again")
    time.sleep(0.1)
    (reaped,) = queue.reap_expired()
    assert reaped.state is JobState.FAILED
    assert reaped.attempts == 2
    assert queue.store.by_state(JobState.RUNNING) == []


def check_job_survives_kill_9(queue_settings: QueueSettings, tmp_path: Path) -> None:
    """Kills the worker mid-job; the job completes once. ``queue_settings``: lease 1 s, retry delay 0.1 s, 2 retries."""
    queue = JobQueue(queue_settings)
    audit_path = tmp_path / "audit.jsonl"
    pool = WorkerPool(1, queue_settings, blocking_processor, tmp_path / "out", audit_path=audit_path, poll_seconds=0.1)
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
