"""A pull job end to end through the REST API: POST names a study on a DCMTK dcmqrscp archive, the worker (run
in-process with execute_job) fetches it by C-GET and runs a tiny model, and the results are listed and served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.gateway.test_processor_pull import Archive, ct_archive, tiny_package
from vesalius.api.app import ApiSettings, create_app
from vesalius.api.auth import hash_api_key
from vesalius.engines.common.package import load_package
from vesalius.gateway.models import ModelRegistry
from vesalius.gateway.processor import ProcessorSettings, StudyProcessor
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import execute_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KEY = "pull-test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    with ct_archive(tmp_path / "archive") as running:
        yield running


def test_a_pull_job_posted_to_the_api_is_fetched_processed_and_served(archive: Archive, tmp_path: Path) -> None:
    package = tiny_package(tmp_path / "packages" / "tiny-seg")
    queue = JobQueue(QueueSettings(path=tmp_path / "queue" / "q.sqlite3", retry_delay_seconds=0, retries=0))
    settings = ApiSettings(
        api_keys={"ris": hash_api_key(KEY)},
        upload_root=tmp_path / "uploads",
        output_root=tmp_path / "outputs",
        min_free_bytes=0,
        default_models=["tiny-seg"],
        model_hashes={"tiny-seg": load_package(package).manifest.manifest_sha256},
    )
    client = TestClient(create_app(settings, queue))
    body = {"study_instance_uid": archive.study_uid, "source": archive.source}
    posted = client.post("/v1/jobs", json=body, headers=AUTH)
    assert posted.status_code == 202, posted.text
    job = posted.json()
    assert (job["kind"], job["state"], job["models"]) == ("pull", "queued", ["tiny-seg"])

    processor = StudyProcessor(ModelRegistry({"tiny-seg": package}), None, ProcessorSettings(pull_timeout_seconds=20))
    execute_job(queue, job["job_id"], processor, settings.output_root)

    state = client.get(f"/v1/jobs/{job['job_id']}", headers=AUTH).json()
    assert state["state"] == "done", state["error"]
    assert state["attempts"] == 1
    results = client.get(state["results_url"], headers=AUTH)
    assert results.status_code == 200
    files = results.json()["files"]
    assert sorted(f["kind"] for f in files) == ["fhir", "report", "seg", "sr"]
    seg = next(f for f in files if f["kind"] == "seg")
    download = client.get(seg["url"], headers=AUTH)
    assert download.status_code == 200
    assert download.content[128:132] == b"DICM"
    pulled = {p.stem for p in (settings.upload_root / job["job_id"]).rglob("*.dcm")}
    assert pulled == archive.sop_uids
    again = client.post("/v1/jobs", json=body, headers=AUTH)  # the same study and model: the same job
    assert again.status_code == 200
    assert again.json()["job_id"] == job["job_id"]
