"""`vesalius serve` and `vesalius pull`: read vesalius.toml, wire the gateway, run until told to stop.

This is the one place where the layers meet: the REST API (vesalius.api) is built here and handed to the
gateway service as an app factory, because the gateway layer sits below the API and must not import it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from vesalius.core.errors import InputError, VesaliusError
from vesalius.gateway.config import GatewayConfig, load_config
from vesalius.gateway.jobs import JobAttemptError, JobRecord, JobState, Processor
from vesalius.gateway.queue import JobQueue
from vesalius.gateway.service import GatewayService, SubmittedStudy, queue_settings, submit_ready_study
from vesalius.gateway.studies import StudyTracker


def with_backend(config: GatewayConfig, backend: str | None) -> GatewayConfig:
    """``--backend`` overrides ``[workers] backend`` of the file, validated as the file's value is."""
    if backend is None:
        return config
    from vesalius.gateway.config import WorkersConfig

    workers = WorkersConfig.model_validate({**config.workers.model_dump(), "backend": backend})
    return config.model_copy(update={"workers": workers})


def build_processor(config: GatewayConfig) -> tuple[Processor, dict[str, str]]:
    """The processor the workers run, and the model hashes for idempotency keys.

    The single place where the real model runner plugs in: StudyProcessor with the configured model packages,
    routing rules and result delivery.
    """
    from vesalius.gateway.delivery import DeliverySettings
    from vesalius.gateway.models import ModelRegistry
    from vesalius.gateway.processor import ProcessorSettings, StudyProcessor

    registry = ModelRegistry(config.models, backend=config.workers.backend)
    hashes = registry.hashes()  # reads every manifest now: a missing or broken package fails at start, not per job
    delivery = DeliverySettings(
        dicom_destination=config.delivery.dicom,
        calling_ae=config.dicom.ae_title,
        fhir_url=config.delivery.fhir_url,
        fhir_folder=config.delivery.fhir_folder,
    )
    settings = ProcessorSettings(delivery=delivery, calling_ae=config.dicom.ae_title)
    processor = StudyProcessor(registry, config.routing, settings)
    return processor, hashes


def api_factory(config: GatewayConfig, model_hashes: dict[str, str]) -> Callable[[JobQueue], Any]:
    """The REST API over the service's queue (uploads and results under the storage root)."""
    from vesalius.api.app import ApiSettings, create_app

    settings = ApiSettings(
        api_keys=config.api.api_keys,
        upload_root=config.storage.uploads,
        output_root=config.storage.results,
        max_upload_bytes=config.api.max_upload_bytes,
        max_upload_files=config.api.max_upload_files,
        min_free_bytes=config.dicom.min_free_bytes,
        model_hashes=model_hashes,
    )
    return lambda queue: create_app(settings, queue)


def build_service(config: GatewayConfig, processor: Processor, model_hashes: dict[str, str]) -> GatewayService:
    return GatewayService(config, processor, model_hashes, api_factory=api_factory(config, model_hashes))


def serve(config_path: Path, backend: str | None = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then stop cleanly (current jobs finish or are re-run later)."""
    config = with_backend(load_config(config_path), backend)
    processor, hashes = build_processor(config)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with build_service(config, processor, hashes) as service:
            api = f"REST API on {config.api.host}:{service.api_port}" if service.api_port else "REST API off"
            typer.echo(
                f"vesalius gateway: DICOM {config.dicom.ae_title} on {config.dicom.host}:{service.dicom_port}; "
                f"{api}; {config.workers.count} worker(s); models: {', '.join(sorted(hashes)) or 'none'}"
            )
            stop.wait()
            typer.echo("stopping...")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("stopped")


def pull(
    config_path: Path, study_uid: str, source: str, *, wait: bool, timeout: float, echo: Callable[[str], None]
) -> JobRecord | None:
    """C-FIND the study, C-GET it into the store, route it and queue it; with ``wait``, run it here to the end."""
    from vesalius.gateway.pull import find_study, pull_study
    from vesalius.gateway.scu import DicomPeer
    from vesalius.gateway.storage import InstanceStore

    config = load_config(config_path)
    peer = DicomPeer.parse(source)
    calling_ae = config.dicom.ae_title
    query = find_study(peer, study_uid, calling_ae=calling_ae, timeout=30.0)
    if not query.found:
        raise InputError(f"study {study_uid}: {peer} has no such study")
    store = InstanceStore(config.storage.instances, config.dicom.min_free_bytes)
    report = pull_study(peer, study_uid, store, method="get", calling_ae=calling_ae, timeout=max(timeout, 60.0))
    if not report.stored:
        raise VesaliusError(f"study {study_uid}: {peer} sent no instance (C-GET status 0x{report.status:04X})")
    echo(f"pulled {len(report.stored)} of {query.instance_count} instances of study {study_uid} from {peer}")
    tracker = StudyTracker(quiet_seconds=config.study.quiet_seconds)
    for instance in report.stored:
        tracker.record(instance)
    tracker.expect(study_uid, len({s.sop_instance_uid for s in report.stored}))
    (ready,) = tracker.ready()
    processor, hashes = build_processor(config)
    queue = JobQueue(queue_settings(config))
    submitted = submit_ready_study(queue, ready, config.routing, hashes, requester=f"cli:{calling_ae}", source=source)
    if submitted.record is None:
        echo(f"study {study_uid}: no routing rule matches its series; nothing queued")
        return None
    record = submitted.record
    verb = "queued" if submitted.created else "already submitted as"
    echo(f"{verb} job {record.job_id}: {', '.join(record.spec.models)}")
    if wait:
        record = run_to_end(queue, submitted, processor, config, timeout)
        echo(f"job {record.job_id}: {record.state.value}" + (f" ({record.last_error})" if record.last_error else ""))
        if record.output_dir is not None and record.output is not None:
            echo(f"results in {record.output_dir}:")
            for item in record.output.files:
                echo(f"  {item.kind:<6} {item.name}")
    return record


def run_to_end(
    queue: JobQueue, submitted: SubmittedStudy, processor: Processor, config: GatewayConfig, timeout: float
) -> JobRecord:
    """Run the job in this process (retrying as the queue allows), or wait for a running gateway to finish it."""
    from vesalius.gateway.audit import AuditLog
    from vesalius.gateway.worker import execute_job

    assert submitted.record is not None
    job_id = submitted.record.job_id
    audit = AuditLog(config.audit.path)
    deadline = time.monotonic() + timeout
    while True:
        record = queue.get(job_id)
        if record.state in (JobState.DONE, JobState.FAILED):
            return record
        if time.monotonic() > deadline:
            raise VesaliusError(f"job {job_id} is still {record.state.value} after {timeout:g} s")
        if record.state is JobState.QUEUED:
            try:
                execute_job(queue, job_id, processor, config.storage.results, audit)
                continue
            except JobAttemptError:
                time.sleep(min(queue.settings.retry_delay(record.attempts + 1), max(deadline - time.monotonic(), 0)))
                continue
        time.sleep(0.5)  # running in a `vesalius serve` worker: wait for it
