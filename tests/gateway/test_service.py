"""The gateway service end to end on loopback: storescu (or Orthanc) sends a study, one job runs, the API reports it."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, free_port, run_tool
from tests.gateway.orthanc import orthanc
from vesalius.api.auth import hash_api_key
from vesalius.cli.gateway import api_factory, build_processor
from vesalius.gateway.config import GatewayConfig, parse_config
from vesalius.gateway.jobs import JobOutput, JobSpec, JobState, ModelInfo, OutputFile
from vesalius.gateway.service import GatewayService, SubmittedStudy

API_KEY = "test-key-for-the-service"
HASHES = {"toy": "ab" * 32}
T = TypeVar("T")


def fake_processor(spec: JobSpec, out: Path) -> JobOutput:
    """Module level, so spawned workers can import it; counts its runs beside the store (not in a study)."""
    with (spec.input_folder.parent.parent / "runs.log").open("a") as log:
        log.write(f"{spec.job_id} {spec.study_instance_uid}\n")
    (out / "result.csv").write_text("label,volume_ml\ntoy,1.0\n")
    return JobOutput(
        files=[OutputFile(name="result.csv", kind="csv")],
        models=[ModelInfo(name="toy", version="1", sha256=HASHES["toy"])],
        input_instance_count=sum(1 for _ in spec.input_folder.glob("*/*.dcm")),
        summary={"models": spec.models},
    )


def make_config(tmp_path: Path, extra: str = "") -> GatewayConfig:
    text = f"""
[dicom]
ae_title = "VESALIUS"
port = 0
allowed_calling_aes = ["STORESCU", "ORTHANC"]
min_free_mb = 0
[storage]
root = "store"
[study]
quiet_seconds = 1.0
[queue]
path = "store/queue.sqlite3"
retry_delay_seconds = 0.1
[workers]
count = 1
[models]
toy = "models/toy"
[[route]]
name = "CT"
modality = "CT"
models = ["toy"]
[api]
port = 0
[api.api_keys]
tester = "{hash_api_key(API_KEY)}"
{extra}
"""
    return parse_config(text, tmp_path / "vesalius.toml")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def storescu(service: GatewayService, files: list[Path]) -> None:
    args = ["storescu", "-aet", "STORESCU", "-aec", "VESALIUS", HOST, str(service.dicom_port), *map(str, files)]
    sent = run_tool(args, timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr


def nth_submission(service: GatewayService, n: int) -> Callable[[], SubmittedStudy | None]:
    return lambda: service.submitted[n - 1] if len(service.submitted) >= n else None


@pytest.fixture
def service(tmp_path: Path) -> Iterator[GatewayService]:
    config = make_config(tmp_path)
    with GatewayService(config, fake_processor, HASHES, api_factory=api_factory(config, HASHES)) as running:
        yield running


def test_a_sent_study_runs_once_and_the_api_reports_it(service: GatewayService, tmp_path: Path) -> None:
    ct = factory.write_series(tmp_path / "ct", factory.random_values((16, 12, 4), seed=1), factory.axial())
    storescu(service, ct.files)
    first = wait_for(nth_submission(service, 1), "the study to be queued", timeout=20)
    assert first.created
    assert first.record is not None
    job_id = first.record.job_id
    spec = first.record.spec
    assert (spec.kind, spec.study_instance_uid, spec.models, spec.requester) == (
        "dicom-study",
        ct.study_uid,
        ["toy"],
        "dicom",
    )
    assert spec.input_folder == service.config.storage.instances / ct.study_uid
    assert service.queue is not None
    queue = service.queue
    done = wait_for(lambda: (r := queue.get(job_id)).state is JobState.DONE and r, "the job to finish")
    assert done.output_dir == service.config.storage.results / job_id
    assert (done.output_dir / "result.csv").is_file()

    storescu(service, ct.files)  # the same study again: equal work, no second job
    again = wait_for(nth_submission(service, 2), "the resent study to be judged", timeout=20)
    assert not again.created
    assert again.record is not None
    assert again.record.job_id == job_id
    time.sleep(1.0)  # give a (wrong) second run the chance to happen
    runs = (service.config.storage.root / "runs.log").read_text().splitlines()
    assert runs == [f"{job_id} {ct.study_uid}"]
    assert queue.counts()[JobState.DONE] == 1

    api = f"http://{HOST}:{service.api_port}"
    health = httpx.get(f"{api}/v1/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert httpx.get(f"{api}/v1/jobs/{job_id}", timeout=10).status_code == 401
    view = httpx.get(f"{api}/v1/jobs/{job_id}", headers={"X-API-Key": API_KEY}, timeout=10)
    assert view.status_code == 200
    assert view.json()["state"] == "done"
    assert view.json()["study_instance_uid"] == ct.study_uid
    results = httpx.get(f"{api}/v1/jobs/{job_id}/results", headers={"X-API-Key": API_KEY}, timeout=10).json()
    assert [f["name"] for f in results["files"]] == ["result.csv"]
    status = service.status()
    assert status["running"]
    assert status["jobs"]["done"] == 1
    assert status["workers"] == {"configured": 1, "alive": 1}


def test_a_study_no_rule_routes_is_skipped(
    service: GatewayService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mr = factory.write_series(
        tmp_path / "mr", factory.random_values((10, 8, 3), seed=2, intercept=0.0), factory.axial(), modality="MR"
    )
    caplog.set_level("INFO", logger="vesalius.gateway.service")
    storescu(service, mr.files)
    skipped = wait_for(nth_submission(service, 1), "the study to be judged", timeout=20)
    assert skipped.study_uid == mr.study_uid
    assert skipped.record is None
    assert service.queue is not None
    assert sum(service.queue.counts().values()) == 0
    assert f"study {mr.study_uid} (1 series, 3 instances): no routing rule matches; skipped" in caplog.text
    assert "Phantom" not in caplog.text  # the factory's patient name never reaches the log


def test_stop_leaves_no_thread_or_process_behind(tmp_path: Path) -> None:
    before = {thread.ident for thread in threading.enumerate()}
    config = make_config(tmp_path)
    service = GatewayService(config, fake_processor, HASHES, api_factory=api_factory(config, HASHES))
    service.start()
    assert service.pool is not None
    pids = service.pool.pids
    assert len(pids) == 1
    dicom_port, api_port = service.dicom_port, service.api_port
    assert api_port is not None
    service.stop()
    assert not service.status()["running"]
    wait_for(lambda: {t.ident for t in threading.enumerate()} <= before or None, "threads to end", timeout=10)
    assert multiprocessing.active_children() == []
    for port in (dicom_port, api_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{HOST}:{port}/", timeout=2)


def test_orthanc_sends_a_study_and_the_results_come_back_under_it(tmp_path: Path) -> None:
    """The whole loop with the real processor and a shipped model: Orthanc -> gateway -> SEG/SR -> Orthanc."""
    package = Path(__file__).resolve().parents[2] / "models" / "hippocampus" / "package"
    if not (package / "package.json").is_file():
        pytest.skip("the hippocampus model package is not shipped in this checkout")
    mr = factory.write_series(
        tmp_path / "mr",
        factory.random_values((36, 50, 35), seed=3, intercept=0.0),
        factory.affine_from(factory.rotation((0, 0, 0)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
        modality="MR",
    )
    our_port = free_port()
    with orthanc(tmp_path / "orthanc", {"vesalius": ("VESALIUS", our_port)}) as pacs:
        text = f"""
[dicom]
port = {our_port}
allowed_calling_aes = ["ORTHANC"]
min_free_mb = 0
[storage]
root = "store"
[study]
quiet_seconds = 1.0
[models]
hippocampus = "{package}"
[[route]]
modality = "MR"
models = ["hippocampus"]
[delivery]
dicom = "{pacs.ae_title}@{HOST}:{pacs.dicom_port}"
[api]
enabled = false
"""
        config = parse_config(text, tmp_path / "vesalius.toml")
        processor, hashes = build_processor(config)
        with GatewayService(config, processor, hashes) as service:
            pacs.upload(mr.files)
            pacs.post("/modalities/vesalius/store", pacs.study_id(mr.study_uid))
            submitted = wait_for(nth_submission(service, 1), "the study to be queued", timeout=30)
            assert submitted.record is not None
            assert service.queue is not None
            queue, job_id = service.queue, submitted.record.job_id
            record = wait_for(
                lambda: (r := queue.get(job_id)).state in (JobState.DONE, JobState.FAILED) and r, "the job", 240
            )
        assert record.state is JobState.DONE, record.last_error
        assert record.output is not None
        produced = {f.sop_instance_uid for f in record.output.files if f.kind in ("seg", "sr")}
        assert produced
        listed = {
            instance["MainDicomTags"]["SOPInstanceUID"]
            for series in pacs.series_of(mr.study_uid)
            for instance in pacs.get(f"/series/{series['ID']}/instances")
        }
        assert produced <= listed
        kinds = sorted(series["MainDicomTags"]["Modality"] for series in pacs.series_of(mr.study_uid))
        assert "SR" in kinds
