"""Workers: take jobs from the queue, run the processor under a lease, publish each result exactly once.

A job's output is written to `output_root/.partial/<job_id>.<token>/` and renamed, in one atomic step, to
`output_root/<job_id>/`. The first rename wins; a later run of the same job (after its worker was presumed dead)
finds the folder taken and discards its copy, so a half-written or doubled result never shows up. Each worker
process also reaps expired leases, so a job whose worker was killed is picked up by the survivors.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import threading
import time
import uuid
from functools import partial
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Protocol

from vesalius.gateway.audit import AuditLog, Scrubber, safe_log
from vesalius.gateway.jobs import JobAttemptError, JobOutput, JobRecord, JobState, Processor
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.storage import fsync_dir

logger = logging.getLogger(__name__)

OUTPUT_MANIFEST = "output.json"
PARTIAL_DIR = ".partial"


class StopEvent(Protocol):
    """threading.Event or multiprocessing.Event."""

    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class _Heartbeat:
    """Renews a job's lease while the processor runs; stops renewing after the job timeout, if one is set."""

    def __init__(self, queue: JobQueue, job_id: str, token: str) -> None:
        self._queue, self._job_id, self._token = queue, job_id, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)
        self.lost = False

    def _run(self) -> None:
        settings = self._queue.settings
        deadline = time.monotonic() + settings.job_timeout_seconds if settings.job_timeout_seconds else None
        while not self._stop.wait(settings.lease_seconds / 3):
            if deadline is not None and time.monotonic() > deadline:
                timeout = settings.job_timeout_seconds
                logger.warning("job %s: over its %g s timeout, lease left to expire", self._job_id, timeout)
                return
            try:
                if not self._queue.renew(self._job_id, self._token):
                    self.lost = True
                    return
            except Exception as exc:
                logger.warning("job %s: lease renewal failed: %s", self._job_id, type(exc).__name__)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _write_manifest(folder: Path, output: JobOutput) -> None:
    missing = [f.name for f in output.files if not (folder / f.name).is_file()]
    if missing:
        raise JobAttemptError(f"processor listed output files it did not write: {', '.join(missing)}")
    path = folder / OUTPUT_MANIFEST
    with path.open("w", encoding="utf-8") as f:
        f.write(output.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())


def _publish(partial_dir: Path, final: Path) -> bool:
    """Atomically move the finished output into place; False when another run already published it."""
    try:
        os.rename(partial_dir, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and (final / OUTPUT_MANIFEST).is_file():
            shutil.rmtree(partial_dir, ignore_errors=True)
            return False
        raise
    fsync_dir(final.parent)
    return True


def _finish(queue: JobQueue, job_id: str, final: Path, audit: AuditLog | None) -> JobRecord:
    output = JobOutput.model_validate_json((final / OUTPUT_MANIFEST).read_text(encoding="utf-8"))
    record, changed = queue.complete(job_id, output, final)
    if changed:
        safe_log(logger, logging.INFO, "job done", job_id=job_id, attempts=record.attempts)
        if audit is not None:
            audit.append(record)
    return record


def execute_job(
    queue: JobQueue, job_id: str, processor: Processor, output_root: Path, audit: AuditLog | None = None
) -> None:
    """Run one attempt of a job. Raises JobAttemptError (PHI-free) when it failed and the queue should retry."""
    token = uuid.uuid4().hex
    record = queue.claim(job_id, token)
    if record is None:
        return  # done, failed, or running elsewhere: this message is stale
    final = output_root / job_id
    if (final / OUTPUT_MANIFEST).is_file():  # an earlier run published, then died before marking the job done
        _finish(queue, job_id, final, audit)
        return
    partials = output_root / PARTIAL_DIR
    for stale in partials.glob(f"{job_id}.*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    work = partials / f"{job_id}.{token}"
    work.mkdir(parents=True)
    safe_log(logger, logging.INFO, "job started", job_id=job_id, attempt=record.attempts, kind=record.spec.kind)
    try:
        with _Heartbeat(queue, job_id, token):
            output = processor(record.spec, work)
            _write_manifest(work, output)
    except Exception as exc:
        shutil.rmtree(work, ignore_errors=True)
        error = Scrubber.from_dicom_folder(record.spec.input_folder)(f"{type(exc).__name__}: {exc}")
        failed = queue.attempt_failed(job_id, token, error)
        safe_log(logger, logging.WARNING, "job attempt failed", job_id=job_id, attempt=record.attempts, error=error)
        if failed is None or failed.state is JobState.FAILED:
            if failed is not None and audit is not None:
                audit.append(failed)
            return
        raise JobAttemptError(f"job {job_id} attempt {record.attempts}: {error}") from None
    _publish(work, final)
    _finish(queue, job_id, final, audit)


def run_worker(
    queue: JobQueue,
    processor: Processor,
    output_root: Path,
    *,
    stop_event: StopEvent,
    poll_seconds: float = 0.5,
    audit: AuditLog | None = None,
) -> None:
    """Execute jobs until `stop_event` is set; reap expired leases every half lease."""
    output_root.mkdir(parents=True, exist_ok=True)
    queue.set_handler(partial(execute_job, queue, processor=processor, output_root=output_root, audit=audit))
    next_reap = 0.0
    while not stop_event.is_set():
        try:
            if time.monotonic() >= next_reap:
                for reaped in queue.reap_expired():
                    safe_log(logger, logging.WARNING, "lease expired", job_id=reaped.job_id, state=reaped.state)
                    if reaped.state is JobState.FAILED and audit is not None:
                        audit.append(reaped)
                next_reap = time.monotonic() + min(queue.settings.lease_seconds / 2, 30.0)
            busy = queue.run_next()
        except Exception as exc:  # the queue backend hiccuped: keep the worker alive
            logger.error("worker loop error: %s: %s", type(exc).__name__, exc)
            busy = False
        if not busy:
            stop_event.wait(poll_seconds)


def _worker_main(
    settings: QueueSettings,
    processor: Processor,
    output_root: Path,
    audit_path: Path | None,
    stop_event: StopEvent,
    poll_seconds: float,
) -> None:
    audit = AuditLog(audit_path) if audit_path is not None else None
    run_worker(
        JobQueue(settings), processor, output_root, stop_event=stop_event, poll_seconds=poll_seconds, audit=audit
    )


class WorkerPool:
    """N worker processes (spawned, so no state is inherited) sharing one queue; restarts those that die."""

    def __init__(
        self,
        n: int,
        settings: QueueSettings,
        processor: Processor,
        output_root: Path,
        *,
        audit_path: Path | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        if n < 1:
            raise ValueError(f"WorkerPool needs at least one worker, got n={n}")
        self.n = n
        self._ctx = multiprocessing.get_context("spawn")
        self._stop = self._ctx.Event()
        self._args = (settings, processor, Path(output_root), audit_path, self._stop, poll_seconds)
        self._processes: list[BaseProcess] = []

    def _spawn(self, index: int) -> BaseProcess:
        process = self._ctx.Process(target=_worker_main, args=self._args, name=f"vesalius-worker-{index}")
        process.start()
        return process

    def start(self) -> None:
        self._stop.clear()
        self._processes = [self._spawn(i) for i in range(self.n)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def ensure_alive(self) -> int:
        """Replace workers that died (killed, crashed); returns how many were restarted."""
        restarted = 0
        for i, process in enumerate(self._processes):
            if not process.is_alive() and not self._stop.is_set():
                self._processes[i] = self._spawn(i)
                restarted += 1
        return restarted

    def stop(self, timeout: float = 10.0) -> None:
        """Ask workers to finish their current job, then terminate those still running after `timeout`."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            process.join(max(deadline - time.monotonic(), 0.0))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
        self._processes = []

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
