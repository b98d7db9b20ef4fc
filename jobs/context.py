"""What a job's handler gets: :class:`JobContext` (its input, progress, cancel checks, results)
and :class:`JobCancelled`, raised inside a handler to stop quietly once the job was cancelled.

Domain code types its worker-side handlers (``<domain>/jobs.py``) with these; the Celery glue
that builds the context and records the outcome is ``tasks/runner.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from jobs import jobs as job_leases
from jobs.service import emit_job_event
from store import jobs as job_store
from store.db import session_scope
from store.jobs import JobStatus

PROGRESS_FLUSH_SECONDS = 0.5


class JobCancelled(Exception):
    """Raised inside a handler when the job was cancelled; the runner stops quietly."""


@dataclass
class JobContext:
    """What a handler gets: the job's input and ways to report progress and results."""

    job_id: str
    org_id: str
    kind: str
    input: dict[str, Any]
    attempt: int
    delivery_id: str = ""
    #: The queue this delivery came from (helpers a job sends go there too; "" outside a worker).
    queue: str = ""
    _next_seq: int = 0
    # The job was running when the context was made: no need to ask the store again at once.
    _last_cancel_check: float = field(default_factory=time.monotonic)
    _cancelled: bool = False
    # Whether any webhook listens to this job's events (checked at start and at the end).
    listening: bool = False
    # ``progress`` counters not written yet: written at most every PROGRESS_FLUSH_SECONDS, and
    # with the job's final transition, so a short job costs no progress transaction at all.
    _pending: dict[str, Any] = field(default_factory=dict)
    _last_flush: float = field(default_factory=time.monotonic)
    started_monotonic: float = field(default_factory=time.monotonic)

    def take_pending_progress(self) -> dict[str, Any]:
        pending, self._pending = self._pending, {}
        return pending

    def progress(self, **counters: Any) -> None:
        """Set counters (merged into ``progress``); visible to pollers within half a second."""
        self._pending.update(counters)
        if time.monotonic() - self._last_flush >= PROGRESS_FLUSH_SECONDS:
            self.flush_progress()

    def final_progress(self, **counters: Any) -> None:
        """Set counters that are written with the job's final transition only (no write of
        their own): what the job's completion reads, such as its usage."""
        self._pending.update(counters)

    def flush_progress(self) -> None:
        if not self._pending:
            return
        counters = self.take_pending_progress()
        self._last_flush = time.monotonic()
        with session_scope() as own:
            job_store.relax_commit_durability(own)  # progress only: no disk flush wait
            written = job_store.set_progress(own, self.job_id, counters)
            if written and self.listening:
                emit_job_event(own, "job.progress", self.job_id)

    def increment(self, **deltas: int) -> dict[str, Any] | None:
        """Add to counters at once and exactly (many workers may share one job); None when the
        job is no longer running (nothing written)."""
        with session_scope() as session:
            job_store.relax_commit_durability(session)
            merged = job_store.increment_progress(session, self.job_id, deltas)
            if merged is not None and self.listening:
                emit_job_event(session, "job.progress", self.job_id)
        return merged

    def cancelled(self, min_interval: float = 0.0) -> bool:
        """True once the job was cancelled (or deleted), or is no longer this delivery's (its
        lease lapsed and it was re-queued); checks the store at most every ``min_interval``
        seconds."""
        if self._cancelled:
            return True
        if self.delivery_id and job_leases.lease_keeper.lost(self.job_id):
            self._cancelled = True
            return True
        now = time.monotonic()
        if now - self._last_cancel_check < min_interval:
            return False
        self._last_cancel_check = now
        with session_scope() as session:
            status = job_store.status_of(session, self.job_id)
        self._cancelled = status in (None, JobStatus.CANCELLED)
        return self._cancelled

    def check_cancelled(self, min_interval: float = 0.0) -> None:
        if self.cancelled(min_interval):
            raise JobCancelled(self.job_id)

    def reserve_seq(self) -> int:
        """The next result item's sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def add_result(
        self,
        *,
        data: dict[str, Any] | None = None,
        body: str | None = None,
        name: str = "",
        content_type: str = "application/json",
        session: Session | None = None,
    ) -> int:
        seq = self.reserve_seq()
        with contextlib.ExitStack() as stack:
            target = session if session is not None else stack.enter_context(session_scope())
            job_store.add_result_item(
                target,
                self.job_id,
                seq=seq,
                name=name,
                content_type=content_type,
                body=body,
                data=data,
            )
        return seq


#: A kind's worker-side work: takes the context, returns the job's result (or None).
Handler = Callable[[JobContext], dict[str, Any] | None]
