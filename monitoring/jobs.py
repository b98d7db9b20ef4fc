"""Worker side of monitoring: job metrics and heartbeats, from Celery signals.

Imported by ``workers.app`` so every worker process connects these handlers. On the job path a
task costs two dictionary operations and a deque append (``task_prerun``/``task_postrun``);
everything else happens in a background thread per process, every ``metrics_flush_seconds``:
it reads the finished jobs' rows in one query (status, timestamps and counters are the store's,
the source of truth), turns them into counter and histogram deltas, and adds those to the
shared totals in Redis in one pipeline (``monitoring.repository.add_worker_metrics``), which
``GET /metrics`` reads. Prefork children each flush their own deltas, so they add up.

Each worker's main process also writes a heartbeat every ``heartbeat_seconds`` (its queues,
concurrency and active tasks); ``GET /v1/health/runners`` reads them, so a worker that dies
without a word turns ``offline`` once its heartbeat is older than
``runner_offline_after_seconds``.

What is counted here: jobs finished by a worker (completed, failed, cancelled while running),
and any job passed to ``note_job_finished`` (for the sweeper's ``worker_lost``/``timed_out``).
Jobs cancelled while still queued never ran and are not in ``conveyor_jobs_total``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from celery.worker import state as worker_state

from config.queues import KINDS
from monitoring import repository as repo
from monitoring.metrics import (
    CRAWL_PAGES,
    INFERENCE_TOKENS,
    JOB_DURATION,
    JOB_WAIT,
    JOBS_TOTAL,
    WEBHOOK_DELIVERIES,
    WorkerMetrics,
)
from monitoring.settings import get_monitoring_settings
from store.db import session_scope
from webhooks.events import DELIVER_TASK

log = logging.getLogger(__name__)

# A delivery that found its job already finished did not finish it: only count a job whose
# completion is at most this much older than the delivery's start (clock skew between hosts).
CLOCK_SKEW_SECONDS = 1.0
PENDING_CAP = 100_000  # past this (Redis down for long) the oldest notes are dropped
WEBHOOK_OUTCOMES = frozenset({"succeeded", "failed", "skipped"})  # delivery statuses
CRAWL_PROGRESS = {"pages_crawled": "crawled", "pages_failed": "failed", "pages_skipped": "skipped"}


class Recorder:
    """One process's notes of finished tasks and the thread that turns them into metrics."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.notes: deque[tuple[str, ...]] = deque(maxlen=PENDING_CAP)
        self.metrics = WorkerMetrics()
        self.lock = threading.Lock()  # one flush at a time (the thread, or exit)
        self.thread = threading.Thread(target=self._loop, name="conveyor-metrics", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        period = get_monitoring_settings().metrics_flush_seconds
        while True:
            time.sleep(period)
            self.flush()

    def flush(self) -> None:
        with self.lock:
            try:
                self._resolve()
                deltas = self.metrics.take()
                try:
                    repo.add_worker_metrics(deltas)
                except Exception:
                    for key, value in deltas.items():  # keep them for the next flush
                        self.metrics.deltas[key] = self.metrics.deltas.get(key, 0.0) + value
                    raise
            except Exception:
                log.warning("metrics flush failed; retrying later", exc_info=True)

    def _resolve(self) -> None:
        jobs: dict[str, tuple[str, float]] = {}
        while self.notes:
            note = self.notes.popleft()
            if note[0] == "webhook":
                self.metrics.inc(WEBHOOK_DELIVERIES, note[1])
            else:
                jobs[note[1]] = (note[2], float(note[3]))
        if not jobs:
            return
        try:
            with session_scope() as session:
                finished = repo.finished_jobs(session, jobs)
                inference = [j.id for j in finished if j.kind == "inference"]
                results = repo.result_data(session, inference) if inference else []
        except Exception:
            for job_id, (kind, started) in jobs.items():  # the store is down: try again later
                self.notes.append(("job", job_id, kind, str(started)))
            raise
        for job in finished:
            started = jobs[job.id][1]
            if (
                job.completed_at is None
                or job.completed_at.timestamp() < started - CLOCK_SKEW_SECONDS
            ):
                continue
            self._count_job(job)
        for data in results:
            self._count_tokens(data)

    def _count_job(self, job: repo.FinishedJob) -> None:
        self.metrics.inc(JOBS_TOTAL, job.kind, job.status)
        if job.started_at is not None and job.completed_at is not None:
            self.metrics.observe(
                JOB_DURATION, (job.completed_at - job.started_at).total_seconds(), job.kind
            )
            limits = KINDS.get(job.kind)
            queue = limits.queue if limits else "other"
            wait = max((job.started_at - job.created_at).total_seconds(), 0.0)
            self.metrics.observe(JOB_WAIT, wait, queue)
        if job.kind.startswith("crawl"):
            for counter, result in CRAWL_PROGRESS.items():
                pages = job.progress.get(counter)
                if isinstance(pages, int) and pages > 0:
                    self.metrics.inc(CRAWL_PAGES, result, amount=pages)

    def _count_tokens(self, data: dict[str, Any]) -> None:
        response = data.get("response")
        body = response.get("body") if isinstance(response, dict) else None
        source = body if isinstance(body, dict) else data  # a batch line or a whole response
        usage, model = source.get("usage"), source.get("model")
        if not isinstance(usage, dict) or not isinstance(model, str):
            return
        for direction in ("prompt", "completion"):
            tokens = usage.get(f"{direction}_tokens")
            if isinstance(tokens, int) and tokens > 0:
                self.metrics.inc(INFERENCE_TOKENS, model[:100], direction, amount=tokens)


_recorder: Recorder | None = None
_recorder_lock = threading.Lock()
_starts: dict[str, float] = {}


def recorder() -> Recorder:
    """This process's recorder (a forked pool child starts its own on its first task)."""
    global _recorder
    current = _recorder
    if current is None or current.pid != os.getpid():
        with _recorder_lock:
            current = _recorder
            if current is None or current.pid != os.getpid():
                current = _recorder = Recorder()
    return current


def note_job_finished(job_id: str, kind: str) -> None:
    """Count a job that reached its final state outside a job task (the sweeper failing a job
    whose lease lapsed past the cap, or one past its time limit): one call after the commit."""
    recorder().notes.append(("job", job_id, kind, "0"))


def _note_start(task_id: str, task: Any, **_: Any) -> None:
    if getattr(task, "kind", ""):
        _starts[task_id] = time.time()


def _note_end(
    task_id: str, task: Any, args: Any = None, retval: Any = None, state: Any = None, **_: Any
) -> None:
    kind = getattr(task, "kind", "")
    if kind:
        started = _starts.pop(task_id, None)
        if started is not None and args:
            recorder().notes.append(("job", str(args[0]), kind, str(started)))
    elif task.name == DELIVER_TASK:
        if state == "RETRY":
            outcome = "retry"
        elif state != "SUCCESS":
            outcome = "error"
        else:
            outcome = retval if retval in WEBHOOK_OUTCOMES else "other"
        recorder().notes.append(("webhook", outcome))


def _flush_at_exit(**_: Any) -> None:
    current = _recorder
    if current is not None and current.pid == os.getpid():
        current.flush()


# --- heartbeats ---------------------------------------------------------------------------------


class Heartbeats:
    """The worker main process's heartbeat thread."""

    def __init__(self, name: str, queues: list[str], concurrency: int) -> None:
        self.name, self.queues, self.concurrency = name, queues, concurrency
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="conveyor-heartbeat", daemon=True)

    def beat(self, *, stopped: bool = False) -> None:
        repo.write_heartbeat(
            repo.Heartbeat(
                name=self.name,
                queues=self.queues,
                concurrency=self.concurrency,
                active=len(worker_state.active_requests),
                at=time.time(),
                stopped=stopped,
            )
        )

    def _loop(self) -> None:
        period = get_monitoring_settings().heartbeat_seconds
        while True:
            try:
                self.beat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            if self.stopped.wait(period):
                return

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.beat(stopped=True)


_heartbeats: Heartbeats | None = None


def _start_heartbeats(sender: Any = None, **_: Any) -> None:
    global _heartbeats
    controller = getattr(sender, "controller", None)
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    _heartbeats = Heartbeats(
        name=str(getattr(sender, "hostname", "") or os.getpid()),
        queues=queues,
        concurrency=int(getattr(controller, "concurrency", 0) or 0),
    )
    _heartbeats.thread.start()


def _stop_heartbeats(**_: Any) -> None:
    if _heartbeats is not None:
        _heartbeats.stop()
    _flush_at_exit()


def connect() -> None:
    """Connect the handlers (``weak=False``: they are module functions, kept for the process)."""
    settings = get_monitoring_settings()
    worker_ready.connect(_start_heartbeats, weak=False)
    worker_shutdown.connect(_stop_heartbeats, weak=False)
    if settings.metrics_enabled:
        task_prerun.connect(_note_start, weak=False)
        task_postrun.connect(_note_end, weak=False)
        worker_process_shutdown.connect(_flush_at_exit, weak=False)
        atexit.register(_flush_at_exit)


connect()
