"""StorageSCP against real DCMTK clients: echo, store, allow-list, low disk, bad data sets, TCP_NODELAY."""

from __future__ import annotations

import copy
import logging
import shutil
import socket
import threading
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import _config, build_context

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, run_tool
from vesalius.gateway.scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILED,
    TRANSFER_SYNTAXES,
    ScpSettings,
    StorageSCP,
)
from vesalius.gateway.scu import DicomPeer, associate
from vesalius.gateway.storage import InstanceStore, StoredInstance

Usage = namedtuple("Usage", "total used free")
SHAPE = (16, 12, 5)


def _settings(allowed_calling_aes: list[str] | None = None) -> ScpSettings:
    return ScpSettings(
        ae_title="VESALIUS",
        host=HOST,
        port=0,
        min_free_bytes=1000,
        network_timeout=10,
        allowed_calling_aes=allowed_calling_aes,
    )


@pytest.fixture
def received(tmp_path: Path) -> list[tuple[StoredInstance, bytes]]:
    return []


@pytest.fixture
def scp(tmp_path: Path, received: list[tuple[StoredInstance, bytes]]) -> Iterator[StorageSCP]:
    lock = threading.Lock()

    def on_stored(stored: StoredInstance) -> None:
        # called after fsync and before the C-STORE response: the file must already be complete on disk
        with lock:
            received.append((stored, stored.path.read_bytes()))

    with StorageSCP(_settings(), InstanceStore(tmp_path / "store", 1000), on_stored) as server:
        yield server


def _series(folder: Path, syntax: str = factory.ExplicitVRLittleEndian) -> factory.WrittenSeries:
    values = factory.random_values(SHAPE, seed=5)
    return factory.write_series(folder, values, factory.axial(), modality="CT", transfer_syntax=syntax, seed=5)


def test_echoscu_succeeds(scp: StorageSCP) -> None:
    result = run_tool(["echoscu", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", HOST, str(scp.port)])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("syntax", [factory.ExplicitVRLittleEndian, factory.RLELossless])
def test_storescu_series_is_on_disk_before_success(
    scp: StorageSCP,
    tmp_path: Path,
    received: list[tuple[StoredInstance, bytes]],
    syntax: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder for {syntax}")
    caplog.set_level(logging.DEBUG, logger="vesalius")
    series = _series(tmp_path / "series", syntax)
    propose = ["-xr"] if syntax == factory.RLELossless else []
    args = ["storescu", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", "-R", *propose, HOST, str(scp.port)]
    result = run_tool([*args, *(str(f) for f in series.files)])
    assert result.returncode == 0, result.stdout + result.stderr

    assert len(received) == len(series.files)
    by_uid = {stored.sop_instance_uid: (stored, data) for stored, data in received}
    for path, sop_uid in zip(series.files, series.sop_instance_uids, strict=True):
        stored, data_at_callback = by_uid[sop_uid]
        assert stored.path == scp.store.root / series.study_uid / series.series_uid / f"{sop_uid}.dcm"
        assert stored.transfer_syntax == syntax
        original, copy = pydicom.dcmread(path), pydicom.dcmread(stored.path)
        assert copy.file_meta.TransferSyntaxUID == syntax
        assert copy.PixelData == original.PixelData
        assert data_at_callback == stored.path.read_bytes()
    # no PHI in our logs: UIDs only
    assert series.identity.patient_name not in caplog.text
    assert series.identity.patient_id not in caplog.text


def test_resent_series_is_acknowledged_without_second_copy(scp: StorageSCP, tmp_path: Path) -> None:
    series = _series(tmp_path / "series")
    args = ["storescu", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", "-R", HOST, str(scp.port)]
    for _ in range(2):
        result = run_tool([*args, *(str(f) for f in series.files)])
        assert result.returncode == 0, result.stderr
    stored = sorted((scp.store.root / series.study_uid / series.series_uid).iterdir())
    assert [p.stem for p in stored] == sorted(series.sop_instance_uids)


def test_calling_ae_outside_the_allow_list_is_rejected(tmp_path: Path) -> None:
    settings = _settings(allowed_calling_aes=["MODALITY"])
    with StorageSCP(settings, InstanceStore(tmp_path / "store")) as scp:
        refused = run_tool(["echoscu", "-aec", "VESALIUS", "-aet", "INTRUDER", "-to", "10", HOST, str(scp.port)])
        assert refused.returncode != 0
        assert "calling ae title not recogni" in (refused.stdout + refused.stderr).lower()
        allowed = run_tool(["echoscu", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", HOST, str(scp.port)])
        assert allowed.returncode == 0, allowed.stderr


def test_low_disk_refuses_new_associations(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, received: list[tuple[StoredInstance, bytes]]
) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10_000, 9_500, 500))
    series = _series(tmp_path / "series")
    args = ["storescu", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", "-R", HOST, str(scp.port)]
    result = run_tool([*args, str(series.files[0])])
    assert result.returncode != 0
    assert "local limit exceeded" in (result.stdout + result.stderr).lower()
    assert received == []


def test_low_disk_during_an_association_answers_out_of_resources(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = _series(tmp_path / "series")
    contexts = [build_context(factory.CTImageStorage, [factory.ExplicitVRLittleEndian])]
    peer = DicomPeer("VESALIUS", HOST, scp.port)
    with associate(peer, contexts, calling_ae="MODALITY", timeout=10) as assoc:
        assert assoc.send_c_store(series.files[0]).Status == 0x0000
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10_000, 9_500, 500))
        assert assoc.send_c_store(series.files[1]).Status == STATUS_OUT_OF_RESOURCES
    assert not (scp.store.root / series.study_uid / series.series_uid / f"{series.sop_instance_uids[1]}.dcm").exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_data_set_without_usable_uids_gets_a_cannot_understand_failure(
    scp: StorageSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = _series(tmp_path / "series")
    dataset: Dataset = pydicom.dcmread(series.files[0])
    dataset.StudyInstanceUID = "1.2.3"
    dataset.SeriesInstanceUID = "../../outside"
    contexts = [build_context(factory.CTImageStorage, [factory.ExplicitVRLittleEndian])]
    caplog.set_level(logging.INFO, logger="vesalius")
    with associate(DicomPeer("VESALIUS", HOST, scp.port), contexts, calling_ae="MODALITY", timeout=10) as assoc:
        status = int(assoc.send_c_store(dataset).Status)
    assert 0xC000 <= status <= 0xCFFF
    assert not (tmp_path / "outside").exists()
    assert dataset.SOPInstanceUID in caplog.text
    assert "SeriesInstanceUID" in caplog.text
    assert series.identity.patient_name not in caplog.text


def test_tcp_nodelay_is_set_on_accepted_and_requested_sockets(scp: StorageSCP) -> None:
    contexts = [build_context("1.2.840.10008.1.1")]
    with associate(DicomPeer("VESALIUS", HOST, scp.port), contexts, calling_ae="MODALITY", timeout=10) as assoc:
        assert assoc.dul.socket is not None
        ours = assoc.dul.socket.socket
        assert ours is not None
        assert ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        server = scp.server
        assert server is not None
        accepted = [a for a in server.active_associations if a.dul.socket is not None and a.dul.socket.socket]
        assert accepted, "the SCP holds no accepted association"
        for acceptor in accepted:
            assert acceptor.dul.socket is not None
            sock = acceptor.dul.socket.socket
            assert sock is not None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_settings_validate_ae_titles() -> None:
    with pytest.raises(ValueError, match="AE title"):
        ScpSettings(ae_title="A" * 17)
    with pytest.raises(ValueError, match="allowed_calling_aes is empty"):
        ScpSettings(allowed_calling_aes=[])


def test_maximum_pdu_size_is_offered_to_the_peer(scp: StorageSCP) -> None:
    contexts = [build_context("1.2.840.10008.1.1")]
    with associate(DicomPeer("VESALIUS", HOST, scp.port), contexts, calling_ae="MODALITY", timeout=10) as assoc:
        # the acceptor's A-ASSOCIATE-AC carries our limit: the peer may send PDUs up to this size
        assert assoc.acceptor.maximum_length == scp.settings.maximum_pdu_size == 1 << 20
    with pytest.raises(ValueError, match="maximum_pdu_size"):
        ScpSettings(maximum_pdu_size=-1)


def test_each_association_gets_its_own_copy_of_the_supported_contexts(scp: StorageSCP) -> None:
    server = scp.server
    assert server is not None
    original = server.contexts
    copied = copy.deepcopy(original)
    assert [(c.abstract_syntax, c.transfer_syntax) for c in copied] == [
        (c.abstract_syntax, c.transfer_syntax) for c in original
    ]
    assert all(a is not b and a.transfer_syntax is not b.transfer_syntax for a, b in zip(copied, original, strict=True))
    copied[0].add_transfer_syntax("1.2.3.4")  # negotiation-time changes must not reach the server's list
    assert "1.2.3.4" not in original[0].transfer_syntax
    assert sum(set(TRANSFER_SYNTAXES) <= set(c.transfer_syntax) for c in original) > 100  # every storage class


# --- truncated and inconsistent instances: a failure status, nothing stored, the association goes on ---------------

ROWS_US = bytes.fromhex("28001000") + b"US" + bytes.fromhex("0200")  # (0028,0010) US, length 2


def _with_rows(data: bytes, vr: bytes, value: bytes) -> bytes:
    at = data.index(ROWS_US)
    return data[:at] + ROWS_US[:4] + vr + ROWS_US[6:] + value + data[at + 10 :]


def _stored_files(scp: StorageSCP) -> list[Path]:
    return [p for p in scp.store.root.rglob("*") if p.is_file()]


def test_truncated_instances_sent_as_they_are_get_a_failure_and_are_not_stored(
    scp: StorageSCP,
    tmp_path: Path,
    received: list[tuple[StoredInstance, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """storescu will not send a truncated file (it reads it first), so pynetdicom sends the file's bytes as they are
    (STORE_SEND_CHUNKED_DATASET: the data set after the file meta goes out unparsed, as in the fault benchmark)."""
    series = _series(tmp_path / "series")
    files = series.files
    data = [f.read_bytes() for f in files]
    pixels = data[1].rfind(bytes.fromhex("e07f1000"))
    broken = {
        1: data[1][: pixels + 12 + 100],  # inside the pixel data
        2: data[2][:-1],  # one byte before the end
        3: data[3][: data[3].index(ROWS_US) + 5],  # inside the header, after the UIDs
    }
    for index, content in broken.items():
        files[index].write_bytes(content)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    caplog.set_level(logging.INFO, logger="vesalius")
    contexts = [build_context(factory.CTImageStorage, [factory.ExplicitVRLittleEndian])]
    with associate(DicomPeer("VESALIUS", HOST, scp.port), contexts, calling_ae="MODALITY", timeout=10) as assoc:
        statuses = [int(assoc.send_c_store(path).Status) for path in files]

    assert statuses == [0, STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND, 0]
    valid = [series.sop_instance_uids[0], series.sop_instance_uids[4]]
    assert sorted(p.stem for p in _stored_files(scp)) == sorted(valid)  # no temporary file either
    assert sorted(stored.sop_instance_uid for stored, _ in received) == sorted(valid)
    for index in broken:
        assert f"SOP instance {series.sop_instance_uids[index]} refused (0xC000)" in caplog.text
    assert "truncated" in caplog.text
    assert series.identity.patient_name not in caplog.text


def test_storescu_instance_with_corrupted_rows_is_refused_and_the_rest_stored(
    scp: StorageSCP, tmp_path: Path, received: list[tuple[StoredInstance, bytes]]
) -> None:
    """Rows that do not parse, and Rows that disagree with the pixel data: storescu sends both (they read as DICOM)."""
    series = _series(tmp_path / "series")
    files = series.files
    files[1].write_bytes(_with_rows(files[1].read_bytes(), b"CS", b"ab"))
    files[3].write_bytes(_with_rows(files[3].read_bytes(), b"US", (SHAPE[1] + 1).to_bytes(2, "little")))
    args = ["storescu", "-v", "-aec", "VESALIUS", "-aet", "MODALITY", "-to", "10", "-R", "-nh", HOST, str(scp.port)]
    result = run_tool([*args, *(str(f) for f in files)])
    output = (result.stdout + result.stderr).lower()
    # storescu -v names each response; -nh goes on after a failure
    assert output.count("received store response (error: cannotunderstand)") == 2, output
    assert output.count("received store response (success)") == 3, output
    stored = sorted(p.stem for p in _stored_files(scp))
    assert stored == sorted(series.sop_instance_uids[i] for i in (0, 2, 4))
    assert len(received) == 3


def test_unexpected_error_in_storage_answers_a_failure_and_the_association_goes_on(
    scp: StorageSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    series = _series(tmp_path / "series")
    real = scp.store.store_encoded

    def faulty(encoded: bytes) -> StoredInstance:
        if series.sop_instance_uids[1].encode() in encoded:
            raise RuntimeError(f"unforeseen: {series.identity.patient_name}")  # its text must not reach the log
        return real(encoded)

    monkeypatch.setattr(scp.store, "store_encoded", faulty)
    caplog.set_level(logging.INFO, logger="vesalius")
    contexts = [build_context(factory.CTImageStorage, [factory.ExplicitVRLittleEndian])]
    with associate(DicomPeer("VESALIUS", HOST, scp.port), contexts, calling_ae="MODALITY", timeout=10) as assoc:
        statuses = [int(assoc.send_c_store(path).Status) for path in series.files[:3]]
    assert statuses == [0, STATUS_PROCESSING_FAILED, 0]
    assert 0xC000 <= STATUS_PROCESSING_FAILED <= 0xCFFF
    assert f"SOP instance {series.sop_instance_uids[1]} not stored (0xC002): unexpected RuntimeError" in caplog.text
    assert series.identity.patient_name not in caplog.text
    assert sorted(p.stem for p in _stored_files(scp)) == sorted(series.sop_instance_uids[i] for i in (0, 2))
