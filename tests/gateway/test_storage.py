"""InstanceStore: durable, idempotent, traversal-proof storage of received instances."""

from __future__ import annotations

import io
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests import dicom_factory as factory
from vesalius.core.errors import InputError
from vesalius.gateway import storage as storage_module
from vesalius.gateway.storage import (
    InstanceStore,
    MalformedInstanceError,
    StorageFullError,
    UnsafeUidError,
    check_encoded,
    check_uid,
)

Usage = namedtuple("Usage", "total used free")


def _one_ct(tmp_path: Path, shape: tuple[int, int, int], seed: int, syntax: str) -> factory.WrittenSeries:
    """A small CT series under ``tmp_path / src`` in ``syntax`` (seed for values and UIDs); skips without an encoder."""
    if not factory.can_encode(syntax):
        pytest.skip(f"no encoder for {syntax}")
    return factory.write_series(
        tmp_path / "src",
        factory.random_values(shape, seed=seed),
        factory.axial(),
        modality="CT",
        transfer_syntax=syntax,
        seed=seed,
    )


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


# --- refused before anything is written: truncated or inconsistent bytes ---------------------------------------------

PIXEL_TAG = bytes.fromhex("e07f1000")  # (7FE0,0010), little endian
ROWS_US = bytes.fromhex("28001000") + b"US" + bytes.fromhex("0200")  # (0028,0010) US, length 2


def _pixel_offset(data: bytes) -> int:
    return data.rfind(PIXEL_TAG)


def _files_under(root: Path) -> list[Path]:
    """Everything under the store, temporary files included."""
    return [p for p in root.rglob("*") if p.is_file()]


def _cuts(data: bytes) -> dict[str, int]:
    pixels = _pixel_offset(data)
    start = 144 + int.from_bytes(data[140:144], "little")  # after the preamble and file meta
    return {
        "inside a header value": start + (pixels - start) // 2,
        "inside the pixel data element header": pixels + 6,
        "inside the pixel data": pixels + 12 + (len(data) - pixels - 12) // 2,
        "one byte before the end": len(data) - 1,
    }


@pytest.mark.parametrize(
    "where",
    [
        "inside a header value",
        "inside the pixel data element header",
        "inside the pixel data",
        "one byte before the end",
    ],
)
@pytest.mark.parametrize("syntax", [factory.ExplicitVRLittleEndian, factory.ImplicitVRLittleEndian])
def test_truncated_native_instance_is_refused_and_nothing_is_written(tmp_path: Path, where: str, syntax: str) -> None:
    series = _one_ct(tmp_path, (8, 10, 2), seed=3, syntax=syntax)
    data = series.files[0].read_bytes()
    store = InstanceStore(tmp_path / "store")
    with pytest.raises(MalformedInstanceError, match="truncated") as refused:
        store.store_encoded(data[: _cuts(data)[where]])
    # the UID is named when it was received (a cut inside the header may come before it; the file meta has it)
    assert series.sop_instance_uids[0] in str(refused.value)
    assert _files_under(tmp_path / "store") == []
    # the whole file is still stored, and once
    assert store.store_encoded(data).path.read_bytes() == data


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about cut values (a charset cut short, ...)
def test_truncation_at_every_byte_of_the_data_set_is_refused(tmp_path: Path) -> None:
    """No cut is stored: cuts at an element boundary before the UIDs are refused for the missing UID instead."""
    series = factory.write_series(
        tmp_path / "src", factory.random_values((6, 4, 1), seed=4), factory.axial(), modality="CT", seed=4
    )
    data = series.files[0].read_bytes()
    store = InstanceStore(tmp_path / "store")
    start = 144 + int.from_bytes(data[140:144], "little")
    for cut in range(start - 4, len(data)):
        with pytest.raises(InputError):
            store.store_encoded(data[:cut])
    assert _files_under(tmp_path / "store") == []


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_encapsulated_instance_is_refused(tmp_path: Path) -> None:
    series = _one_ct(tmp_path, (8, 10, 1), seed=3, syntax=factory.RLELossless)
    data = series.files[0].read_bytes()
    store = InstanceStore(tmp_path / "store")
    pixels = _pixel_offset(data)
    for cut in (pixels + 20, (pixels + len(data)) // 2, len(data) - 8, len(data) - 1):  # last: the delimiter
        with pytest.raises(MalformedInstanceError, match="truncated"):
            store.store_encoded(data[:cut])
    assert _files_under(tmp_path / "store") == []
    assert not store.store_encoded(data).duplicate


def test_encapsulated_fragments_must_fill_the_pixel_data(tmp_path: Path) -> None:
    series = _one_ct(tmp_path, (8, 10, 1), seed=3, syntax=factory.RLELossless)
    data = bytearray(series.files[0].read_bytes())
    first_item = _pixel_offset(bytes(data)) + 12
    assert data[first_item : first_item + 4] == bytes.fromhex("feff00e0")
    data[first_item : first_item + 4] = bytes.fromhex("feff0de0")  # an item delimiter where the offset table belongs
    with pytest.raises(InputError):
        InstanceStore(tmp_path / "store").store_encoded(bytes(data))
    assert _files_under(tmp_path / "store") == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_unparseable_data_set_is_named_by_its_file_meta_uid(tmp_path: Path, series: factory.WrittenSeries) -> None:
    data = series.files[0].read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")
    with pytest.raises(InputError, match=series.sop_instance_uids[0]):
        InstanceStore(tmp_path / "store").store_encoded(data[:start] + b"\xff" * 40)
    assert _files_under(tmp_path / "store") == []


def _with_rows(data: bytes, vr: bytes, value: bytes) -> bytes:
    """The file with the Rows element rewritten in place (same length: the file stays well-formed)."""
    at = data.index(ROWS_US)
    assert len(value) == 2
    return data[:at] + ROWS_US[:4] + vr + ROWS_US[6:] + value + data[at + 10 :]


def test_rows_that_do_not_parse_are_refused_before_anything_is_written(
    tmp_path: Path, series: factory.WrittenSeries
) -> None:
    data = series.files[0].read_bytes()
    store = InstanceStore(tmp_path / "store")
    with pytest.raises(MalformedInstanceError, match="Rows is not a number") as refused:
        store.store_encoded(_with_rows(data, b"CS", b"ab"))
    assert series.sop_instance_uids[0] in str(refused.value)
    assert _files_under(tmp_path / "store") == []


def test_rows_promising_more_pixels_than_sent_are_refused_and_padding_is_kept(
    tmp_path: Path, series: factory.WrittenSeries
) -> None:
    data = series.files[0].read_bytes()
    store = InstanceStore(tmp_path / "store")
    # 10 rows were written: a header of 11 promises more pixel bytes than arrived (truncated or corrupt)
    with pytest.raises(MalformedInstanceError, match=r"\(7FE0,0010\) has 160 bytes, the header gives"):
        store.store_encoded(_with_rows(data, b"US", (11).to_bytes(2, "little")))
    assert _files_under(tmp_path / "store") == []
    # a header of 9 leaves excess pixel bytes, as padded real images do (pydicom's MR_small_padded.dcm): kept
    kept = store.store_encoded(_with_rows(data, b"US", (9).to_bytes(2, "little")))
    assert kept.path.read_bytes() == _with_rows(data, b"US", (9).to_bytes(2, "little"))


def test_image_without_pixel_data_is_refused(tmp_path: Path, series: factory.WrittenSeries) -> None:
    data = series.files[0].read_bytes()
    with pytest.raises(MalformedInstanceError, match="no Pixel Data"):
        InstanceStore(tmp_path / "store").store_encoded(data[: _pixel_offset(data)])  # cut at an element boundary
    assert _files_under(tmp_path / "store") == []


def test_decoded_dataset_with_unusable_rows_is_refused(tmp_path: Path, series: factory.WrittenSeries) -> None:
    dataset = pydicom.dcmread(io.BytesIO(_with_rows(series.files[0].read_bytes(), b"CS", b"ab")))
    with pytest.raises(MalformedInstanceError, match="Rows"):
        InstanceStore(tmp_path / "store").store(dataset)
    assert _files_under(tmp_path / "store") == []


def _sequence_item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize("undefined_length", [True, False])
@pytest.mark.parametrize("syntax", [factory.ExplicitVRLittleEndian, factory.ImplicitVRLittleEndian])
def test_sequences_are_walked_and_a_cut_inside_one_is_refused(
    tmp_path: Path, undefined_length: bool, syntax: str
) -> None:
    series = _one_ct(tmp_path, (8, 10, 1), seed=6, syntax=syntax)
    dataset = pydicom.dcmread(series.files[0])
    codes = Sequence([_sequence_item(CodeValue="T-D3000", CodingSchemeDesignator="SRT", CodeMeaning="Chest")] * 2)
    codes.is_undefined_length = undefined_length
    dataset.AnatomicRegionSequence = codes
    for item in codes:
        item.is_undefined_length_sequence_item = undefined_length
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    check_encoded(data)  # the whole file passes
    chest = data.index(b"Chest")
    with pytest.raises(MalformedInstanceError, match="truncated"):
        check_encoded(data[: chest + 2])


def test_unexpected_fsync_failure_after_the_rename_leaves_no_file(
    tmp_path: Path, series: factory.WrittenSeries, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = storage_module._fsync_dir

    def failing(folder: Path) -> None:
        if any(p.suffix == ".dcm" for p in folder.iterdir()):
            raise OSError(5, "Input/output error")
        real(folder)

    monkeypatch.setattr(storage_module, "_fsync_dir", failing)
    with pytest.raises(OSError, match="Input/output error"):
        InstanceStore(tmp_path / "store").store_encoded(series.files[0].read_bytes())
    assert _files_under(tmp_path / "store") == []


def test_check_encoded_never_decodes_pixel_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads headers and lengths only, so its cost on the receive path does not include a decode."""
    series = factory.write_series(
        tmp_path / "src", factory.random_values((512, 512, 1), seed=1), factory.axial(), modality="CT", seed=1
    )

    def decoding(_: object) -> None:
        raise AssertionError("check_encoded decoded the pixel data")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(decoding))
    monkeypatch.setattr(pydicom.dataset.Dataset, "convert_pixel_data", decoding)
    check_encoded(series.files[0].read_bytes())
