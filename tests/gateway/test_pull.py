"""Pull mode against DCMTK dcmqrscp as the PACS: C-FIND counts, C-GET into the store, C-MOVE to our SCP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, dcmqrscp
from vesalius.core.errors import InputError
from vesalius.gateway.pull import find_study, pull_study
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.scu import DicomPeer, DicomPeerError
from vesalius.gateway.storage import InstanceStore, StoredInstance


@dataclass
class Pacs:
    peer: DicomPeer
    study_uid: str
    sop_uids: set[str]
    scp: StorageSCP
    moved: list[StoredInstance]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    study = factory.generate_uid()
    ct = factory.write_series(
        tmp_path / "ct", factory.random_values((16, 12, 5), seed=1), factory.axial(), study_uid=study, seed=1
    )
    mr = factory.write_series(
        tmp_path / "mr",
        factory.random_values((10, 8, 3), seed=2, intercept=0.0),
        factory.axial(),
        modality="MR",
        study_uid=study,
        identity=factory.SeriesIdentity.new(study, series_number=2),
        seed=2,
    )
    moved: list[StoredInstance] = []
    settings = ScpSettings(ae_title="VESALIUS", host=HOST, port=0, min_free_bytes=0, network_timeout=10)
    with StorageSCP(settings, InstanceStore(tmp_path / "moved"), moved.append) as scp:
        files = [*ct.files, *mr.files]
        with dcmqrscp(tmp_path / "pacs", files, ae_title="PACS", move_targets={"VESALIUS": scp.port}) as peer:
            uids = {*ct.sop_instance_uids, *mr.sop_instance_uids}
            yield Pacs(DicomPeer("PACS", HOST, peer.port), study, uids, scp, moved)


def test_find_study_reports_count_and_modalities(pacs: Pacs) -> None:
    found = find_study(pacs.peer, pacs.study_uid, timeout=10)
    assert found.found
    assert found.instance_count == len(pacs.sop_uids)
    assert sorted(found.modalities) == ["CT", "MR"]
    missing = find_study(pacs.peer, factory.generate_uid(), timeout=10)
    assert not missing.found
    assert missing.instance_count == 0


def test_pull_by_c_get_stores_the_whole_study(pacs: Pacs, tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "pulled")
    report = pull_study(pacs.peer, pacs.study_uid, store, method="get", timeout=20)
    assert report.ok
    assert report.completed == len(pacs.sop_uids)
    assert {s.sop_instance_uid for s in report.stored} == pacs.sop_uids
    on_disk = {p.stem for p in (tmp_path / "pulled" / pacs.study_uid).rglob("*.dcm")}
    assert on_disk == pacs.sop_uids
    sample = pydicom.dcmread(report.stored[0].path)
    assert sample.StudyInstanceUID == pacs.study_uid
    assert pacs.moved == []


def test_pull_by_c_move_delivers_to_our_listener(pacs: Pacs) -> None:
    report = pull_study(pacs.peer, pacs.study_uid, pacs.scp.store, method="move", move_destination="VESALIUS")
    assert report.ok
    assert report.completed == len(pacs.sop_uids)
    assert report.stored == []
    assert {s.sop_instance_uid for s in pacs.moved} == pacs.sop_uids
    assert all(s.path.is_file() for s in pacs.moved)


def test_move_to_an_unknown_destination_fails_clearly(pacs: Pacs) -> None:
    with pytest.raises(DicomPeerError, match=r"PACS@127\.0\.0\.1:\d+: C-MOVE of study .* failed with status 0x"):
        pull_study(pacs.peer, pacs.study_uid, pacs.scp.store, method="move", move_destination="STRANGER")


def test_bad_pull_arguments(pacs: Pacs) -> None:
    with pytest.raises(InputError, match="needs move_destination"):
        pull_study(pacs.peer, pacs.study_uid, pacs.scp.store, method="move")
    with pytest.raises(InputError, match="StudyInstanceUID"):
        pull_study(pacs.peer, "../etc", pacs.scp.store)
