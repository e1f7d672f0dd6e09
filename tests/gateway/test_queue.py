"""The job queue: idempotent submit, attempts and back-off through huey, leases and the reaper."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.gateway.job_fakes import (
    check_complete_twice_is_a_no_op,
    check_reaper_requeues_then_fails,
    check_submit_is_idempotent,
    make_spec,
)
from vesalius.gateway.jobs import (
    JobAttemptError,
    JobNotFoundError,
    JobState,
    QueueError,
    idempotency_key,
    utcnow,
)
from vesalius.gateway.queue import JobQueue, QueueSettings


def make_queue(tmp_path: Path, **overrides: object) -> JobQueue:
    values: dict[str, object] = {"path": tmp_path / "q" / "queue.sqlite3", "retry_delay_seconds": 0.0}
    values.update(overrides)
    return JobQueue(QueueSettings.model_validate(values))


def test_settings_back_off_grows_geometrically() -> None:
    settings = QueueSettings(retries=3, retry_delay_seconds=2.0, retry_backoff=3.0)
    assert settings.max_attempts == 4
    assert [settings.retry_delay(n) for n in (1, 2, 3)] == [2.0, 6.0, 18.0]


def test_idempotency_key_depends_on_inputs_and_model_hashes_not_order() -> None:
    a = idempotency_key(["d1", "d2"], {"lung": "aa", "liver": "bb"})
    assert a == idempotency_key(["d2", "d1"], {"liver": "bb", "lung": "aa"})
    assert a != idempotency_key(["d1", "d2"], {"lung": "aa", "liver": "cc"})
    assert idempotency_key("1.2.3", {"lung": "aa"}) != idempotency_key("1.2.4", {"lung": "aa"})


def test_output_uid_is_deterministic_per_study_and_models(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    again = make_spec(tmp_path, job_id="other")
    assert spec.output_uid("seg") == again.output_uid("seg")
    assert spec.output_uid("seg") != spec.output_uid("sr")
    assert len(spec.output_uid("seg")) <= 64


def test_submit_is_idempotent_and_enqueues_once(tmp_path: Path) -> None:
    check_submit_is_idempotent(make_queue(tmp_path), tmp_path)


def test_unknown_job_raises_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        make_queue(tmp_path).get("nope")


def test_attempts_are_limited_then_the_job_fails_and_frees_its_key(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, retries=1)
    queue.submit(make_spec(tmp_path, "a"), "key-1")
    assert queue.claim("a", "t1") is not None
    assert queue.claim("a", "t2") is None  # running: nobody else may take it
    assert queue.attempt_failed("a", "t1", "boom").state is JobState.QUEUED
    assert queue.claim("a", "t3").attempts == 2
    assert queue.attempt_failed("a", "wrong-token", "x") is None
    failed = queue.attempt_failed("a", "t3", "boom again")
    assert failed.state is JobState.FAILED
    assert failed.last_error == "boom again"
    assert failed.finished is not None
    assert queue.claim("a", "t4") is None
    _, created = queue.submit(make_spec(tmp_path, "b"), "key-1")
    assert created  # a failed job does not block the same work being submitted again


def test_huey_retries_a_failed_attempt_with_back_off(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, retries=2, retry_delay_seconds=10.0, retry_backoff=2.0)
    queue.set_handler(lambda job_id: (_ for _ in ()).throw(JobAttemptError("failed")))
    queue.submit(make_spec(tmp_path), "k")
    before = queue.huey._get_timestamp()
    assert queue.run_next()
    (scheduled,) = queue.huey.scheduled()
    assert (scheduled.eta - before).total_seconds() == pytest.approx(10.0, abs=2.0)
    # Run the retry as if its 10 s had passed: the next wait doubles.
    later = scheduled.eta + timedelta(seconds=1)
    (task,) = queue.huey.read_schedule(later)
    before = queue.huey._get_timestamp()
    queue.huey.execute(task, timestamp=later)
    (scheduled,) = queue.huey.scheduled()
    assert (scheduled.eta - before).total_seconds() == pytest.approx(20.0, abs=2.0)


def test_a_queue_without_handler_refuses_to_execute(tmp_path: Path) -> None:
    queue = make_queue(tmp_path)
    with pytest.raises(QueueError, match="no handler"):
        queue._dispatch("a")


def test_reaper_requeues_an_expired_lease_and_counts_the_attempt(tmp_path: Path) -> None:
    check_reaper_requeues_then_fails(make_queue(tmp_path, lease_seconds=0.05, retries=1), tmp_path)


def test_renew_extends_the_lease(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, lease_seconds=30)
    queue.submit(make_spec(tmp_path), "k")
    claimed = queue.claim("job1", "t")
    assert queue.renew("job1", "t")
    assert queue.get("job1").lease_expires >= claimed.lease_expires
    assert queue.reap_expired(utcnow()) == []


def test_complete_twice_is_a_no_op(tmp_path: Path) -> None:
    check_complete_twice_is_a_no_op(make_queue(tmp_path), tmp_path)


def test_ping_reports_a_reachable_sqlite_queue(tmp_path: Path) -> None:
    make_queue(tmp_path).ping()


def test_redis_backend_constructs_without_a_server_and_ping_says_unreachable() -> None:
    queue = JobQueue(QueueSettings(backend="redis", redis_url="redis://127.0.0.1:1/0"))
    assert type(queue.huey).__name__ == "RedisHuey"
    with pytest.raises(QueueError, match="redis"):
        queue.ping()
