"""C-STORE/C-ECHO SCU against DCMTK storescp and our own SCP: delivery, syntaxes kept, retries, clear failures."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pydicom
import pytest

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, dcmtk, dcmtk_env, free_port, storescp
from vesalius.core.errors import InputError, NotDicomError
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.scu import DicomPeer, DicomPeerError, echo, send_instances
from vesalius.gateway.storage import InstanceStore

SHAPE = (16, 12, 4)


def _series(folder: Path, syntax: str = factory.ExplicitVRLittleEndian, seed: int = 7) -> factory.WrittenSeries:
    values = factory.random_values(SHAPE, seed=seed)
    return factory.write_series(folder, values, factory.axial(), modality="CT", transfer_syntax=syntax, seed=seed)


def _received(folder: Path) -> dict[str, pydicom.Dataset]:
    datasets = [pydicom.dcmread(path) for path in folder.iterdir() if path.is_file()]
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def test_peer_parse() -> None:
    assert DicomPeer.parse("PACS@10.0.0.5:104") == DicomPeer("PACS", "10.0.0.5", 104)
    assert DicomPeer.parse(" ORTHANC@[::1]:4242 ") == DicomPeer("ORTHANC", "::1", 4242)
    assert str(DicomPeer("A", "h", 1)) == "A@h:1"
    for bad in ("PACS", "PACS@host", "@host:104", "PACS@host:port", "PACS@host:70000", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(InputError, match="DICOM peer"):
            DicomPeer.parse(bad)


def test_send_to_storescp_delivers_every_instance_in_its_own_syntax(tmp_path: Path) -> None:
    plain = _series(tmp_path / "plain")
    files = list(plain.files)
    syntaxes = {uid: factory.ExplicitVRLittleEndian for uid in plain.sop_instance_uids}
    if factory.can_encode(factory.RLELossless):
        rle = _series(tmp_path / "rle", factory.RLELossless, seed=8)
        files += rle.files
        syntaxes.update({uid: factory.RLELossless for uid in rle.sop_instance_uids})
    with storescp(tmp_path / "out") as peer:
        target = DicomPeer(peer.ae_title, HOST, peer.port)
        assert echo(target, timeout=10)
        report = send_instances(files, target, calling_ae="VESALIUS", timeout=10)
    assert report.ok
    assert len(report.sent) == len(files)
    assert report.associations == 1
    arrived = _received(tmp_path / "out")
    assert set(arrived) == set(syntaxes)
    for uid, dataset in arrived.items():
        assert dataset.file_meta.TransferSyntaxUID == syntaxes[uid]


def test_retries_until_the_peer_comes_up(tmp_path: Path) -> None:
    series = _series(tmp_path / "series")
    port = free_port()
    out = tmp_path / "out"
    out.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    args = [dcmtk("storescp"), "-aet", "LATE", "-od", str(out), "-dhl", str(port)]

    def start_late() -> None:
        processes.append(subprocess.Popen(args, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    timer = threading.Timer(0.5, start_late)
    timer.start()
    try:
        report = send_instances(series.files, DicomPeer("LATE", HOST, port), retries=6, backoff_seconds=0.2, timeout=10)
    finally:
        timer.cancel()
        timer.join(5)
        for process in processes:
            process.terminate()
            process.wait(timeout=5)
    assert report.ok
    assert report.associations >= 2, "the first attempt should have found nobody listening"
    assert set(_received(out)) == set(series.sop_instance_uids)


def test_gives_up_clearly_after_the_retry_limit(tmp_path: Path) -> None:
    series = _series(tmp_path / "series")
    peer = DicomPeer("NOBODY", HOST, free_port())
    with pytest.raises(DicomPeerError, match=r"NOBODY@127\.0\.0\.1:\d+: 4 of 4 instances not sent after 3 attempts"):
        send_instances(series.files, peer, retries=2, backoff_seconds=0.01, timeout=5)
    assert not echo(peer, timeout=5)


def test_rejection_reason_is_reported(tmp_path: Path) -> None:
    series = _series(tmp_path / "series")
    settings = ScpSettings(ae_title="VESALIUS", host=HOST, port=0, allowed_calling_aes=["MODALITY"], min_free_bytes=0)
    with StorageSCP(settings, InstanceStore(tmp_path / "store")) as scp:
        peer = DicomPeer("VESALIUS", HOST, scp.port)
        with pytest.raises(DicomPeerError, match=r"(?i)calling AE title not recogni"):
            send_instances(series.files, peer, calling_ae="INTRUDER", retries=0, timeout=10)
        assert echo(peer, calling_ae="MODALITY", timeout=10)
        assert not echo(peer, calling_ae="INTRUDER", timeout=10)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_per_instance_failure_is_reported_not_retried(tmp_path: Path) -> None:
    series = _series(tmp_path / "series")
    bad = pydicom.dcmread(series.files[0])
    bad.SeriesInstanceUID = "not/a/uid"
    bad_path = tmp_path / "bad.dcm"
    bad.save_as(bad_path)
    settings = ScpSettings(ae_title="VESALIUS", host=HOST, port=0, min_free_bytes=0)
    with StorageSCP(settings, InstanceStore(tmp_path / "store")) as scp:
        report = send_instances([bad_path, *series.files[1:]], DicomPeer("VESALIUS", HOST, scp.port), timeout=10)
    assert not report.ok
    assert report.associations == 1
    assert [r.path for r in report.failed] == [bad_path]
    assert report.failed[0].status is not None
    assert 0xC000 <= report.failed[0].status <= 0xCFFF
    assert len(report.sent) == len(series.files) - 1


def test_a_file_that_is_not_dicom_is_refused_before_sending(tmp_path: Path) -> None:
    junk = factory.write_text_file(tmp_path / "junk.dcm")
    with pytest.raises(NotDicomError, match=r"junk\.dcm"):
        send_instances([junk], DicomPeer("X", HOST, 104), retries=0)
