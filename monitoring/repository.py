"""Where monitoring reads and writes: worker heartbeats and worker-side metric totals in Redis,
job counts and finished jobs in the store.

Redis keys (all under ``conveyor:monitoring:``):

- ``runners``: a sorted set, worker name → time of its latest heartbeat;
- ``runner:<name>``: a hash, the worker's queues, concurrency, active tasks, state;
- ``worker-metrics``: a hash, one field per metric sample (JSON ``[name, {labels}]``) → total,
  added to by every worker process (HINCRBYFLOAT), read by ``GET /metrics``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config import get_settings
from store.models import Job, ResultItem

PREFIX = "conveyor:monitoring:"
RUNNERS_KEY = PREFIX + "runners"
RUNNER_KEY = PREFIX + "runner:{name}"
WORKER_METRICS_KEY = PREFIX + "worker-metrics"
# A worker that stopped heartbeating is listed (offline) this long, then forgotten.
RUNNER_RETENTION_SECONDS = 3600

_clients: dict[tuple[int, str], redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str | None = None) -> redis.Redis:
    """This process's client for ``url`` (default: the platform's Redis, where heartbeats and
    metric totals live); a forked child makes its own. Short timeouts: a health check or a
    heartbeat must never hang on a dead Redis."""
    key = (os.getpid(), url or get_settings().resolved_redis_url())
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = redis.Redis.from_url(
                    key[1], socket_connect_timeout=1.0, socket_timeout=1.0, decode_responses=True
                )
                for stale in [k for k in _clients if k[0] != key[0]]:
                    del _clients[stale]  # a parent's clients are useless after fork
                _clients[key] = client
    return client


# --- heartbeats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    name: str
    queues: list[str]
    concurrency: int
    active: int
    at: float
    stopped: bool


def write_heartbeat(beat: Heartbeat) -> None:
    key = RUNNER_KEY.format(name=beat.name)
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "queues": json.dumps(beat.queues),
            "concurrency": beat.concurrency,
            "active": beat.active,
            "at": beat.at,
            "stopped": int(beat.stopped),
        },
    )
    pipe.expire(key, RUNNER_RETENTION_SECONDS)
    pipe.zadd(RUNNERS_KEY, {beat.name: beat.at})
    pipe.zremrangebyscore(RUNNERS_KEY, "-inf", beat.at - RUNNER_RETENTION_SECONDS)
    pipe.execute()


def read_heartbeats() -> list[Heartbeat]:
    client = redis_client()
    since = time.time() - RUNNER_RETENTION_SECONDS
    names = [str(n) for n in client.zrangebyscore(RUNNERS_KEY, since, "+inf")]
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(RUNNER_KEY.format(name=name))
    beats: list[Heartbeat] = []
    for name, fields in zip(names, pipe.execute(), strict=True):
        if not fields:
            continue
        beats.append(
            Heartbeat(
                name=name,
                queues=list(json.loads(fields.get("queues", "[]"))),
                concurrency=int(fields.get("concurrency", 0)),
                active=int(fields.get("active", 0)),
                at=float(fields.get("at", 0.0)),
                stopped=fields.get("stopped") == "1",
            )
        )
    return beats


# --- worker-side metric totals -------------------------------------------------------------

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def add_worker_metrics(deltas: Mapping[SampleKey, float]) -> None:
    """Add one process's deltas to the shared totals (one round trip)."""
    if not deltas:
        return
    pipe = redis_client().pipeline(transaction=False)
    for (name, labels), value in deltas.items():
        pipe.hincrbyfloat(WORKER_METRICS_KEY, json.dumps([name, dict(labels)]), value)
    pipe.execute()


def read_worker_metrics() -> dict[SampleKey, float]:
    raw = redis_client().hgetall(WORKER_METRICS_KEY)
    totals: dict[SampleKey, float] = {}
    for field, value in raw.items():
        name, labels = json.loads(str(field))
        totals[(str(name), tuple(sorted((str(k), str(v)) for k, v in labels.items())))] = float(
            value
        )
    return totals


# --- the store -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindCounts:
    queued: int = 0
    running: int = 0
    oldest_queued: datetime | None = None
    completed_since: int = 0


def kind_counts(session: Session, completed_since: datetime) -> dict[str, KindCounts]:
    """Per job kind: queued and running jobs, the oldest queued one, completions since a time.
    Two indexed queries (status; completed_at), whatever the table's size."""
    active = session.execute(
        select(Job.kind, Job.status, func.count(), func.min(Job.created_at))
        .where(Job.status.in_(("queued", "running")))
        .group_by(Job.kind, Job.status)
    ).all()
    completed = dict(
        session.execute(
            select(Job.kind, func.count())
            .where(Job.completed_at > completed_since, Job.status == "completed")
            .group_by(Job.kind)
        )
        .tuples()
        .all()
    )
    out: dict[str, dict[str, Any]] = {}
    for kind, status, count, oldest in active:
        entry = out.setdefault(kind, {})
        entry[status] = int(count)
        if status == "queued":
            entry["oldest_queued"] = oldest
    for kind, count in completed.items():
        out.setdefault(kind, {})["completed_since"] = int(count)
    return {
        kind: KindCounts(
            queued=v.get("queued", 0),
            running=v.get("running", 0),
            oldest_queued=v.get("oldest_queued"),
            completed_since=v.get("completed_since", 0),
        )
        for kind, v in out.items()
    }


@dataclass(frozen=True)
class FinishedJob:
    id: str
    kind: str
    status: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    progress: dict[str, Any]


TERMINAL = ("completed", "failed", "cancelled")


def finished_jobs(session: Session, ids: Iterable[str]) -> list[FinishedJob]:
    """The jobs among ``ids`` that reached a terminal state (one primary-key IN query)."""
    wanted = list(set(ids))
    if not wanted:
        return []
    rows = session.execute(
        select(
            Job.id,
            Job.kind,
            Job.status,
            Job.created_at,
            Job.started_at,
            Job.completed_at,
            Job.progress,
        ).where(Job.id.in_(wanted), Job.status.in_(TERMINAL))
    ).all()
    return [FinishedJob(*row) for row in rows]


def result_data(session: Session, job_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON result items of these jobs (inference responses carry ``model`` and ``usage``)."""
    wanted = list(set(job_ids))
    if not wanted:
        return []
    rows = session.execute(
        select(ResultItem.data).where(ResultItem.job_id.in_(wanted), ResultItem.data.is_not(None))
    ).scalars()
    return [row for row in rows if isinstance(row, dict)]
