"""InstanceStore: durable, idempotent, traversal-proof storage of received instances."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pydicom
import pytest

from tests import dicom_factory as factory
from vesalius.core.errors import InputError
from vesalius.gateway.storage import InstanceStore, StorageFullError, UnsafeUidError, check_uid

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def series(tmp_path: Path) -> factory.WrittenSeries:
    values = factory.random_values((8, 10, 3), seed=3)
    return factory.write_series(tmp_path / "src", values, factory.axial(), modality="CT", seed=3)


def test_encoded_instance_is_stored_byte_for_byte_and_fsynced(
    tmp_path: Path, series: factory.WrittenSeries, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(descriptor: int) -> None:
        synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", spy)
    store = InstanceStore(tmp_path / "store")
    source = series.files[0]
    stored = store.store_encoded(source.read_bytes())

    expected = tmp_path / "store" / series.study_uid / series.series_uid / f"{series.sop_instance_uids[0]}.dcm"
    assert stored.path == expected
    assert expected.read_bytes() == source.read_bytes()
    assert not stored.duplicate
    assert (stored.modality, stored.body_part, stored.rows, stored.columns) == ("CT", "CHEST", 10, 8)
    # the file, its folder, and the two new folders' parents were fsync-ed
    assert len(synced) >= 4
    assert not [p for p in expected.parent.iterdir() if p.name.startswith(".incoming-")]


def test_decoded_dataset_keeps_its_transfer_syntax(tmp_path: Path, series: factory.WrittenSeries) -> None:
    dataset = pydicom.dcmread(series.files[1])
    dataset.file_meta.TransferSyntaxUID = factory.ImplicitVRLittleEndian
    stored = InstanceStore(tmp_path / "store").store(dataset)
    again = pydicom.dcmread(stored.path)
    assert again.file_meta.TransferSyntaxUID == factory.ImplicitVRLittleEndian
    assert again.SOPInstanceUID == dataset.SOPInstanceUID
    assert (again.pixel_array == dataset.pixel_array).all()
    assert stored.transfer_syntax == factory.ImplicitVRLittleEndian


def test_repeated_sop_instance_is_idempotent(tmp_path: Path, series: factory.WrittenSeries) -> None:
    store = InstanceStore(tmp_path / "store")
    first = store.store_encoded(series.files[0].read_bytes())
    mtime = first.path.stat().st_mtime_ns
    second = store.store_encoded(series.files[0].read_bytes())
    assert second.duplicate
    assert not first.duplicate
    assert second.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("bad", ["../../etc", "1.2/3", "", "1..2", "1.2.a", ".1.2", "1" * 65, "1.2\\3"])
def test_uids_that_could_escape_the_store_are_refused(tmp_path: Path, series: factory.WrittenSeries, bad: str) -> None:
    dataset = pydicom.dcmread(series.files[0])
    dataset.StudyInstanceUID = bad
    with pytest.raises(UnsafeUidError, match="StudyInstanceUID"):
        InstanceStore(tmp_path / "store").store(dataset)
    assert not any((tmp_path / "store").iterdir())
    with pytest.raises(UnsafeUidError):
        check_uid("SOPInstanceUID", bad)


def test_missing_uid_and_garbage_bytes_are_input_errors(tmp_path: Path, series: factory.WrittenSeries) -> None:
    store = InstanceStore(tmp_path / "store")
    dataset = pydicom.dcmread(series.files[0])
    del dataset.SeriesInstanceUID
    with pytest.raises(UnsafeUidError, match="SeriesInstanceUID"):
        store.store(dataset)
    with pytest.raises(InputError, match="cannot be parsed"):
        store.store_encoded(b"not dicom at all" * 20)


def test_low_disk_is_detected_and_refuses_new_files(
    tmp_path: Path, series: factory.WrittenSeries, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path / "store", min_free_bytes=10_000)
    first = store.store_encoded(series.files[0].read_bytes())
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100_000, 95_000, 5_000))
    assert not store.has_room()
    with pytest.raises(StorageFullError, match="below the minimum of 10000"):
        store.store_encoded(series.files[1].read_bytes())
    # an instance already stored is still acknowledged: nothing new needs the room
    assert store.store_encoded(series.files[0].read_bytes()).path == first.path
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100_000, 50_000, 50_000))
    assert store.has_room()
