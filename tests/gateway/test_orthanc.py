"""Orthanc as the hospital PACS: it sends a study to our listener, and our SEG and SR land under that study."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, run_tool
from tests.gateway.orthanc import orthanc
from vesalius.core.results import ModelIdentity, SegmentationResult
from vesalius.core.volume import DicomIdentity, Volume
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.scu import DicomPeer, send_instances
from vesalius.gateway.storage import InstanceStore, StoredInstance
from vesalius.gateway.studies import StudyTracker
from vesalius.writers.seg import segmentation_to_seg, write_dicom
from vesalius.writers.sr import segmentation_to_sr

SHAPE = (32, 28, 6)


@pytest.fixture
def ct(tmp_path: Path) -> factory.WrittenSeries:
    return factory.write_series(tmp_path / "ct", factory.random_values(SHAPE, seed=4), factory.axial())


def test_orthanc_sends_a_study_to_our_listener_which_stores_every_instance(
    tmp_path: Path, ct: factory.WrittenSeries
) -> None:
    store = InstanceStore(tmp_path / "received")
    tracker = StudyTracker(quiet_seconds=3600.0)
    stored: list[StoredInstance] = []

    def on_stored(instance: StoredInstance) -> None:
        stored.append(instance)
        tracker.record(instance)

    settings = ScpSettings(ae_title="VESALIUS", port=0)
    with (
        StorageSCP(settings, store, on_stored) as listener,
        orthanc(tmp_path / "orthanc", {"vesalius": ("VESALIUS", listener.port)}) as pacs,
    ):
        pacs.upload(sorted(ct.folder.glob("*.dcm")))
        tracker.expect(ct.study_uid, SHAPE[2])
        pacs.post("/modalities/vesalius/store", pacs.study_id(ct.study_uid))
    assert sorted(s.sop_instance_uid for s in stored) == sorted(ct.sop_instance_uids)
    (ready,) = tracker.ready()
    assert ready.study_uid == ct.study_uid
    assert ready.reason == "complete"
    for instance in stored:
        assert pydicom.dcmread(instance.path).SOPInstanceUID == instance.sop_instance_uid


def test_our_seg_and_sr_are_listed_by_orthanc_under_the_source_study(tmp_path: Path, ct: factory.WrittenSeries) -> None:
    source = [pydicom.dcmread(path) for path in sorted(ct.folder.glob("*.dcm"))]
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[5:12, 6:14, 1:4] = 1
    identity = DicomIdentity(
        study_instance_uid=ct.study_uid,
        series_instance_uid=ct.series_uid,
        frame_of_reference_uid=ct.identity.frame_of_reference_uid,
        sop_instance_uids=tuple(ct.sop_instance_uids),
    )
    model = ModelIdentity(name="toy", version="1.0.0", sha256="b" * 64, task="segmentation")
    result = SegmentationResult(Volume(labels, ct.affine, modality="CT", identity=identity), {1: "liver"}, model)
    seg = segmentation_to_seg(result, source)
    sr = segmentation_to_sr(result, source, seg=seg)
    outputs = [write_dicom(seg, tmp_path / "out"), write_dicom(sr, tmp_path / "out")]
    with orthanc(tmp_path / "orthanc") as pacs:
        pacs.upload(sorted(ct.folder.glob("*.dcm")))
        report = send_instances(outputs, DicomPeer(pacs.ae_title, HOST, pacs.dicom_port), calling_ae="VESALIUS")
        assert report.ok
        modalities = sorted(series["MainDicomTags"]["Modality"] for series in pacs.series_of(ct.study_uid))
        # and over DICOM: DCMTK findscu asks Orthanc for the study's series
        found = run_tool(
            [
                "findscu",
                "-S",
                "-aet",
                "VESALIUS",
                "-aec",
                pacs.ae_title,
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={ct.study_uid}",
                "-k",
                "Modality",
                "-k",
                "SeriesInstanceUID",
                HOST,
                str(pacs.dicom_port),
            ]
        )
    assert modalities == ["CT", "SEG", "SR"]
    assert found.returncode == 0, found.stderr
    answered = found.stdout + found.stderr
    for modality, series_uid in (("SEG", seg.SeriesInstanceUID), ("SR", sr.SeriesInstanceUID)):
        assert re.search(rf"\(0008,0060\) CS \[{modality}\s*\]", answered)
        assert str(series_uid) in answered
