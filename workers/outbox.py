"""The outbox: the one place messages leave for the broker.

Code that creates a job or records webhook deliveries does it on the caller's session and records
the message to send with :func:`enqueue` (a job) or :func:`enqueue_task` (any other task, e.g. a
webhook delivery). One ``after_commit`` hook sends what the transaction recorded once it has
committed; a rolled-back transaction sends nothing. Nothing else calls ``send_task``.

Each job message sent is also noted in a Redis sorted set on the broker's own server
(:data:`IN_FLIGHT_KEY`, job id → time sent): the sweeper (``jobs.jobs.sweep_queued``) re-sends a
job that is ``queued`` without an entry there (the process died between commit and send, or the
broker lost its data), so no job stays ``queued`` for want of a message.

When a send fails after the commit, the session's :data:`ON_SEND_FAILURE` decides: ``"reject"``
(the API and Python ``submit``: the jobs are failed with ``unavailable`` and
:class:`~common.errors.Unavailable` is raised, so the caller answers 503 and nothing was
accepted) or ``"defer"`` (workers and beat: logged; the sweeper sends them when the broker is
back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from common import redis_clients
from common.errors import Unavailable
from config import get_settings
from config.queues import KINDS

log = logging.getLogger(__name__)

#: Redis sorted set beside the queues: job id → Unix time its message was last sent.
IN_FLIGHT_KEY = "conveyor:outbox:in-flight"
#: ``session.info`` key: "reject" or "defer" (the default), see the module docstring.
ON_SEND_FAILURE = "outbox_on_send_failure"
_PENDING = "outbox_pending"


@dataclass(frozen=True)
class Message:
    """One task message to send after the commit; ``job_id`` is set for a job's own message."""

    task: str
    args: tuple[Any, ...]
    queue: str
    job_id: str | None = None
    countdown: float | None = None
    expires: float | None = None  # seconds: a message not consumed by then is dropped
    task_id: str | None = None  # None: a fresh id
    label: str | None = None  # the name Flower and the logs show (Celery's ``shadow``)


def job_message(
    kind: str, job_id: str, *, first: bool = False, label: str | None = None
) -> Message:
    """The message that runs job ``job_id`` of ``kind`` (task ``<kind>.run`` on its queue).

    A job's first message carries the job's id as its task id, so Flower finds the job by its
    id; a later one (re-sent, re-queued) gets a fresh id, and the job's compare-and-set start
    lets exactly one of them run it. ``label`` (e.g. ``deploy.apply``) is what Flower shows.
    """
    return Message(
        f"{kind}.run",
        (job_id,),
        KINDS[kind].queue,
        job_id=job_id,
        task_id=job_id if first else None,
        label=label,
    )


def enqueue(session: Session, kind: str, job_id: str, *, label: str | None = None) -> None:
    """Send job ``job_id`` to its queue once ``session`` commits (its first message)."""
    _pending(session).append(job_message(kind, job_id, first=True, label=label))


def enqueue_message(session: Session, message: Message) -> None:
    """Send ``message`` once ``session`` commits."""
    _pending(session).append(message)


def enqueue_task(
    session: Session, task: str, args: Iterable[Any], *, queue: str, countdown: float | None = None
) -> None:
    """Send task ``task(*args)`` to ``queue`` once ``session`` commits."""
    _pending(session).append(Message(task, tuple(args), queue, countdown=countdown))


def pending(session: Session) -> list[Message]:
    """What ``session`` will send when it commits (tests and assertions)."""
    return list(session.info.get(_PENDING, ()))


def _pending(session: Session) -> list[Message]:
    messages: list[Message] = session.info.setdefault(_PENDING, [])
    return messages


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    messages: list[Message] = session.info.pop(_PENDING, [])
    if messages:
        send(messages, reject=session.info.get(ON_SEND_FAILURE) == "reject")


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_rollback(session: Session, previous_transaction: Any) -> None:
    if not session.in_transaction():  # the outermost transaction rolled back
        session.info.pop(_PENDING, None)


def send(messages: list[Message], *, reject: bool = False) -> None:
    """Send ``messages`` now (rows they refer to must be committed). See the module docstring
    for what a failure does."""
    from workers.app import celery_app  # the app includes the task modules, which import us

    pause = get_settings().test_pause_before_send_seconds
    if pause > 0:  # fault-injection tests widen the commit → send window
        time.sleep(pause)
    sent: list[str] = []
    try:
        for message in messages:
            celery_app.send_task(
                message.task,
                args=list(message.args),
                queue=message.queue,
                countdown=message.countdown,
                expires=message.expires,
                task_id=message.task_id,
                shadow=message.label,
                retry=False,
            )
            if message.job_id is not None:
                sent.append(message.job_id)
    except Exception as exc:
        unsent = [m.job_id for m in messages if m.job_id is not None and m.job_id not in sent]
        _note_in_flight(sent)
        if reject:
            _fail_unsent(unsent)
            raise Unavailable(
                "The job queue is unavailable; the job was not accepted.",
                headers={"Retry-After": "5"},
            ) from exc
        log.warning(
            "broker unavailable: %d message(s) not sent now (%s); the sweeper re-sends queued jobs",
            len(messages) - len(sent),
            exc,
        )
        return
    _note_in_flight(sent)


def _fail_unsent(job_ids: list[str]) -> None:
    """The caller is told 503: the jobs it was refused must never run."""
    from store import jobs as job_store
    from store.db import session_scope

    if not job_ids:
        return
    try:
        with session_scope() as session:
            for job_id in job_ids:
                job_store.transition(
                    session,
                    job_id,
                    to=job_store.JobStatus.FAILED,
                    from_=[job_store.JobStatus.QUEUED],
                    error={"code": "unavailable", "message": "The broker was unavailable."},
                )
    except Exception:  # the store is down too: the sweeper will send them later
        log.exception("could not fail %d unsent job(s)", len(job_ids))


def broker_redis() -> redis.Redis:
    """The process's client of the broker's Redis server (the notes live beside the queues)."""
    return redis_clients.client(get_settings().resolved_broker_url())


def _note_in_flight(job_ids: list[str]) -> None:
    if not job_ids:
        return
    now = time.time()
    try:
        broker_redis().zadd(IN_FLIGHT_KEY, dict.fromkeys(job_ids, now))
    except redis.RedisError:  # harmless: the sweeper re-sends them (a duplicate is skipped)
        log.warning("could not note %d sent job(s) in flight", len(job_ids))


def in_flight(job_ids: list[str]) -> dict[str, float]:
    """When each of ``job_ids`` was last sent, for those the broker holds a note of."""
    if not job_ids:
        return {}
    scores = broker_redis().zmscore(IN_FLIGHT_KEY, job_ids)
    return {job_id: float(s) for job_id, s in zip(job_ids, scores, strict=True) if s is not None}


def forget(job_ids: list[str]) -> None:
    """Drop the notes of jobs that left ``queued`` (the sweeper's clean-up)."""
    if job_ids:
        broker_redis().zrem(IN_FLIGHT_KEY, *job_ids)


def noted_since(before: float, limit: int = 5000) -> list[str]:
    """Job ids noted in flight before Unix time ``before`` (oldest first)."""
    raw = broker_redis().zrangebyscore(IN_FLIGHT_KEY, "-inf", before, start=0, num=limit)
    return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
