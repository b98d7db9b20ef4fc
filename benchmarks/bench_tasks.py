"""The Celery app the queue benchmark's worker runs: Conveyor's own app (every job kind) plus
one raw no-op task, so both sides share the broker, the worker process and its settings.

``celery -A benchmarks.bench_tasks worker …``
"""

from __future__ import annotations

import redis

from config import get_settings
from workers.app import celery_app

app = celery_app
DONE_KEY = "bench:noop:done"
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:  # one connection per (forked) worker process
        _client = redis.Redis.from_url(get_settings().resolved_broker_url())
    return _client


@celery_app.task(name="bench.noop", acks_late=True)
def noop() -> None:
    """A raw Celery task that does nothing but count itself done."""
    _redis().incr(DONE_KEY)
