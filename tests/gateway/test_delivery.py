"""Delivery: SEG/SR by C-STORE to DCMTK storescp, the FHIR bundle to a local HTTP server or a folder; failures raise
after bounded retries so the queue retries the job; the processor delivers at the end of a job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid

from tests.gateway.dicom_peers import free_port, storescp
from tests.gateway.test_models import write_ct
from tests.http_server import FhirServer
from tests.writers.conftest import label_volume, model
from vesalius.core.results import SegmentationResult
from vesalius.gateway.delivery import DeliverySettings, deliver
from vesalius.gateway.jobs import JobOutput, JobSpec, OutputFile
from vesalius.gateway.models import ModelRegistry
from vesalius.gateway.processor import ProcessorSettings, StudyProcessor
from vesalius.gateway.routing import Routing
from vesalius.gateway.scu import DicomPeerError
from vesalius.writers.fhir import FhirDeliveryError, diagnostic_report_bundle, write_bundle
from vesalius.writers.seg import segmentation_to_seg, write_dicom
from vesalius.writers.sr import result_to_sr

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def fhir_ok(fhir_server: type[FhirServer]) -> FhirServer:
    return fhir_server([200])


@pytest.fixture
def job_folder(tmp_path: Path) -> tuple[Path, JobOutput]:
    """A job output as the processor leaves it: a SEG and an SR of a CT series, and the FHIR bundle."""
    study_uid = generate_uid()
    ct = write_ct(tmp_path / "store", study_uid)
    labels = np.zeros((24, 20, 6), dtype=np.uint8)
    labels[4:12, 5:12, 1:4] = 1
    result = SegmentationResult(label_volume(ct, labels), {1: "liver"}, model())
    source = [pydicom.dcmread(path, stop_before_pixels=True) for path in ct.files]
    out = tmp_path / "job"
    seg = segmentation_to_seg(result, source)
    sr = result_to_sr(result, source, seg=seg)
    files = [
        OutputFile(name=f"seg/{write_dicom(seg, out / 'seg').name}", kind="seg", sop_instance_uid=seg.SOPInstanceUID),
        OutputFile(name=f"sr/{write_dicom(sr, out / 'sr').name}", kind="sr", sop_instance_uid=sr.SOPInstanceUID),
    ]
    bundle = diagnostic_report_bundle(
        [result], study_instance_uid=study_uid, issued=datetime.now(UTC), dicom_outputs=[seg, sr]
    )
    write_bundle(bundle, out / "fhir" / "DiagnosticReport.json")
    files.append(OutputFile(name="fhir/DiagnosticReport.json", kind="fhir"))
    return out, JobOutput(files=files, output_uids=[seg.SOPInstanceUID, sr.SOPInstanceUID])


def received_uids(folder: Path) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir())


def test_seg_and_sr_are_stored_at_the_pacs_and_resending_is_harmless(
    job_folder: tuple[Path, JobOutput], tmp_path: Path
) -> None:
    out, output = job_folder
    with storescp(tmp_path / "pacs") as peer:
        settings = DeliverySettings(dicom_destination=f"{peer.ae_title}@127.0.0.1:{peer.port}", calling_ae="VES")
        report = deliver(out, output, settings)
        assert sorted(report.dicom_sent) == sorted(output.output_uids)
        assert received_uids(tmp_path / "pacs") == sorted(output.output_uids)
        again = deliver(out, output, settings)  # a retried job sends the same SOP instances again
        assert sorted(again.dicom_sent) == sorted(output.output_uids)
    assert report.dicom_peer == f"{peer.ae_title}@127.0.0.1:{peer.port}"
    assert not report.fhir_posted
    assert report.fhir_file is None


def test_an_unreachable_pacs_fails_after_the_bounded_retries(job_folder: tuple[Path, JobOutput]) -> None:
    out, output = job_folder
    settings = DeliverySettings(
        dicom_destination=f"PACS@127.0.0.1:{free_port()}", dicom_retries=2, dicom_backoff_seconds=0.01
    )
    with pytest.raises(DicomPeerError, match="not sent after 3 attempts"):
        deliver(out, output, settings)


def test_the_bundle_is_posted_to_the_fhir_server(job_folder: tuple[Path, JobOutput], fhir_ok: FhirServer) -> None:
    out, output = job_folder
    settings = DeliverySettings(fhir_url=fhir_ok.url, fhir_headers={"Authorization": "Bearer t0ken"})
    report = deliver(out, output, settings)
    assert report.fhir_posted
    assert report.fhir_url == fhir_ok.url
    assert len(fhir_ok.bodies) == 1
    bundle = json.loads(fhir_ok.bodies[0])
    assert bundle["type"] == "transaction"
    assert any(e["resource"]["resourceType"] == "DiagnosticReport" for e in bundle["entry"])
    assert fhir_ok.headers[0]["Content-Type"] == "application/fhir+json"
    assert fhir_ok.headers[0]["Authorization"] == "Bearer t0ken"


def test_a_failing_fhir_server_fails_after_the_bounded_retries(
    job_folder: tuple[Path, JobOutput], fhir_server: type[FhirServer]
) -> None:
    out, output = job_folder
    server = fhir_server([503])
    settings = DeliverySettings(fhir_url=server.url, fhir_retries=2, fhir_backoff_seconds=0.01)
    with pytest.raises(FhirDeliveryError, match="no success after 3 attempts"):
        deliver(out, output, settings)
    assert len(server.bodies) == 3


def test_the_bundle_is_copied_to_a_folder_under_a_stable_name(
    job_folder: tuple[Path, JobOutput], tmp_path: Path
) -> None:
    out, output = job_folder
    settings = DeliverySettings(fhir_folder=tmp_path / "fhir-drop")
    first = deliver(out, output, settings).fhir_file
    second = deliver(out, output, settings).fhir_file
    assert first is not None
    assert first == second
    assert [p.name for p in (tmp_path / "fhir-drop").iterdir()] == [first.name]
    assert first.read_bytes() == (out / "fhir" / "DiagnosticReport.json").read_bytes()


def test_settings_refuse_a_malformed_destination_or_url() -> None:
    with pytest.raises(ValidationError):
        DeliverySettings(dicom_destination="PACS-at-host")
    with pytest.raises(ValidationError):
        DeliverySettings(fhir_url="ftp://fhir.example/")
    assert DeliverySettings(dicom_destination="PACS@10.0.0.5:104").peer is not None


def test_the_processor_delivers_at_the_end_of_a_job_and_fails_the_attempt_when_delivery_fails(
    tmp_path: Path,
) -> None:
    from tests.engines.segmentation.test_predict import make_package

    make_package(tmp_path / "tiny-seg", seed=0)
    registry = ModelRegistry({"tiny-seg": tmp_path / "tiny-seg"})
    routing = Routing.from_toml('[[route]]\nmodality = "CT"\nmodels = ["tiny-seg"]\n')
    study_uid = generate_uid()
    write_ct(tmp_path / "store", study_uid)
    spec = JobSpec(
        job_id="j",
        kind="dicom-study",
        study_instance_uid=study_uid,
        input_folder=tmp_path / "store" / study_uid,
        requester="SCU",
    )
    with storescp(tmp_path / "pacs") as peer:
        delivery = DeliverySettings(
            dicom_destination=f"{peer.ae_title}@127.0.0.1:{peer.port}", fhir_folder=tmp_path / "fhir-drop"
        )
        output = StudyProcessor(registry, routing, ProcessorSettings(delivery=delivery))(spec, tmp_path / "out")
        assert received_uids(tmp_path / "pacs") == sorted(output.output_uids)
    assert output.summary["delivery"]["dicom_sent"] == 2
    assert len(list((tmp_path / "fhir-drop").glob("*.json"))) == 1
    dead = DeliverySettings(dicom_destination=f"PACS@127.0.0.1:{free_port()}", dicom_retries=0)
    with pytest.raises(DicomPeerError):
        StudyProcessor(registry, routing, ProcessorSettings(delivery=dead))(spec, tmp_path / "out2")


def test_nothing_is_sent_when_no_destination_is_configured(job_folder: tuple[Path, JobOutput]) -> None:
    out, output = job_folder
    report = deliver(out, output, DeliverySettings())
    assert report.dicom_sent == []
    assert report.dicom_peer is None
    assert not report.fhir_posted
