"""The answers of the monitoring routes and the scrape-time gauges.

``queue_stats()`` is the one place that measures the queues (broker depth, store counts, worker
heartbeats); the API, ``/metrics`` and the alerts' ``queue_backlog`` condition all call it.
Every check here is cached per process (``health_cache_seconds``), so a load balancer or a
Prometheus polling the API does not load the store or the broker.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from config import get_settings
from config.queues import KINDS, QUEUES
from monitoring import repository as repo
from monitoring.metrics import gauge, worker_families
from monitoring.schemas import (
    HealthStatus,
    OverallState,
    QueueStats,
    Runner,
    RunnersReport,
    RunnersSummary,
    ServiceHealth,
)
from monitoring.settings import get_monitoring_settings
from store.db import session_scope

T = TypeVar("T")
log = logging.getLogger(__name__)

# Free space on the embedded data dir below this fraction makes storage "degraded".
STORAGE_DEGRADED_FREE = 0.05


class TTLCache(Generic[T]):
    """One value computed at most once per ``seconds`` in this process; concurrent callers wait
    for the one computation in flight instead of starting their own."""

    def __init__(self, compute: Callable[[], T], seconds: Callable[[], float]) -> None:
        self._compute = compute
        self._seconds = seconds
        self._lock = threading.Lock()
        self._value: tuple[float, T] | None = None

    def get(self) -> T:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._value[0] >= self._seconds():
                self._value = (now, self._compute())
            return self._value[1]

    def clear(self) -> None:
        with self._lock:
            self._value = None


def _cache_seconds() -> float:
    return get_monitoring_settings().health_cache_seconds


# --- health -----------------------------------------------------------------------------------


def _timed(check: Callable[[], None]) -> ServiceHealth:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        # The route needs no key: name the error, keep hosts and addresses for the log.
        log.warning("health check %s failed: %s", check.__name__, exc)
        return ServiceHealth(status="down", message=type(exc).__name__)
    return ServiceHealth(status="ok", latency_ms=round((time.perf_counter() - started) * 1000, 2))


def _ping_database() -> None:
    with session_scope() as session:
        session.execute(text("SELECT 1"))


def _ping_broker() -> None:
    repo.redis_client(get_settings().resolved_broker_url()).ping()


def _ping_kubernetes() -> None:
    """The API server's ``/version`` (when a backend deploys or provisions on Kubernetes)."""
    from kubernetes import client

    from common.kube import new_api_client

    settings = get_settings()
    api = new_api_client(
        settings.kube_config or None, settings.kube_context or None, settings.kube_in_cluster
    )
    try:
        client.VersionApi(api).get_code(_request_timeout=2)
    finally:
        api.close()


def _uses_kubernetes() -> bool:
    settings = get_settings()
    return "kubernetes" in (settings.deploy_backend, settings.resources_backend)


def _workers_health(runners: list[Runner]) -> ServiceHealth:
    online = [r for r in runners if r.status != "offline"]
    if not online:
        return ServiceHealth(status="degraded", message="No worker sent a heartbeat recently.")
    served = {queue for runner in online for queue in runner.queues}
    missing = [queue for queue in QUEUES if queue not in served]
    if missing:
        return ServiceHealth(
            status="degraded", message=f"No online worker consumes: {', '.join(missing)}."
        )
    return ServiceHealth(status="ok", message=f"{len(online)} online")


def _storage_health() -> ServiceHealth:
    usage = shutil.disk_usage(get_settings().data_dir if get_settings().data_dir.exists() else "/")
    free = usage.free / usage.total if usage.total else 1.0
    message = f"{free:.0%} free"
    return ServiceHealth(
        status="degraded" if free < STORAGE_DEGRADED_FREE else "ok", latency_ms=0.0, message=message
    )


def check_health() -> HealthStatus:
    """Run every check now (``health_status()`` is the cached entry point)."""
    services = {"database": _timed(_ping_database), "broker": _timed(_ping_broker)}
    if services["broker"].status == "ok":
        services["workers"] = _workers_health(list_runners())
    else:
        services["workers"] = ServiceHealth(status="down", message="The broker is unreachable.")
    if _uses_kubernetes():  # down here degrades deployments and resources, not the platform
        services["kubernetes"] = _timed(_ping_kubernetes)
    services["storage"] = _storage_health()
    overall: OverallState
    if services["database"].status == "down" or services["broker"].status == "down":
        overall = "unhealthy"
    elif any(s.status != "ok" for s in services.values()):
        overall = "degraded"
    else:
        overall = "healthy"
    return HealthStatus(status=overall, services=services, timestamp=datetime.now(UTC))


_health = TTLCache(check_health, _cache_seconds)


def health_status() -> HealthStatus:
    return _health.get()


# --- the worker pool ----------------------------------------------------------------------------


def list_runners(now: float | None = None) -> list[Runner]:
    """Every worker seen in the last hour, from heartbeats: offline once its latest heartbeat is
    older than ``runner_offline_after_seconds`` (or it said it stopped)."""
    now = time.time() if now is None else now
    offline_after = get_monitoring_settings().runner_offline_after_seconds
    runners = []
    for beat in repo.read_heartbeats():
        if beat.stopped or now - beat.at > offline_after:
            status = "offline"
        else:
            status = "busy" if beat.active > 0 else "idle"
        runners.append(
            Runner(
                name=beat.name,
                queues=beat.queues,
                status=status,  # type: ignore[arg-type]
                active=beat.active if status != "offline" else 0,
                concurrency=beat.concurrency,
                last_heartbeat=datetime.fromtimestamp(beat.at, UTC),
            )
        )
    return sorted(runners, key=lambda r: r.name)


def runners_report() -> RunnersReport:
    runners = list_runners()
    summary = RunnersSummary()
    for runner in runners:
        setattr(summary, runner.status, getattr(summary, runner.status) + 1)
    return RunnersReport(runners=runners, summary=summary)


# --- queues -------------------------------------------------------------------------------------


def queue_stats() -> list[QueueStats]:
    """Per queue: broker depth, the oldest queued job's age, online consumers, jobs running and
    completed in the last minute (cached per process; see the module docstring)."""
    return _queues.get()


def measure_queues(now: datetime | None = None) -> list[QueueStats]:
    now = now or datetime.now(UTC)
    pipe = repo.redis_client(get_settings().resolved_broker_url()).pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    depths = dict(zip(QUEUES, pipe.execute(), strict=True))
    with session_scope() as session:
        counts = repo.kind_counts(session, now - timedelta(minutes=1))
    runners = [r for r in list_runners() if r.status != "offline"]
    stats = []
    for queue in QUEUES:
        kinds = [counts[k] for k, limits in KINDS.items() if limits.queue == queue and k in counts]
        oldest = min((c.oldest_queued for c in kinds if c.oldest_queued), default=None)
        stats.append(
            QueueStats(
                name=queue,
                depth=int(depths[queue]),
                oldest_age_s=round(max((now - oldest).total_seconds(), 0.0), 3) if oldest else None,
                consumers=sum(1 for r in runners if queue in r.queues),
                running=sum(c.running for c in kinds),
                completed_last_minute=sum(c.completed_since for c in kinds),
            )
        )
    return stats


_queues = TTLCache(measure_queues, _cache_seconds)


# --- scrape-time metrics -------------------------------------------------------------------------


class PlatformCollector(Collector):
    """The workers' totals (Redis) and the queue and worker gauges, for one scrape."""

    def collect(self) -> Iterable[Metric]:
        yield from worker_families(repo.read_worker_metrics())
        queues = queue_stats()
        yield gauge(
            "conveyor_queue_depth",
            "Messages waiting in the broker, by queue.",
            ("queue",),
            ((q.name, q.depth) for q in queues),
        )
        yield gauge(
            "conveyor_queue_oldest_age_seconds",
            "Age of the oldest queued job, by queue (0 when none is queued).",
            ("queue",),
            ((q.name, q.oldest_age_s or 0.0) for q in queues),
        )
        yield gauge(
            "conveyor_queue_running",
            "Jobs running now, by queue.",
            ("queue",),
            ((q.name, q.running) for q in queues),
        )
        states: dict[tuple[str, str], int] = {
            (queue, state): 0 for queue in QUEUES for state in ("idle", "busy", "offline")
        }
        for runner in list_runners():
            for queue in runner.queues:
                if queue in QUEUES:
                    states[(queue, runner.status)] += 1
        yield gauge(
            "conveyor_workers",
            "Workers by queue and state (from heartbeats).",
            ("queue", "state"),
            ((queue, state, n) for (queue, state), n in states.items()),
        )
