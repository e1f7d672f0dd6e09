"""StudyTracker: quiet time and expected counts decide readiness, each study once; a fake clock, no sleeping."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vesalius.core.errors import InputError
from vesalius.gateway.storage import StoredInstance, UnsafeUidError
from vesalius.gateway.studies import StudyTracker

STUDY = "1.2.826.0.1.1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _instance(
    root: Path, sop: str, series: str = "1.2.3.1", study: str = STUDY, duplicate: bool = False, **extra: object
) -> StoredInstance:
    attributes: dict[str, object] = {
        "modality": "CT",
        "series_description": "chest 1mm",
        "body_part": "CHEST",
        "rows": 512,
        "columns": 512,
    }
    attributes.update(extra)
    return StoredInstance(
        path=root / study / series / f"{sop}.dcm",
        study_uid=study,
        series_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        duplicate=duplicate,
        **attributes,
    )


def test_study_is_ready_after_quiet_time_once_with_series_details(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StudyTracker(quiet_seconds=30, clock=clock)
    tracker.record(_instance(tmp_path, "1.1"))
    clock.now += 20
    tracker.record(_instance(tmp_path, "1.2"))
    tracker.record(_instance(tmp_path, "2.1", series="1.2.3.2", modality="SR", rows=None, columns=None))
    clock.now += 29.9
    assert tracker.ready() == []
    clock.now += 0.1
    (study,) = tracker.ready()
    assert study.study_uid == STUDY
    assert study.reason == "quiet"
    assert study.instance_count == 3
    assert study.folder == tmp_path / STUDY
    ct = study.series_by_uid("1.2.3.1")
    assert (ct.modality, ct.description, ct.body_part, ct.rows, ct.columns) == ("CT", "chest 1mm", "CHEST", 512, 512)
    assert ct.instance_count == 2
    assert ct.folder == tmp_path / STUDY / "1.2.3.1"
    assert study.series_by_uid("1.2.3.2").instance_count == 1
    clock.now += 100
    assert tracker.ready() == []


def test_expected_count_makes_a_study_ready_without_waiting(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StudyTracker(quiet_seconds=30, clock=clock)
    tracker.expect(STUDY, 3)  # before any instance arrives, as after a C-FIND
    tracker.record(_instance(tmp_path, "1.1"))
    tracker.record(_instance(tmp_path, "1.2"))
    tracker.record(_instance(tmp_path, "1.2", duplicate=True))
    assert tracker.ready() == []
    tracker.record(_instance(tmp_path, "1.3"))
    (study,) = tracker.ready()
    assert study.reason == "complete"
    assert study.instance_count == 3


def test_expect_after_arrivals_and_studies_are_independent(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StudyTracker(quiet_seconds=10, clock=clock)
    other = "1.2.826.0.1.2"
    tracker.record(_instance(tmp_path, "1.1"))
    clock.now += 5
    tracker.record(_instance(tmp_path, "9.1", study=other))
    tracker.expect(other, 1)
    assert [s.study_uid for s in tracker.ready()] == [other]
    clock.now += 5
    assert [s.study_uid for s in tracker.ready()] == [STUDY]
    assert tracker.open_studies() == []


def test_late_instances_are_counted_not_reported_again_until_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    tracker = StudyTracker(quiet_seconds=1, clock=clock)
    tracker.record(_instance(tmp_path, "1.1"))
    clock.now += 1
    assert len(tracker.ready()) == 1
    tracker.record(_instance(tmp_path, "1.2"))
    clock.now += 5
    assert tracker.ready() == []
    assert tracker.late_instances == 1
    tracker.forget(STUDY)
    tracker.record(_instance(tmp_path, "1.2"))
    clock.now += 1
    (again,) = tracker.ready()
    assert again.instance_count == 1


def test_concurrent_records_are_all_counted(tmp_path: Path) -> None:
    tracker = StudyTracker(quiet_seconds=1, clock=FakeClock())
    tracker.expect(STUDY, 400)

    def record(offset: int) -> None:
        for i in range(100):
            tracker.record(_instance(tmp_path, f"{offset}.{i}"))

    threads = [threading.Thread(target=record, args=(n + 1,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    (study,) = tracker.ready()
    assert study.reason == "complete"
    assert study.instance_count == 400


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InputError, match="quiet time"):
        StudyTracker(quiet_seconds=0)
    tracker = StudyTracker(quiet_seconds=1)
    with pytest.raises(InputError, match="expected instance count"):
        tracker.expect(STUDY, 0)
    with pytest.raises(UnsafeUidError):
        tracker.expect("../x", 1)
