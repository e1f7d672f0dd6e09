"""Study completion: DICOM has no "end of study" message, so a study is ready when it goes quiet or is complete.

A study is reported ready once, by :meth:`StudyTracker.ready`, when either no new instance arrived for
``quiet_seconds`` or the expected instance count (from a C-FIND's NumberOfStudyRelatedInstances) is reached.
Instances that arrive after their study was reported are counted as late and logged, not reported again: a
caller that wants to re-run a study calls :meth:`StudyTracker.forget` first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vesalius.core.errors import InputError
from vesalius.gateway.storage import StoredInstance, check_uid

__all__ = ["ReadyStudy", "SeriesInfo", "StudyTracker"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesInfo:
    """What routing needs to know about one received series."""

    series_uid: str
    modality: str
    description: str
    body_part: str
    rows: int | None
    columns: int | None
    instance_count: int
    folder: Path


@dataclass(frozen=True)
class ReadyStudy:
    """A study whose instances are all (as far as we can tell) on disk."""

    study_uid: str
    folder: Path
    series: list[SeriesInfo]
    instance_count: int
    reason: Literal["quiet", "complete"]

    def series_by_uid(self, series_uid: str) -> SeriesInfo:
        for info in self.series:
            if info.series_uid == series_uid:
                return info
        raise KeyError(series_uid)


@dataclass
class _Series:
    first: StoredInstance
    sop_uids: set[str] = field(default_factory=set)


@dataclass
class _Study:
    folder: Path
    last_arrival: float
    series: dict[str, _Series] = field(default_factory=dict)
    expected: int | None = None

    @property
    def count(self) -> int:
        return sum(len(series.sop_uids) for series in self.series.values())


class StudyTracker:
    """Thread-safe: C-STORE handlers call :meth:`record`, a dispatcher polls :meth:`ready`."""

    def __init__(self, quiet_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if quiet_seconds <= 0:
            raise InputError(f"study quiet time must be > 0 seconds, got {quiet_seconds}")
        self.quiet_seconds = float(quiet_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Study] = {}
        self._reported: set[str] = set()
        self._pending_expectations: dict[str, int] = {}
        self.late_instances = 0

    def record(self, stored: StoredInstance) -> None:
        """Note one stored instance (duplicates count once; they still show the study is active)."""
        with self._lock:
            if stored.study_uid in self._reported:
                self.late_instances += 1
                LOGGER.warning(
                    "SOP instance %s arrived after study %s was reported ready; not reported again",
                    stored.sop_instance_uid,
                    stored.study_uid,
                )
                return
            study = self._open.get(stored.study_uid)
            if study is None:
                study = _Study(folder=stored.path.parent.parent, last_arrival=self._clock())
                study.expected = self._pending_expectations.pop(stored.study_uid, None)
                self._open[stored.study_uid] = study
            study.last_arrival = self._clock()
            series = study.series.setdefault(stored.series_uid, _Series(first=stored))
            series.sop_uids.add(stored.sop_instance_uid)

    def expect(self, study_uid: str, count: int) -> None:
        """The study is complete once ``count`` distinct instances are stored (may be called before any arrive)."""
        check_uid("StudyInstanceUID", study_uid)
        if count < 1:
            raise InputError(f"study {study_uid}: expected instance count must be >= 1, got {count}")
        with self._lock:
            study = self._open.get(study_uid)
            if study is None:
                self._pending_expectations[study_uid] = int(count)
            else:
                study.expected = int(count)

    def ready(self) -> list[ReadyStudy]:
        """Studies that became ready since the last call, each returned exactly once."""
        now = self._clock()
        out: list[ReadyStudy] = []
        with self._lock:
            for study_uid, study in list(self._open.items()):
                complete = study.expected is not None and study.count >= study.expected
                quiet = now - study.last_arrival >= self.quiet_seconds
                if not (complete or quiet):
                    continue
                del self._open[study_uid]
                self._reported.add(study_uid)
                out.append(_ready(study_uid, study, "complete" if complete else "quiet"))
        return out

    def forget(self, study_uid: str) -> None:
        """Drop all state of a study, so instances sent again form a new study to report."""
        with self._lock:
            self._open.pop(study_uid, None)
            self._reported.discard(study_uid)
            self._pending_expectations.pop(study_uid, None)

    def open_studies(self) -> list[str]:
        with self._lock:
            return list(self._open)


def _ready(study_uid: str, study: _Study, reason: Literal["quiet", "complete"]) -> ReadyStudy:
    series = [
        SeriesInfo(
            series_uid=series_uid,
            modality=item.first.modality,
            description=item.first.series_description,
            body_part=item.first.body_part,
            rows=item.first.rows,
            columns=item.first.columns,
            instance_count=len(item.sop_uids),
            folder=item.first.path.parent,
        )
        for series_uid, item in study.series.items()
    ]
    return ReadyStudy(study_uid, study.folder, series, study.count, reason)
