"""The REST API through TestClient: auth, upload and pull submission, idempotency, results, health, metrics."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from vesalius.api.app import ApiSettings, create_app
from vesalius.api.auth import ApiKeys, hash_api_key, new_api_key
from vesalius.gateway.jobs import JobOutput, JobSpec, JobState, ModelInfo, OutputFile
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import execute_job

KEY = "s3cret-key-for-tests"
AUTH = {"X-API-Key": KEY}
LUNG_SHA = "ab" * 32


def dicom_bytes(payload: bytes = b"") -> bytes:
    """Enough of a DICOM Part 10 file for the upload check: preamble and magic."""
    return b"\0" * 128 + b"DICM" + payload


def nifti_gz_bytes() -> bytes:
    return gzip.compress((348).to_bytes(4, "little") + b"\0" * 344 + b"n+1\0")


def result_processor(spec: JobSpec, out: Path) -> JobOutput:
    (out / "seg").mkdir()
    (out / "seg" / "seg.dcm").write_bytes(dicom_bytes(b"SEG"))
    (out / "report.json").write_text('{"resourceType": "DiagnosticReport"}')
    return JobOutput(
        files=[
            OutputFile(name="seg/seg.dcm", kind="seg", sop_instance_uid="1.2.9"),
            OutputFile(name="report.json", kind="fhir"),
        ],
        output_uids=["1.2.9"],
        models=[ModelInfo(name="lung", version="1.0", sha256=LUNG_SHA)],
        summary={"nodules": 2},
    )


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(QueueSettings(path=tmp_path / "queue" / "q.sqlite3", retry_delay_seconds=0, retries=0))


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    return ApiSettings(
        api_keys={"ris": hash_api_key(KEY)},
        upload_root=tmp_path / "uploads",
        output_root=tmp_path,
        max_upload_bytes=10_000,
        min_free_bytes=0,
        default_models=["lung"],
        model_hashes={"lung": LUNG_SHA, "liver": "cd" * 32},
    )


@pytest.fixture
def client(settings: ApiSettings, queue: JobQueue) -> TestClient:
    return TestClient(create_app(settings, queue))


def upload(client: TestClient, files: list[tuple[str, bytes]], headers: dict[str, str] | None = None, **data: str):
    parts = [("files", (name, io.BytesIO(content), "application/octet-stream")) for name, content in files]
    return client.post("/v1/jobs", files=parts, data=data, headers=AUTH if headers is None else headers)


def run_job(queue: JobQueue, tmp_path: Path, job_id: str) -> None:
    execute_job(queue, job_id, result_processor, tmp_path / "outputs")


# --- auth ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/v1/jobs"), ("get", "/v1/jobs/abc"), ("get", "/v1/jobs/abc/results"), ("get", "/v1/jobs/abc/results/x")],
)
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_routes_refuse_missing_or_wrong_keys(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"] in ("missing X-API-Key header", "invalid API key")


def test_settings_store_hashes_never_keys(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="hex SHA-256"):
        ApiSettings(api_keys={"ris": "plain-text-key"}, upload_root=tmp_path)
    key, digest = new_api_key()
    keys = ApiKeys({"a": hash_api_key("other"), "b": digest})
    assert keys.identify(key) == "b"
    assert keys.identify("nope") is None
    assert keys.identify(None) is None


# --- submission ------------------------------------------------------------------------------------------------------


def test_upload_creates_a_job_with_numbered_files_and_is_idempotent(client: TestClient, settings: ApiSettings) -> None:
    files = [("DOE_JANE_1.dcm", dicom_bytes(b"one")), ("scan.nii.gz", nifti_gz_bytes())]
    first = upload(client, files)
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["state"] == "queued"
    assert job["kind"] == "files"
    assert job["models"] == ["lung"]
    assert job["requester"] == "ris"
    stored = sorted(p.name for p in (settings.upload_root / job["job_id"]).iterdir())
    assert stored == ["00000.dcm", "00001.nii.gz"]  # the client's file names (often a patient's) are not kept
    again = upload(client, list(reversed(files)))
    assert again.status_code == 200
    assert again.json()["job_id"] == job["job_id"]
    assert [p.name for p in settings.upload_root.iterdir()] == [job["job_id"]]
    other_model = upload(client, files, models="liver")
    assert other_model.status_code == 202
    assert other_model.json()["job_id"] != job["job_id"]


def test_upload_refuses_unknown_models_unsupported_files_and_empty_bodies(client: TestClient) -> None:
    assert upload(client, [("a.dcm", dicom_bytes())], models="brain").status_code == 422
    refused = upload(client, [("a.dcm", dicom_bytes()), ("notes.txt", b"hello")])
    assert refused.status_code == 415
    assert "file #1" in refused.json()["detail"]
    empty = client.post("/v1/jobs", files={"models": (None, "lung")}, headers=AUTH)  # multipart, no file
    assert empty.status_code == 422
    text = client.post("/v1/jobs", content=b"hi", headers={**AUTH, "Content-Type": "text/plain"})
    assert text.status_code == 415


def test_upload_over_the_limit_is_refused_with_413(client: TestClient, settings: ApiSettings) -> None:
    response = upload(client, [("big.dcm", dicom_bytes(b"x" * 20_000))])
    assert response.status_code == 413
    assert "10000" in response.json()["detail"]
    assert not any(settings.upload_root.iterdir())


def test_pull_job_from_json_is_idempotent_and_validated(client: TestClient) -> None:
    body = {"study_instance_uid": "1.2.840.99", "source": "ORTHANC@127.0.0.1:4242", "models": ["lung"]}
    first = client.post("/v1/jobs", json=body, headers=AUTH)
    assert first.status_code == 202, first.text
    assert first.json()["kind"] == "pull"
    assert first.json()["study_instance_uid"] == "1.2.840.99"
    again = client.post("/v1/jobs", json={**body, "models": None}, headers=AUTH)  # default models: the same work
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    bad = client.post("/v1/jobs", json={**body, "source": "not a source"}, headers=AUTH)
    assert bad.status_code == 422
    assert "source" in str(bad.json()["detail"])


# --- state and results -----------------------------------------------------------------------------------------------


def test_job_state_and_results_download(client: TestClient, queue: JobQueue, tmp_path: Path) -> None:
    job_id = upload(client, [("a.dcm", dicom_bytes())]).json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}/results", headers=AUTH).status_code == 409
    run_job(queue, tmp_path, job_id)
    state = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert state["state"] == "done"
    assert state["attempts"] == 1
    assert state["started"] is not None
    assert state["finished"] is not None
    results = client.get(f"/v1/jobs/{job_id}/results", headers=AUTH).json()
    assert [(f["name"], f["kind"]) for f in results["files"]] == [("seg/seg.dcm", "seg"), ("report.json", "fhir")]
    assert results["summary"] == {"nodules": 2}
    assert results["models"][0]["sha256"] == LUNG_SHA
    seg = client.get(results["files"][0]["url"], headers=AUTH)
    assert seg.status_code == 200
    assert seg.headers["content-type"] == "application/dicom"
    assert seg.content == dicom_bytes(b"SEG")


@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2Fqueue%2Fq.sqlite3",
        "%2E%2E/%2E%2E/queue/q.sqlite3",
        "%2Fetc%2Fpasswd",
        "output.json",
        "seg",
        "missing",
    ],
)
def test_result_download_refuses_anything_not_in_the_manifest(
    client: TestClient, queue: JobQueue, tmp_path: Path, name: str
) -> None:
    job_id = upload(client, [("a.dcm", dicom_bytes())]).json()["job_id"]
    run_job(queue, tmp_path, job_id)
    response = client.get(f"/v1/jobs/{job_id}/results/{name}", headers=AUTH)
    assert response.status_code == 404


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    assert client.get("/v1/jobs/0123abcd", headers=AUTH).status_code == 404
    assert client.get("/v1/jobs/bad.id!", headers=AUTH).status_code == 422


def test_failed_job_reports_its_error(client: TestClient, queue: JobQueue, tmp_path: Path) -> None:
    def broken(spec: JobSpec, out: Path) -> JobOutput:
        raise RuntimeError("no lungs found")

    job_id = upload(client, [("a.dcm", dicom_bytes())]).json()["job_id"]
    execute_job(queue, job_id, broken, tmp_path / "outputs")
    state = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
    assert state["state"] == "failed"
    assert "no lungs found" in state["error"]
    assert client.get(f"/v1/jobs/{job_id}/results", headers=AUTH).status_code == 409


# --- health, metrics, docs -------------------------------------------------------------------------------------------


def test_health_needs_no_key_and_reports_disk_and_queue(client: TestClient, settings: ApiSettings) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["queue"] == "ok"
    assert body["disk"]["upload_root"]["free_bytes"] > 0
    settings.min_free_bytes = 1 << 62
    assert client.get("/v1/health").status_code == 503


def test_health_is_503_when_the_queue_is_unreachable(settings: ApiSettings) -> None:
    redis_queue = JobQueue(QueueSettings(backend="redis", redis_url="redis://127.0.0.1:1/0"))
    response = TestClient(create_app(settings, redis_queue)).get("/v1/health")
    assert response.status_code == 503
    assert "unreachable" in response.json()["queue"]


def test_metrics_count_jobs_by_outcome(
    client: TestClient, queue: JobQueue, tmp_path: Path, settings: ApiSettings
) -> None:
    done = upload(client, [("a.dcm", dicom_bytes(b"1"))]).json()["job_id"]
    upload(client, [("b.dcm", dicom_bytes(b"2"))])
    run_job(queue, tmp_path, done)
    text = client.get("/metrics").text
    assert "vesalius_jobs_submitted_total 2.0" in text
    assert "vesalius_jobs_done_total 1.0" in text
    assert "vesalius_jobs_failed_total 0.0" in text
    assert "vesalius_queue_depth 1.0" in text
    assert 'vesalius_job_duration_seconds_bucket{le="+Inf"} 1.0' in text
    # A second app on the same process has its own registry: no "duplicated timeseries" error.
    assert TestClient(create_app(settings, queue)).get("/metrics").status_code == 200


def test_openapi_documents_both_request_bodies_and_the_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= content.keys()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert spec["paths"]["/v1/jobs/{job_id}"]["get"]["summary"]
    assert client.get("/docs").status_code == 200
    assert JobState.DONE.value in str(spec["components"]["schemas"]["JobState"])
