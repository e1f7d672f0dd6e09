"""The gateway service: DICOM listener -> study completion -> routing -> durable queue -> workers, plus the REST API.

Each piece exists on its own (storage, scp, studies, routing, queue, worker); this module only wires them:

* the C-STORE handler records each stored instance in a :class:`StudyTracker` (quick, on the association thread);
* a watcher thread polls the tracker and submits one ``dicom-study`` job per ready study, with the models its
  series route to, under an idempotency key of (study UID, instances on disk, model hashes): sending the same
  study again finds the existing job instead of making a second result;
* a :class:`WorkerPool` runs the processor in worker processes;
* the REST API (an ASGI app built by the caller, since the API layer sits above this one) is served by uvicorn
  in a thread. Every server binds 127.0.0.1 unless the configuration says otherwise.

Logs carry UIDs, job ids and counts, never patient data.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vesalius.core.errors import VesaliusError
from vesalius.gateway.config import GatewayConfig
from vesalius.gateway.jobs import JobRecord, JobSpec, Processor, idempotency_key
from vesalius.gateway.pull import find_study
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.routing import Routing
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.storage import InstanceStore, StoredInstance
from vesalius.gateway.studies import ReadyStudy, StudyTracker
from vesalius.gateway.worker import WorkerPool

__all__ = ["ApiFactory", "GatewayService", "SubmittedStudy", "plan_study_job", "queue_settings", "scp_settings"]

LOGGER = logging.getLogger(__name__)

ApiFactory = Callable[[JobQueue], Any]
"""Builds the ASGI application served next to the listener (``vesalius.cli.gateway`` passes the REST API)."""

_JOIN_SECONDS = 10.0


def queue_settings(config: GatewayConfig) -> QueueSettings:
    q = config.queue
    return QueueSettings(
        backend=q.backend,
        path=q.path,
        redis_url=q.redis_url,
        retries=q.retries,
        retry_delay_seconds=q.retry_delay_seconds,
        lease_seconds=q.lease_seconds,
    )


def scp_settings(config: GatewayConfig) -> ScpSettings:
    d = config.dicom
    return ScpSettings(
        ae_title=d.ae_title,
        host=d.host,
        port=d.port,
        allowed_calling_aes=d.allowed_calling_aes,
        min_free_bytes=d.min_free_bytes,
    )


@dataclass(frozen=True)
class SubmittedStudy:
    """The outcome of offering a ready study to the queue."""

    study_uid: str
    record: JobRecord | None
    """None when no routing rule matched any series (nothing to run)."""
    created: bool


def count_instances(study_folder: Path) -> int:
    """Instances of a study on disk: the store writes exactly one ``<sop>.dcm`` per SOP instance."""
    return sum(1 for _ in study_folder.glob("*/*.dcm"))


def plan_study_job(
    ready: ReadyStudy, routing: Routing, model_hashes: Mapping[str, str], *, requester: str, source: str | None = None
) -> tuple[JobSpec, str] | None:
    """The job for a ready study and its idempotency key, or None when no series routes to a model."""
    models = sorted({name for series in ready.series for name in routing.models_for(series)})
    if not models:
        return None
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        kind="dicom-study",
        study_instance_uid=ready.study_uid,
        input_folder=ready.folder,
        models=models,
        requester=requester,
        source=source,
    )
    inputs = f"{ready.study_uid}:{count_instances(ready.folder)}"
    return spec, idempotency_key(inputs, {name: model_hashes.get(name, "") for name in models})


def submit_ready_study(
    queue: JobQueue,
    ready: ReadyStudy,
    routing: Routing,
    model_hashes: Mapping[str, str],
    *,
    requester: str,
    source: str | None = None,
) -> SubmittedStudy:
    """Route a ready study and queue it (once: equal work returns the existing job); log UIDs only."""
    planned = plan_study_job(ready, routing, model_hashes, requester=requester, source=source)
    if planned is None:
        LOGGER.info(
            "study %s (%d series, %d instances): no routing rule matches; skipped",
            ready.study_uid,
            len(ready.series),
            ready.instance_count,
        )
        return SubmittedStudy(ready.study_uid, None, False)
    spec, key = planned
    record, created = queue.submit(spec, key)
    LOGGER.info(
        "study %s: %s job %s (models %s)",
        ready.study_uid,
        "queued" if created else "already has",
        record.job_id,
        ",".join(spec.models),
    )
    return SubmittedStudy(ready.study_uid, record, created)


class _ApiServer:
    """uvicorn in a thread on a socket we bind ourselves (so port 0 works and a bind error is raised here)."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self._socket = socket.create_server((host, port))
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="vesalius-api", daemon=True
        )

    def start(self, timeout: float = _JOIN_SECONDS) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise VesaliusError(f"REST API did not start on port {self.port} within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_JOIN_SECONDS)
        self._socket.close()


class GatewayService:
    """Listener, watcher, workers and API together; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(
        self,
        config: GatewayConfig,
        processor: Processor,
        model_hashes: Mapping[str, str],
        *,
        api_factory: ApiFactory | None = None,
        poll_seconds: float | None = None,
    ) -> None:
        self.config = config
        self.processor = processor
        self.api_factory = api_factory
        self.model_hashes = dict(model_hashes)
        """Model name -> package hash (ModelRegistry.hashes()): part of every idempotency key."""
        self.routing = config.routing
        self.poll_seconds = poll_seconds or min(0.5, config.study.quiet_seconds / 4)
        self.store = InstanceStore(config.storage.instances, config.dicom.min_free_bytes)
        self.tracker = StudyTracker(config.study.quiet_seconds)
        self.queue: JobQueue | None = None
        self.scp: StorageSCP | None = None
        self.pool: WorkerPool | None = None
        self._api: _ApiServer | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._to_count: set[str] = set()
        self._counted: set[str] = set()
        self._lock = threading.Lock()
        self.submitted: list[SubmittedStudy] = []

    # --- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start workers, the listener, the watcher and the API; on any failure stop what was started."""
        if self.queue is not None:
            return
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        settings = queue_settings(self.config)
        self.queue = JobQueue(settings)
        self.config.storage.results.mkdir(parents=True, exist_ok=True)
        self.config.audit.path.parent.mkdir(parents=True, exist_ok=True)
        self.pool = WorkerPool(
            self.config.workers.count,
            settings,
            self.processor,
            self.config.storage.results,
            audit_path=self.config.audit.path,
        )
        self.pool.start()
        self.scp = StorageSCP(scp_settings(self.config), self.store, on_stored=self._on_stored)
        self.scp.start()
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="vesalius-studies", daemon=True)
        self._watcher.start()
        if self.api_factory is not None and self.config.api.enabled:
            self._api = _ApiServer(self.api_factory(self.queue), self.config.api.host, self.config.api.port)
            self._api.start()
            LOGGER.info("REST API on %s:%d", self.config.api.host, self._api.port)

    def stop(self) -> None:
        """Stop taking work first (API, listener), then the watcher, then the workers (bounded waits)."""
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(_JOIN_SECONDS)
            self._watcher = None
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        self.queue = None

    def __enter__(self) -> GatewayService:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    # --- where things are ---------------------------------------------------------------------------------------

    @property
    def dicom_port(self) -> int:
        if self.scp is None:
            raise VesaliusError("the gateway is not running")
        return self.scp.port

    @property
    def api_port(self) -> int | None:
        return None if self._api is None else self._api.port

    def status(self) -> dict[str, Any]:
        """Health at a glance: what runs, on which ports, queue counts, open studies (UIDs only)."""
        running = self.queue is not None
        report: dict[str, Any] = {
            "running": running,
            "dicom": {"ae_title": self.config.dicom.ae_title, "port": self.scp.port if self.scp else None},
            "api": {"port": self.api_port},
            "open_studies": len(self.tracker.open_studies()),
            "late_instances": self.tracker.late_instances,
            "disk_ok": self.store.has_room(),
        }
        if self.pool is not None:
            report["workers"] = {"configured": self.pool.n, "alive": len(self.pool.pids)}
        if self.queue is not None:
            try:
                report["jobs"] = {state.value: n for state, n in self.queue.counts().items()}
            except Exception as error:  # the queue backend is down: report it, do not crash the health check
                report["jobs"] = {"error": type(error).__name__}
        return report

    # --- the work -----------------------------------------------------------------------------------------------

    def _on_stored(self, stored: StoredInstance) -> None:
        """On the association thread: record only; C-FIND and queueing happen in the watcher."""
        self.tracker.record(stored)
        if self.config.study.use_find_counts:
            with self._lock:
                if stored.study_uid not in self._counted:
                    self._counted.add(stored.study_uid)
                    self._to_count.add(stored.study_uid)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:
                LOGGER.exception("study watcher: one round failed; retrying")

    def poll(self) -> list[SubmittedStudy]:
        """One watcher round: ask counts, submit ready studies, replace dead workers (also callable by tests)."""
        self._ask_counts()
        done = [self.submit(ready) for ready in self.tracker.ready()]
        if self.pool is not None:
            restarted = self.pool.ensure_alive()
            if restarted:
                LOGGER.warning("restarted %d worker process(es) that had stopped", restarted)
        return done

    def submit(self, ready: ReadyStudy, *, requester: str = "dicom", source: str | None = None) -> SubmittedStudy:
        """Queue a ready study; then forget it so a later resend is judged again (and found to be equal work)."""
        if self.queue is None:
            raise VesaliusError("the gateway is not running")
        try:
            outcome = submit_ready_study(
                self.queue, ready, self.routing, self.model_hashes, requester=requester, source=source
            )
        finally:
            self.tracker.forget(ready.study_uid)
            with self._lock:
                self._counted.discard(ready.study_uid)
        self.submitted.append(outcome)
        return outcome

    def _ask_counts(self) -> None:
        peer = self.config.find_peer()
        with self._lock:
            pending, self._to_count = self._to_count, set()
        if peer is None:
            return
        for study_uid in pending:
            try:
                found = find_study(peer, study_uid, calling_ae=self.config.dicom.ae_title, timeout=10.0)
            except VesaliusError as error:
                LOGGER.warning(
                    "study %s: C-FIND for its instance count failed (%s); waiting for quiet", study_uid, error
                )
                continue
            if found.found and found.instance_count:
                self.tracker.expect(study_uid, found.instance_count)
