"""Prometheus metrics: what ``GET /metrics`` exposes and where each number comes from.

- **API processes** time every request (``HttpMetricsMiddleware``) into prometheus_client
  metrics. With ``PROMETHEUS_MULTIPROC_DIR`` set (one empty directory per host or pod, shared by
  uvicorn's worker processes) the values live in files and every process's scrape answers the
  sum of all of them (prometheus_client's multiprocess mode).
- **Worker processes** (prefork children included) add their job counters and histograms to one
  Redis hash every few seconds (``monitoring.jobs``); the scrape reads that hash, so every API
  process answers the same cluster-wide totals, whichever worker machine did the work.
- **Gauges** (queue depth, oldest queued job, workers by state) are read at scrape time from the
  broker, the store and the workers' heartbeats (``monitoring.service``, cached 2 s).

Every label value comes from a fixed set (job kinds, queues, states, route templates, served
model names), so no series is created per job, per path or per organisation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.repository import SampleKey

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10800.0)
JOB_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "conveyor_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ("route", "method", "status"),
)
HTTP_DURATION = Histogram(
    "conveyor_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ("route", "method"),
    buckets=HTTP_BUCKETS,
)


@dataclass(frozen=True)
class WorkerMetric:
    """A metric that worker processes add to in Redis (see ``WorkerMetrics``)."""

    name: str
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


JOBS_TOTAL = WorkerMetric(
    "conveyor_jobs_total",
    "counter",
    "Jobs that reached a final state on a worker, by kind and status.",
    ("kind", "status"),
)
JOB_DURATION = WorkerMetric(
    "conveyor_job_duration_seconds",
    "histogram",
    "Running time of finished jobs (started_at to completed_at), by kind.",
    ("kind",),
    JOB_DURATION_BUCKETS,
)
JOB_WAIT = WorkerMetric(
    "conveyor_job_wait_seconds",
    "histogram",
    "Time from queued (created_at) to running (started_at), by queue.",
    ("queue",),
    JOB_WAIT_BUCKETS,
)
INFERENCE_TOKENS = WorkerMetric(
    "conveyor_inference_tokens_total",
    "counter",
    "Tokens of finished inference jobs, by served model and direction (prompt, completion).",
    ("model", "direction"),
)
CRAWL_PAGES = WorkerMetric(
    "conveyor_crawl_pages_total",
    "counter",
    "Pages of finished crawl jobs, by result (crawled, failed, skipped).",
    ("result",),
)
WEBHOOK_DELIVERIES = WorkerMetric(
    "conveyor_webhook_deliveries_total",
    "counter",
    "Webhook delivery attempts, by outcome (succeeded, retry, failed, skipped, error).",
    ("outcome",),
)
WORKER_METRICS: tuple[WorkerMetric, ...] = (
    JOBS_TOTAL,
    JOB_DURATION,
    JOB_WAIT,
    INFERENCE_TOKENS,
    CRAWL_PAGES,
    WEBHOOK_DELIVERIES,
)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(zip(names, values, strict=True)))


class WorkerMetrics:
    """One process's metric deltas since its last flush (not thread-safe: one owner thread)."""

    def __init__(self) -> None:
        self.deltas: dict[SampleKey, float] = {}

    def inc(self, metric: WorkerMetric, *values: str, amount: float = 1.0) -> None:
        key = (metric.name, _labels(metric.labels, values))
        self.deltas[key] = self.deltas.get(key, 0.0) + amount

    def observe(self, metric: WorkerMetric, value: float, *values: str) -> None:
        labels = _labels(metric.labels, values)
        for le in (*metric.buckets, float("inf")):
            if value <= le:
                key = (f"{metric.name}_bucket", tuple(sorted((*labels, ("le", _le(le))))))
                self.deltas[key] = self.deltas.get(key, 0.0) + 1.0
        for suffix, amount in (("_sum", value), ("_count", 1.0)):
            key = (metric.name + suffix, labels)
            self.deltas[key] = self.deltas.get(key, 0.0) + amount

    def take(self) -> dict[SampleKey, float]:
        deltas, self.deltas = self.deltas, {}
        return deltas


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def worker_families(totals: Mapping[SampleKey, float]) -> Iterator[Metric]:
    """The worker metrics' families, from the totals in Redis (every family, even empty)."""
    for metric in WORKER_METRICS:
        if metric.kind == "counter":
            family = CounterMetricFamily(
                metric.name.removesuffix("_total"), metric.help, labels=metric.labels
            )
            for (name, labels), value in sorted(totals.items()):
                if name == metric.name:
                    family.add_metric([dict(labels)[n] for n in metric.labels], value)
            yield family
            continue
        histogram = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
        for labels in sorted({lb for (n, lb) in totals if n == f"{metric.name}_count"}):
            values = dict(labels)
            buckets = []
            for le in (*metric.buckets, float("inf")):
                key = (f"{metric.name}_bucket", tuple(sorted((*labels, ("le", _le(le))))))
                buckets.append((_le(le), totals.get(key, 0.0)))
            histogram.add_metric(
                [values[n] for n in metric.labels],
                buckets,
                totals.get((f"{metric.name}_sum", labels), 0.0),
            )
        yield histogram


def gauge(name: str, help: str, labels: tuple[str, ...], rows: Iterable[Any]) -> Metric:
    family = GaugeMetricFamily(name, help, labels=labels)
    for *values, value in rows:
        family.add_metric([str(v) for v in values], float(value))
    return family


class _DefaultRegistry(Collector):
    """This process's own prometheus_client metrics (when not in multiprocess mode)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def render(*collectors: Collector) -> bytes:
    """One scrape: the API processes' metrics (all of them in multiprocess mode) plus
    ``collectors`` (the workers' totals and the scrape-time gauges)."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # prometheus_client's own switch
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_DefaultRegistry())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


# --- HTTP -------------------------------------------------------------------------------------


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = candidate.matches(scope)
        if match != Match.NONE:
            return str(getattr(candidate, "path", "unmatched"))
    return "unmatched"


class HttpMetricsMiddleware:
    """Count and time every HTTP request by route template, method and status (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = route_template(scope)
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)
