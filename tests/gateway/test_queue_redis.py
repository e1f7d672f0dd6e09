"""The job queue's Redis backend (RedisHuey + RedisJobStore) against a real redis-server on a loopback port.

One server per module, started with persistence off in a temporary folder and stopped at the end; each test gets
its own queue name, so tests do not see each other's jobs. Skips when redis-server is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.gateway.dicom_peers import free_port, stop_process
from tests.gateway.job_fakes import (
    check_complete_twice_is_a_no_op,
    check_job_survives_kill_9,
    check_reaper_requeues_then_fails,
    check_submit_is_idempotent,
    failing_processor,
    finished,
    flaky_processor,
    make_spec,
    submit,
    wait_for,
    worker_threads,
    writing_processor,
)
from vesalius.gateway.jobs import JobState
from vesalius.gateway.queue import JobQueue, QueueSettings
from vesalius.gateway.worker import OUTPUT_MANIFEST

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port, no persistence; stopped (terminate, then kill) at the end."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian package redis-server): Redis queue backend not tested")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    args = [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--protected-mode", "yes", "--daemonize", "no"]
    log = (folder / "redis.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"redis://{HOST}:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + 10.0
        while True:
            if process.poll() is not None:
                pytest.fail(f"redis-server exited with {process.returncode}: {(folder / 'redis.log').read_text()}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer on port {port} within 10 s")
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        stop_process(process)
        log.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Callable[..., QueueSettings]:
    """QueueSettings for the redis backend under a queue name unique to the test."""
    name = f"t{uuid.uuid4().hex[:12]}"

    def make(**overrides: object) -> QueueSettings:
        values: dict[str, object] = {
            "backend": "redis",
            "redis_url": redis_url,
            "name": name,
            "retry_delay_seconds": 0.0,
        }
        values.update(overrides)
        return QueueSettings.model_validate(values)

    return make


@pytest.fixture
def in_thread_worker(tmp_path: Path, settings: Callable[..., QueueSettings]) -> Iterator[Callable[..., JobQueue]]:
    """run_worker in a thread on its own JobQueue handle; returns a second handle, as the API would hold."""
    with worker_threads(tmp_path, settings) as start:
        yield start


# --- the job table and messages --------------------------------------------------------------------------------------


def test_ping_submit_is_idempotent_and_enqueues_once(settings, tmp_path: Path) -> None:
    queue = JobQueue(settings())
    queue.ping()
    check_submit_is_idempotent(queue, tmp_path)
    assert sum(queue.counts().values()) == 1
    other = JobQueue(settings())  # another process's handle sees the same table
    assert other.get("a").idempotency_key == "key-1"


def test_a_failed_job_frees_its_key_and_counts_follow_the_states(settings, tmp_path: Path) -> None:
    queue = JobQueue(settings(retries=1))
    queue.submit(make_spec(tmp_path, "a"), "key-1")
    assert queue.claim("a", "t1") is not None
    assert queue.claim("a", "t2") is None
    assert queue.counts()[JobState.RUNNING] == 1
    assert [r.job_id for r in queue.store.by_state(JobState.RUNNING)] == ["a"]
    assert queue.attempt_failed("a", "t1", "boom").state is JobState.QUEUED
    assert queue.claim("a", "t3").attempts == 2
    assert queue.attempt_failed("a", "wrong-token", "x") is None
    assert queue.attempt_failed("a", "t3", "boom again").state is JobState.FAILED
    assert queue.counts() == {JobState.QUEUED: 0, JobState.RUNNING: 0, JobState.DONE: 0, JobState.FAILED: 1}
    record, created = queue.submit(make_spec(tmp_path, "b"), "key-1")
    assert created
    assert record.job_id == "b"
    assert queue.submit(make_spec(tmp_path, "c"), "key-1")[1] is False  # the key now belongs to b


def test_complete_twice_is_a_no_op_and_durations_are_kept(settings, tmp_path: Path) -> None:
    check_complete_twice_is_a_no_op(JobQueue(settings()), tmp_path)


def test_concurrent_updates_of_one_job_are_not_lost(settings, tmp_path: Path) -> None:
    """Optimistic transactions retry on conflict: N threads each add one attempt, N attempts result."""
    queue = JobQueue(settings())
    queue.submit(make_spec(tmp_path), "k")

    def bump() -> None:
        for _ in range(10):
            queue.store.update("job1", lambda r: r.model_copy(update={"attempts": r.attempts + 1}))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert queue.get("job1").attempts == 40


def test_reaper_requeues_an_expired_lease_then_fails_the_job(settings, tmp_path: Path) -> None:
    check_reaper_requeues_then_fails(JobQueue(settings(lease_seconds=0.05, retries=1)), tmp_path)


# --- workers on the redis backend ------------------------------------------------------------------------------------


def test_a_worker_runs_a_job_to_done(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(writing_processor)
    submit(queue, tmp_path)
    wait_for(finished(queue), timeout=30, what="job1 to finish")
    record = queue.get("job1")
    assert record.state is JobState.DONE
    assert record.attempts == 1
    assert record.output_dir == tmp_path / "out" / "job1"
    assert (tmp_path / "out" / "job1" / OUTPUT_MANIFEST).is_file()
    assert queue.counts()[JobState.DONE] == 1
    assert len(queue.durations()) == 1


def test_transient_failures_are_retried_until_success(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(flaky_processor, retries=3)
    submit(queue, tmp_path)
    wait_for(finished(queue), timeout=30, what="job1 to finish")
    record = queue.get("job1")
    assert record.state is JobState.DONE
    assert record.attempts == 3


def test_a_job_that_always_fails_stops_after_its_retries(in_thread_worker, tmp_path: Path) -> None:
    queue = in_thread_worker(failing_processor, retries=2)
    submit(queue, tmp_path)
    wait_for(finished(queue), timeout=30, what="job1 to fail")
    time.sleep(0.3)  # a looping retry would show up as more attempts
    record = queue.get("job1")
    assert record.state is JobState.FAILED
    assert record.attempts == 3
    assert "the model crashed" in (record.last_error or "")
    assert queue.huey.pending_count() + queue.huey.scheduled_count() == 0
    assert not (tmp_path / "out" / "job1").exists()


def test_a_job_survives_kill_9_of_its_worker_and_completes_once(settings, tmp_path: Path) -> None:
    check_job_survives_kill_9(settings(lease_seconds=1.0, retry_delay_seconds=0.1, retries=2), tmp_path)
