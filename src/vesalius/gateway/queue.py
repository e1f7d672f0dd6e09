"""The durable job queue: huey carries the messages, a job table keeps each job's state and lease.

huey (SqliteHuey embedded, RedisHuey for several machines) stores the task messages, schedules retries with
back-off and survives restarts. It removes a message when a worker takes it, so a worker killed mid-job would lose
the job; the job table closes that gap with a lease: a running job carries a lease expiry that its worker renews,
and `reap_expired` (called by every worker loop) puts a job whose lease ran out back on the queue, counting the
lost run as an attempt. Attempts are counted in the job table, which alone decides when a job has failed for good.

Layout for the sqlite backend: `settings.path` is huey's file; the job table lives next to it in
`<stem>-jobs.sqlite3`. For the redis backend both live in the Redis server at `settings.redis_url`: huey's keys,
and the job table as one key per job plus an idempotency-key hash, per-state sets and a durations hash, updated with
optimistic WATCH/MULTI transactions (see `RedisJobStore`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
from huey import RedisHuey, SqliteHuey
from huey.api import Huey, TaskWrapper
from pydantic import BaseModel, Field

from vesalius.gateway.jobs import JobNotFoundError, JobOutput, JobRecord, JobSpec, JobState, QueueError, utcnow

TASK_NAME = "vesalius.run_job"
Change = Callable[[JobRecord], JobRecord | None]
_Write = tuple[JobRecord | None, JobRecord]


class QueueSettings(BaseModel):
    """Where the queue lives and how hard it tries."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("queue.sqlite3")
    redis_url: str = "redis://localhost:6379/0"
    name: str = Field(default="vesalius", pattern=r"^[A-Za-z0-9_.-]+$")
    retries: int = Field(default=3, ge=0, description="Retries after the first attempt; then the job fails.")
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    retry_backoff: float = Field(default=2.0, ge=1.0, description="Each retry waits this factor longer.")
    lease_seconds: float = Field(default=60.0, gt=0, description="A running job not renewed for this long is lost.")
    job_timeout_seconds: float | None = Field(default=None, gt=0, description="Stop renewing a lease after this.")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def retry_delay(self, attempts: int) -> float:
        """The wait before attempt `attempts + 1`."""
        return self.retry_delay_seconds * self.retry_backoff ** max(attempts - 1, 0)


class JobStore(Protocol):
    """The job table. `update` applies `change` atomically; `change` returns the new record or None to keep it."""

    def insert_or_get(self, record: JobRecord) -> tuple[JobRecord, bool]: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def update(self, job_id: str, change: Change) -> JobRecord | None: ...
    def by_state(self, state: JobState) -> list[JobRecord]: ...
    def counts(self) -> dict[JobState, int]: ...
    def durations(self) -> list[float]: ...
    def ping(self) -> None: ...


class SqliteJobStore:
    """The job table in one SQLite file (WAL): a row per job, the record as JSON plus indexed columns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, idem_key TEXT, state TEXT NOT NULL, "
                "lease_expires REAL, duration REAL, record TEXT NOT NULL)"
            )
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(idem_key)")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (BEGIN IMMEDIATE), so read-modify-write cannot interleave."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _save(db: sqlite3.Connection, record: JobRecord) -> None:
        # A failed job gives up its key, so the same work can be submitted again.
        key = None if record.state is JobState.FAILED else record.idempotency_key
        lease = record.lease_expires.timestamp() if record.lease_expires else None
        db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
            (record.job_id, key, record.state.value, lease, record.duration_seconds, record.model_dump_json()),
        )

    def insert_or_get(self, record: JobRecord) -> tuple[JobRecord, bool]:
        with self._write() as db:
            row = db.execute("SELECT record FROM jobs WHERE idem_key = ?", (record.idempotency_key,)).fetchone()
            if row is not None:
                return JobRecord.model_validate_json(row[0]), False
            self._save(db, record)
            return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        with self._write() as db:
            row = db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(job_id)
            new = change(JobRecord.model_validate_json(row[0]))
            if new is not None:
                self._save(db, new)
            return new

    def by_state(self, state: JobState) -> list[JobRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT record FROM jobs WHERE state = ?", (state.value,)).fetchall()
        return [JobRecord.model_validate_json(r[0]) for r in rows]

    def counts(self) -> dict[JobState, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        found = {JobState(state): n for state, n in rows}
        return {state: found.get(state, 0) for state in JobState}

    def durations(self) -> list[float]:
        with self._connect() as db:
            rows = db.execute("SELECT duration FROM jobs WHERE state = 'done' AND duration IS NOT NULL").fetchall()
        return [r[0] for r in rows]

    def ping(self) -> None:
        with self._connect() as db:
            db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisJobStore:
    """The job table in Redis, for several machines.

    Keys, under the queue's name: ``<name>:job:<job_id>`` holds a record as JSON; ``<name>:keys`` maps an
    idempotency key to its job id; ``<name>:state:<state>`` is the set of job ids in that state and
    ``<name>:durations`` maps a done job to its run time, so counts, listings by state and durations read only
    what they need. Every write is an optimistic transaction (WATCH the job's key, MULTI/EXEC, retry on conflict):
    jobs do not contend with each other. A key pointing at a failed job is free, as in the SQLite store.
    """

    def __init__(self, url: str, name: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._prefix = name
        self._keys = f"{name}:keys"
        self._durations = f"{name}:durations"

    def _job(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _state(self, state: JobState) -> str:
        return f"{self._prefix}:state:{state.value}"

    @staticmethod
    def _load(raw: Any) -> JobRecord | None:
        return None if raw is None else JobRecord.model_validate_json(raw)

    def _transact(
        self,
        watch: list[str],
        read: Callable[[Any], tuple[Any, list[_Write]]],
        also: Callable[[Any], None] | None = None,
    ) -> Any:
        """Optimistic transaction: WATCH `watch`, `read(pipe)` returns (result, [(old, new) records to save]).

        `also(pipe)` queues further writes in the same MULTI when there is something to save.
        """
        pipe: Any
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watch)
                    result, writes = read(pipe)
                    if not writes:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    for old, new in writes:
                        self._save(pipe, old, new)
                    if also is not None:
                        also(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def _save(self, pipe: Any, old: JobRecord | None, new: JobRecord) -> None:
        """Queue the writes of `new` (replacing `old`) on a pipeline in MULTI mode."""
        job_id = new.job_id
        pipe.set(self._job(job_id), new.model_dump_json())
        if old is not None and old.state is not new.state:
            pipe.srem(self._state(old.state), job_id)
        pipe.sadd(self._state(new.state), job_id)
        duration = new.duration_seconds if new.state is JobState.DONE else None
        if duration is not None:
            pipe.hset(self._durations, job_id, repr(duration))
        elif old is not None and old.state is JobState.DONE:
            pipe.hdel(self._durations, job_id)

    def insert_or_get(self, record: JobRecord) -> tuple[JobRecord, bool]:
        def read(pipe: Any) -> tuple[tuple[JobRecord, bool], list[_Write]]:
            existing_id = pipe.hget(self._keys, record.idempotency_key)
            if existing_id is not None:
                existing_key = self._job(_text(existing_id))
                pipe.watch(existing_key)  # so it cannot fail (and free the key) unseen
                existing = self._load(pipe.get(existing_key))
                if existing is not None and existing.state is not JobState.FAILED:
                    return (existing, False), []
            replaced = self._load(pipe.get(self._job(record.job_id)))
            return (record, True), [(replaced, record)]

        def write_key(pipe: Any) -> None:
            pipe.hset(self._keys, record.idempotency_key, record.job_id)

        result: tuple[JobRecord, bool] = self._transact([self._keys, self._job(record.job_id)], read, write_key)
        return result

    def get(self, job_id: str) -> JobRecord | None:
        return self._load(self._redis.get(self._job(job_id)))

    def update(self, job_id: str, change: Change) -> JobRecord | None:
        def read(pipe: Any) -> tuple[JobRecord | None, list[_Write]]:
            current = self._load(pipe.get(self._job(job_id)))
            if current is None:
                raise JobNotFoundError(job_id)
            new = change(current)
            return new, ([] if new is None else [(current, new)])

        result: JobRecord | None = self._transact([self._job(job_id)], read)
        return result

    def by_state(self, state: JobState) -> list[JobRecord]:
        ids = sorted(_text(member) for member in self._redis.smembers(self._state(state)))
        if not ids:
            return []
        records = (self._load(raw) for raw in self._redis.mget([self._job(i) for i in ids]))
        return [r for r in records if r is not None and r.state is state]

    def counts(self) -> dict[JobState, int]:
        pipe: Any
        with self._redis.pipeline(transaction=False) as pipe:
            for state in JobState:
                pipe.scard(self._state(state))
            found = pipe.execute()
        return {state: int(n) for state, n in zip(JobState, found, strict=True)}

    def durations(self) -> list[float]:
        return [float(v) for v in self._redis.hvals(self._durations)]

    def ping(self) -> None:
        self._redis.ping()


class JobQueue:
    """Submit jobs, track their state, hand them to workers; the same object in the API and in every worker."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.huey: Huey
        self.store: JobStore
        if settings.backend == "sqlite":
            settings.path.parent.mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(settings.name, filename=str(settings.path), results=False, fsync=True)
            self.store = SqliteJobStore(settings.path.with_name(f"{settings.path.stem}-jobs.sqlite3"))
        else:
            self.huey = RedisHuey(settings.name, url=settings.redis_url, results=False)
            self.store = RedisJobStore(settings.redis_url, settings.name)
        self._handler: Callable[[str], None] | None = None
        self._task: TaskWrapper = self.huey.task(
            name=TASK_NAME,
            retries=settings.max_attempts,  # an upper bound only: the job table decides when to stop
            retry_delay=settings.retry_delay_seconds,
            retry_backoff=settings.retry_backoff,
        )(self._dispatch)

    def _dispatch(self, job_id: str) -> None:
        if self._handler is None:
            raise QueueError(f"job {job_id}: this JobQueue has no handler; only workers (run_worker) execute jobs")
        self._handler(job_id)

    def set_handler(self, handler: Callable[[str], None]) -> None:
        """Called by a worker: `handler(job_id)` runs one attempt, raising JobAttemptError to be retried."""
        self._handler = handler

    # --- submitting and reading ---------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, idempotency_key: str) -> tuple[JobRecord, bool]:
        """Queue `spec` unless equal work (same key) is queued, running or done; returns (record, created)."""
        record = JobRecord(spec=spec, idempotency_key=idempotency_key, max_attempts=self.settings.max_attempts)
        record, created = self.store.insert_or_get(record)
        if created:
            self._task(spec.job_id)
        return record, created

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    def counts(self) -> dict[JobState, int]:
        return self.store.counts()

    def durations(self) -> list[float]:
        return self.store.durations()

    def ping(self) -> None:
        """Raise QueueError when the message store or the job table cannot be reached."""
        try:
            self.store.ping()
            self.huey.pending_count()
        except Exception as exc:
            raise QueueError(f"job queue ({self.settings.backend}) unreachable: {type(exc).__name__}: {exc}") from exc

    # --- the worker side ----------------------------------------------------------------------------------------

    def run_next(self) -> bool:
        """Move due retries onto the queue, then execute one message if there is one; False when idle."""
        for task in self.huey.read_schedule():
            self.huey.enqueue(task)
        task = self.huey.dequeue()
        if task is None:
            return False
        self.huey.execute(task)
        return True

    def claim(self, job_id: str, token: str) -> JobRecord | None:
        """Mark a queued job running under a lease held by `token`; None if it is not queued (done, taken, failed)."""

        def change(r: JobRecord) -> JobRecord | None:
            if r.state is not JobState.QUEUED:
                return None
            now = utcnow()
            return r.model_copy(
                update={
                    "state": JobState.RUNNING,
                    "attempts": r.attempts + 1,
                    "started": r.started or now,
                    "updated": now,
                    "lease_token": token,
                    "lease_expires": now + timedelta(seconds=self.settings.lease_seconds),
                }
            )

        return self.store.update(job_id, change)

    def renew(self, job_id: str, token: str) -> bool:
        """Extend the lease; False when the lease was lost (the reaper gave the job to another worker)."""

        def change(r: JobRecord) -> JobRecord | None:
            if r.state is not JobState.RUNNING or r.lease_token != token:
                return None
            expires = utcnow() + timedelta(seconds=self.settings.lease_seconds)
            return r.model_copy(update={"lease_expires": expires})

        return self.store.update(job_id, change) is not None

    def attempt_failed(self, job_id: str, token: str, error: str) -> JobRecord | None:
        """Record a failed attempt: back to queued while attempts remain, else failed. None if the lease was lost."""

        def change(r: JobRecord) -> JobRecord | None:
            if r.state is not JobState.RUNNING or r.lease_token != token:
                return None
            return self._after_failure(r, error)

        return self.store.update(job_id, change)

    def _after_failure(self, r: JobRecord, error: str) -> JobRecord:
        now = utcnow()
        final = r.attempts >= r.max_attempts
        state = JobState.FAILED if final else JobState.QUEUED
        return r.model_copy(
            update={
                "state": state,
                "last_error": error,
                "updated": now,
                "finished": now if final else None,
                "lease_token": None,
                "lease_expires": None,
            }
        )

    def complete(self, job_id: str, output: JobOutput, output_dir: Path) -> tuple[JobRecord, bool]:
        """Mark a job done; (record, False) when it already was, so a second completion changes nothing."""

        def change(r: JobRecord) -> JobRecord | None:
            if r.state is JobState.DONE:
                return None
            now = utcnow()
            return r.model_copy(
                update={
                    "state": JobState.DONE,
                    "finished": now,
                    "updated": now,
                    "last_error": None,
                    "lease_token": None,
                    "lease_expires": None,
                    "output": output,
                    "output_dir": output_dir,
                }
            )

        new = self.store.update(job_id, change)
        return (new, True) if new is not None else (self.get(job_id), False)

    def reap_expired(self, now: datetime | None = None) -> list[JobRecord]:
        """Requeue running jobs whose lease expired (their worker died), or fail them when out of attempts.

        Returns the jobs changed. A reaped job's lost run has already been counted as an attempt by `claim`.
        """
        now = now or utcnow()
        changed: list[JobRecord] = []
        for stale in self.store.by_state(JobState.RUNNING):
            if stale.lease_expires is None or stale.lease_expires >= now:
                continue
            token = stale.lease_token

            def change(r: JobRecord, token: str | None = token) -> JobRecord | None:
                if r.state is not JobState.RUNNING or r.lease_token != token:
                    return None
                msg = f"worker stopped responding (lease of {self.settings.lease_seconds:g} s expired)"
                return self._after_failure(r, f"attempt {r.attempts} of {r.max_attempts}: {msg}")

            new = self.store.update(stale.job_id, change)
            if new is None:
                continue
            changed.append(new)
            if new.state is JobState.QUEUED:
                remaining = new.max_attempts - new.attempts
                self._task.schedule(
                    args=(new.job_id,),
                    delay=self.settings.retry_delay(new.attempts),
                    retries=remaining,
                    retry_delay=self.settings.retry_delay(new.attempts + 1),
                )
        return changed
