"""The Celery app the queue benchmark's worker runs: Conveyor's own app (every job kind) plus
one raw no-op task, so both sides share the broker, the worker process and its settings.

``celery -A benchmarks.bench_tasks worker …``

With ``CONVEYOR_BENCH_NO_EVENT_SUBSCRIBERS=1`` (``queue_overhead.py --no-event-subscribers``, a
diagnostic, never the headline figure) the worker drops the ``common.events`` subscribers
(outgoing webhooks) so their share of a job's cost can be measured.
"""

from __future__ import annotations

import os

import redis

from common import events
from config import get_settings
from workers.app import celery_app

app = celery_app
DONE_KEY = "bench:noop:done"
_client: redis.Redis | None = None

if os.environ.get("CONVEYOR_BENCH_NO_EVENT_SUBSCRIBERS") == "1":
    celery_app.loader.import_default_modules()  # the task modules subscribe on import
    events._subscribers.clear()


def _redis() -> redis.Redis:
    global _client
    if _client is None:  # one connection per (forked) worker process
        _client = redis.Redis.from_url(get_settings().resolved_broker_url())
    return _client


@celery_app.task(name="bench.noop", acks_late=True)
def noop() -> None:
    """A raw Celery task that does nothing but count itself done."""
    _redis().incr(DONE_KEY)
