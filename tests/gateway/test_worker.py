"""Workers: results published exactly once, retries end, PHI stays out, and a job survives kill -9 of its worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.gateway.job_fakes import (
    MODEL,
    check_job_survives_kill_9,
    failing_processor,
    finished,
    flaky_processor,
    phi_leaking_processor,
    submit,
    wait_for,
    worker_threads,
    writing_processor,
)
from vesalius.gateway.audit import AuditLog
from vesalius.gateway.jobs import JobOutput, JobSpec, JobState, OutputFile
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import OUTPUT_MANIFEST, PARTIAL_DIR, _publish, execute_job


def settings_for(tmp_path: Path, **overrides: object) -> QueueSettings:
    values: dict[str, object] = {"path": tmp_path / "queue" / "queue.sqlite3", "retry_delay_seconds": 0.0}
    values.update(overrides)
    return QueueSettings.model_validate(values)


@pytest.fixture
def in_thread_worker(tmp_path: Path) -> Iterator[Callable[..., JobQueue]]:
    """Starts run_worker in a thread for a processor; stops it at the end."""
    with worker_threads(tmp_path, lambda **overrides: settings_for(tmp_path, **overrides)) as start:
        yield start


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
    check_job_survives_kill_9(settings_for(tmp_path, lease_seconds=1.0, retry_delay_seconds=0.1, retries=2), tmp_path)
