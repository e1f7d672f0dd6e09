"""The REST API application: `create_app(settings, queue)` wires settings, keys, routes and metrics together.

The API is thin: it stores uploads, submits jobs to the same JobQueue the DICOM listener uses, and reports what the
job table says. Metrics are read from the job table at scrape time, so they count the work of every worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from pydantic import BaseModel, Field, field_validator

from vesalius.api.auth import ApiKeys
from vesalius.api.routes import router
from vesalius.core.errors import VesaliusError
from vesalius.gateway.jobs import JobNotFoundError, JobState, QueueError
from vesalius.gateway.queue import JobQueue

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class ApiSettings(BaseModel):
    """What the REST API needs; secrets are stored hashed."""

    api_keys: dict[str, str] = Field(description="Key name (the requester) -> hex SHA-256 of the key.")
    upload_root: Path = Field(description="Uploaded inputs go to upload_root/<job_id>/.")
    output_root: Path | None = Field(default=None, description="Checked for free space by /v1/health.")
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_upload_files: int = Field(default=5000, gt=0)
    min_free_bytes: int = Field(default=1024**3, ge=0, description="Below this, /v1/health reports degraded.")
    default_models: list[str] = Field(default_factory=list, description="Models used when a request names none.")
    model_hashes: dict[str, str] = Field(
        default_factory=dict, description="Known model name -> weights SHA-256; when set, other names are refused."
    )

    @field_validator("api_keys")
    @classmethod
    def _hex_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(f"api_keys[{name!r}] must be a hex SHA-256 of the key (64 characters), not the key")
        return value


class JobMetrics:
    """A Prometheus collector over the job table: counters of submitted/done/failed, queue depth, durations."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue

    def collect(self) -> Iterator[Metric]:
        counts = self._queue.counts()
        submitted = CounterMetricFamily("vesalius_jobs_submitted", "Jobs accepted into the queue.")
        submitted.add_metric([], sum(counts.values()))
        done = CounterMetricFamily("vesalius_jobs_done", "Jobs finished with a result.")
        done.add_metric([], counts[JobState.DONE])
        failed = CounterMetricFamily("vesalius_jobs_failed", "Jobs that failed after all attempts.")
        failed.add_metric([], counts[JobState.FAILED])
        depth = GaugeMetricFamily("vesalius_queue_depth", "Jobs waiting for a worker.")
        depth.add_metric([], counts[JobState.QUEUED])
        running = GaugeMetricFamily("vesalius_jobs_running", "Jobs being processed now.")
        running.add_metric([], counts[JobState.RUNNING])
        durations = self._queue.durations()
        buckets = [(str(b), float(sum(d <= b for d in durations))) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", float(len(durations))))
        histogram = HistogramMetricFamily(
            "vesalius_job_duration_seconds", "Time from a job's first start to its result.", buckets, sum(durations)
        )
        yield from (submitted, done, failed, depth, running, histogram)


def create_app(settings: ApiSettings, queue: JobQueue) -> FastAPI:
    """The FastAPI application serving jobs, results, health and metrics for `queue`."""
    app = FastAPI(
        title="Vesalius",
        version="1",
        description=(
            "Submit imaging studies to Vesalius models and fetch the results (DICOM SEG and SR, FHIR, CSV).\n\n"
            "Every route except /v1/health and /metrics needs an `X-API-Key` header."
        ),
    )
    settings.upload_root.mkdir(parents=True, exist_ok=True)
    app.state.settings = settings
    app.state.queue = queue
    app.state.api_keys = ApiKeys(settings.api_keys)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(queue))
    app.state.registry = registry
    app.include_router(router)

    @app.exception_handler(JobNotFoundError)
    async def _not_found(request: Request, exc: JobNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(QueueError)
    async def _queue_down(request: Request, exc: QueueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(VesaliusError)
    async def _bad_input(request: Request, exc: VesaliusError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    return app
