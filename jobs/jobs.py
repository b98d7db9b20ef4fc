"""The job domain's worker-side work: what makes "no accepted job is lost or stuck" true.

* :class:`LeaseKeeper` — a worker process renews the lease of every job it runs every
  ``job_lease_renew_seconds`` (lease ``job_lease_seconds``); a job it no longer holds is
  reported lost, and its handler stops at its next cancellation check.
* :func:`requeue_lapsed` — a running job whose lease lapsed (its worker died, or was cut off
  from the store for longer than the lease) goes back to ``queued`` and is sent again; past the
  attempt cap it ends ``failed`` with ``worker_lost``.
* :func:`sweep_queued` — a job ``queued`` for longer than ``sweep_queued_after_seconds`` whose
  message the broker does not hold (never sent: the process died between commit and send; or
  lost with the broker's data; or reserved by a worker that died before starting it) is sent
  again. A duplicate message is harmless: the compare-and-set start lets one delivery run it.
* :func:`reap_timed_out` — a job still running past its kind's hard time limit fails
  ``timed_out``.

All run from beat (``maintenance.*`` tasks) every ``sweep_interval_seconds``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis

from common.timeutil import utcnow
from config import get_settings
from config.queues import KINDS
from jobs.service import emit_job_event
from monitoring.jobs import note_job_finished
from store import jobs as job_store
from store.db import autocommit, session_scope
from store.jobs import JobStatus
from workers import outbox

log = logging.getLogger(__name__)

#: kombu's Redis transport keeps reserved (unacked) messages here, with their reservation time.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"


# --- the worker's side of a lease --------------------------------------------------------------


class LeaseKeeper:
    """Renews the leases of the jobs this process runs, from one daemon thread.

    ``hold(job_id, delivery_id)`` when a job starts, ``release(job_id)`` when it ends;
    ``lost(job_id)`` tells the runner that the job is no longer this delivery's.
    """

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: str, delivery_id: str) -> None:
        with self._lock:
            self._held[job_id] = delivery_id
            self._lost.discard(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-lease", daemon=True
                )
                self._thread.start()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.discard(job_id)

    def lost(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._lost

    def renew_now(self) -> None:
        """Renew every held lease once (the thread does this every renewal period)."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        until = utcnow() + timedelta(seconds=get_settings().job_lease_seconds)
        with autocommit() as connection:
            renewed = job_store.renew_leases(connection, held, until)
        with self._lock:
            for job_id, delivery_id in held.items():
                if job_id not in renewed and self._held.get(job_id) == delivery_id:
                    self._lost.add(job_id)

    def _run(self) -> None:
        wait = get_settings().job_lease_renew_seconds
        while True:
            self._wake.wait(wait)
            try:
                self.renew_now()
                wait = get_settings().job_lease_renew_seconds
            except Exception as exc:  # the store is down: renew as soon as it is back
                log.warning("could not renew job leases: %s", exc)
                wait = 1.0


#: One per worker process: pool children hold their jobs' leases (the prefork parent runs no
#: job, so a forked child starts with no thread and nothing held).
lease_keeper = LeaseKeeper()


# --- beat: leases, queued jobs and time limits --------------------------------------------------


def requeue_lapsed() -> dict[str, list[str]]:
    """Re-queue running jobs whose lease lapsed; fail those past the attempt cap."""
    settings = get_settings()
    now = utcnow()
    requeued: list[str] = []
    failed: list[str] = []
    with session_scope() as session:
        lapsed = job_store.lapsed_leases(session, now)
    for job_id, kind, attempts in lapsed:
        with session_scope() as session:
            if attempts >= settings.max_deliveries:
                won = job_store.fail_worker_lost(
                    session, job_id, f"The worker running this job was lost {attempts} times"
                )
                if won:
                    emit_job_event(session, "job.failed", job_id)
                    failed.append(job_id)
            elif job_store.requeue(session, job_id, now):
                outbox.enqueue_message(session, outbox.job_message(kind, job_id))
                requeued.append(job_id)
    for job_id in requeued:
        log.warning("job %s: its worker's lease lapsed; re-queued", job_id)
    for job_id in failed:
        log.error("job %s: worker lost too many times; failed (worker_lost)", job_id)
        note_job_finished(job_id, next(k for i, k, _ in lapsed if i == job_id))
    return {"requeued": requeued, "failed": failed}


@dataclass(frozen=True)
class BrokerView:
    """What the broker holds for the jobs the sweeper looks at."""

    noted: dict[str, float]  # job id → when its message was last sent
    reserved: dict[str, float]  # job id → when a worker reserved its message (unacked)
    empty_queues: set[str]  # queues whose list is empty now


def _reserved_jobs(client: redis.Redis) -> dict[str, float]:
    """Job ids of the messages workers hold unacknowledged, with when they took them."""
    out: dict[str, float] = {}
    for tag, raw in client.hgetall(UNACKED_KEY).items():
        try:
            message = json.loads(raw)[0]
            headers = message.get("headers") or {}
            if not str(headers.get("task", "")).endswith(".run"):
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if args:
            score = client.zscore(UNACKED_INDEX_KEY, tag)
            out[str(args[0])] = float(score) if score is not None else time.time()
    return out


def _broker_view(candidates: list[tuple[str, str]]) -> BrokerView:
    client = outbox.broker_redis()
    ids = [job_id for job_id, _ in candidates]
    queues = {KINDS[kind].queue for _, kind in candidates if kind in KINDS}
    empty = {queue for queue in queues if client.llen(queue) == 0}
    return BrokerView(outbox.in_flight(ids), _reserved_jobs(client), empty)


def sweep_queued() -> list[str]:
    """Send again every job ``queued`` too long without its message in the broker."""
    settings = get_settings()
    after = settings.sweep_queued_after_seconds
    now = time.time()
    with session_scope() as session:
        candidates = job_store.queued_before(session, utcnow() - timedelta(seconds=after))
    candidates = [(job_id, kind) for job_id, kind in candidates if kind in KINDS]
    resent: list[outbox.Message] = []
    if candidates:
        view = _broker_view(candidates)
        for job_id, kind in candidates:
            if job_id in view.reserved:
                orphaned = view.reserved[job_id] < now - after  # its worker died before start
            elif job_id not in view.noted:
                orphaned = True  # never sent, or lost with the broker's data
            else:  # sent: still waiting in its queue unless that queue is empty
                orphaned = (
                    view.noted[job_id] < now - after and KINDS[kind].queue in view.empty_queues
                )
            if orphaned:
                resent.append(outbox.job_message(kind, job_id))
    if resent:
        outbox.send(resent)
        log.warning("re-sent %d queued job(s) that had no message in the broker", len(resent))
    _forget_settled(now - after)
    return [m.job_id for m in resent if m.job_id is not None]


def _forget_settled(before: float) -> None:
    """Drop in-flight notes of jobs that left ``queued`` (bounded work per sweep)."""
    noted = outbox.noted_since(before)
    if not noted:
        return
    with session_scope() as session:
        current = job_store.statuses(session, noted)
    outbox.forget([job_id for job_id in noted if current.get(job_id) != JobStatus.QUEUED])


def reap_timed_out() -> list[str]:
    """Fail jobs still ``running`` past their kind's hard time limit (``timed_out``)."""
    limits = {kind: k.time_limit for kind, k in KINDS.items()}
    with session_scope() as session:
        reaped = job_store.reap_stuck(
            session, utcnow(), limits, get_settings().reaper_grace_seconds
        )
        kinds = job_store.kinds_of(session, reaped)
        for job_id in reaped:
            emit_job_event(session, "job.failed", job_id)
    for job_id in reaped:
        log.warning("reaped stuck job %s (timed_out)", job_id)
        note_job_finished(job_id, kinds.get(job_id, ""))
    return reaped


def sweep() -> dict[str, Any]:
    """One pass of everything above (the ``maintenance.sweep_jobs`` beat task)."""
    lapsed = requeue_lapsed()
    return {**lapsed, "resent": sweep_queued(), "timed_out": reap_timed_out()}
