"""Pull jobs in the study processor: the study is fetched by C-GET from DCMTK dcmqrscp, then processed as usual;
a pull that fails raises, so the queue retries it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, dcmqrscp, free_port
from tests.gateway.test_models import CT_SHAPE
from vesalius.gateway.jobs import JobSpec, JobState
from vesalius.gateway.models import ModelRegistry
from vesalius.gateway.processor import ProcessingError, ProcessorSettings, StudyProcessor
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import execute_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CT_SLICES = CT_SHAPE[2]


@dataclass(frozen=True)
class Archive:
    """A running dcmqrscp holding one CT study."""

    source: str
    study_uid: str
    sop_uids: set[str]


def tiny_package(folder: Path) -> Path:
    """A randomly initialised tiny segmentation package (as tests/gateway/test_processor.py builds one)."""
    from tests.engines.segmentation.test_predict import make_package

    make_package(folder, seed=0)
    return folder


@contextmanager
def ct_archive(folder: Path, ae_title: str = "PACS") -> Iterator[Archive]:
    """dcmqrscp on loopback holding a small CT study; stopped when the block ends."""
    study_uid = generate_uid()
    # Kept short: dcmqrscp's index truncates file paths at 256 characters (then serves "no such file").
    ct = factory.write_series(
        folder / "src",
        factory.random_values((*CT_SHAPE[:2], CT_SLICES), seed=1),
        factory.axial(spacing=(0.7, 0.8, 2.5)),
        study_uid=study_uid,
    )
    with dcmqrscp(folder / "pacs", ct.files, ae_title=ae_title) as peer:
        yield Archive(f"{ae_title}@{HOST}:{peer.port}", study_uid, set(ct.sop_instance_uids))


def pull_spec(archive: Archive, inputs: Path, job_id: str = "pull-1", source: str | None = None) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        kind="pull",
        study_instance_uid=archive.study_uid,
        source=source or archive.source,
        input_folder=inputs / job_id,
        models=["tiny-seg"],
        requester="ris",
    )


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> StudyProcessor:
    package = tiny_package(tmp_path_factory.mktemp("packages") / "tiny-seg")
    settings = ProcessorSettings(calling_ae="VESALIUS", pull_timeout_seconds=20)
    return StudyProcessor(ModelRegistry({"tiny-seg": package}), None, settings)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    with ct_archive(tmp_path_factory.mktemp("archive")) as running:
        yield running


def test_settings_carry_the_calling_ae_title() -> None:
    assert ProcessorSettings().calling_ae == "VESALIUS"
    with pytest.raises(ValueError, match="calling_ae"):
        ProcessorSettings(calling_ae="")


def test_a_pull_job_fetches_its_study_then_writes_seg_and_sr(
    processor: StudyProcessor, archive: Archive, tmp_path: Path
) -> None:
    spec = pull_spec(archive, tmp_path / "inputs")
    output = processor(spec, tmp_path / "out")
    on_disk = {p.stem for p in (spec.input_folder / archive.study_uid).rglob("*.dcm")}
    assert on_disk == archive.sop_uids
    assert output.input_instance_count == CT_SLICES
    assert len(output.input_series_uids) == 1
    assert sorted(f.kind for f in output.files) == ["fhir", "report", "seg", "sr"]
    for item in output.files:
        assert (tmp_path / "out" / item.name).is_file()
    # A retried attempt pulls again into the same folder: nothing doubles, the same result UIDs come out.
    again = processor(spec, tmp_path / "again")
    assert {p.stem for p in spec.input_folder.rglob("*.dcm")} == archive.sop_uids
    assert again.input_instance_count == CT_SLICES
    assert sorted(again.output_uids) == sorted(output.output_uids)


def test_a_study_the_archive_does_not_hold_fails_the_pull(
    processor: StudyProcessor, archive: Archive, tmp_path: Path
) -> None:
    missing = Archive(archive.source, generate_uid(), set())
    with pytest.raises(ProcessingError, match="got 0 instances"):
        processor(pull_spec(missing, tmp_path / "inputs"), tmp_path / "out")


def test_an_unreachable_archive_fails_the_attempt_and_the_queue_retries(
    processor: StudyProcessor, archive: Archive, tmp_path: Path
) -> None:
    dead = f"PACS@{HOST}:{free_port()}"
    with pytest.raises(ProcessingError, match="pulling study"):
        processor(pull_spec(archive, tmp_path / "inputs", source=dead), tmp_path / "out")
    queue = JobQueue(QueueSettings(path=tmp_path / "queue" / "q.sqlite3", retry_delay_seconds=0, retries=1))
    queue.submit(pull_spec(archive, tmp_path / "inputs", job_id="dead", source=dead), "k-dead")
    with pytest.raises(Exception, match="pulling study"):  # JobAttemptError: the queue schedules a retry
        execute_job(queue, "dead", processor, tmp_path / "results")
    record = queue.get("dead")
    assert record.state is JobState.QUEUED
    assert record.attempts == 1
    assert "pulling study" in (record.last_error or "")


def test_a_pull_job_runs_to_done_through_the_queue(processor: StudyProcessor, archive: Archive, tmp_path: Path) -> None:
    queue = JobQueue(QueueSettings(path=tmp_path / "queue" / "q.sqlite3", retry_delay_seconds=0, retries=0))
    spec = pull_spec(archive, tmp_path / "inputs", job_id="ok")
    queue.submit(spec, "k-ok")
    execute_job(queue, "ok", processor, tmp_path / "results")
    record = queue.get("ok")
    assert record.state is JobState.DONE, record.last_error
    assert record.output is not None
    assert record.output.input_instance_count == CT_SLICES
    assert any(f.kind == "seg" for f in record.output.files)
