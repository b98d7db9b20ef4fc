"""Billing: ``GET /v1/billing/usage`` at a small and at a large number of usage events, and what
metering costs the job path, in one run on PostgreSQL.

1. ``usage``: two organisations, one with ``--small`` events (the anchor, 10k) and one with
   ``--large`` events (10M), bulk-loaded with ``generate_series`` into ``usage_events`` and their
   rollups (what ``billing.service.record_usage`` keeps in the same transaction, here built by one
   ``INSERT … SELECT … GROUP BY``), spread over the current month, 7 meters and 3 dimensions
   each. The endpoint is served in-process (ASGI, the real app with auth and middleware) and
   timed ``--requests`` times per side, alternating. Target: p50 ratio ≤ 1.5, p99 < 50 ms at the
   large side.
2. ``queue_overhead``: no-op ``diagnostics`` jobs on a worker with ``CONVEYOR_BILLING_METERING=0``
   (the anchor) and one with metering on (a usage event and a rollup upsert in each job's
   completing statement), ABBA rounds as in ``benchmarks/queue_overhead.py --metrics-compare``.
   Target: the median of the round pairs' ratios ≥ 0.95 (printed with its spread and the load).

    .venv/bin/python benchmarks/billing.py [--large 10000000] [--small 10000] [--n 2000]

Last lines: ``usage_ratio=…``, ``usage_p99_ms=…`` and ``metering_ratio=…``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness
from benchmarks.queue_overhead import start_worker, submit_noop_jobs

METERS = (
    "jobs", "pages_crawled", "tokens_in", "tokens_out", "gpu_seconds", "replica_seconds",
    "storage_gb_hours",
)  # fmt: skip


def load_events(org_id: str, count: int) -> float:
    """Bulk-load ``count`` events of ``org_id`` over this month and build their rollups."""
    from sqlalchemy import text

    from plans.service import current_period, period_key
    from store.db import get_engine

    start, _ = current_period()
    days = max(1, (time.time() - start.timestamp()) // 86400 + 1)
    t0 = time.perf_counter()
    meters = "ARRAY[" + ",".join(f"'{m}'" for m in METERS) + "]"
    with get_engine().begin() as conn:
        conn.execute(
            text(
                f"""
                INSERT INTO usage_events (org_id, meter, dimension, quantity, unit, subject_type,
                    subject_id, occurred_at, period, idempotency_key, created_at)
                SELECT CAST(:org AS varchar), ({meters})[1 + i % {len(METERS)}], 'd' || (i % 3),
                       1 + i % 5, 'u', 'job', 'job-' || (i / 3), CAST(:start AS timestamptz)
                       + ((i % CAST(:days AS int)) || ' days')::interval
                       + ((i % 86000) || ' seconds')::interval, CAST(:period AS varchar),
                       'bench:' || CAST(:org AS varchar) || ':' || i, now()
                FROM generate_series(1, :count) AS i
                """
            ),
            {
                "org": org_id,
                "count": count,
                "start": start,
                "days": int(days),
                "period": period_key(),
            },
        )
        conn.execute(
            text(
                """
                INSERT INTO usage_rollups (org_id, period, day, meter, dimension, quantity, events)
                SELECT org_id, period, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                       meter, dimension, sum(quantity), count(*)
                FROM usage_events WHERE org_id = :org GROUP BY 1, 2, 3, 4, 5
                """
            ),
            {"org": org_id},
        )
    with get_engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE usage_events"))
        conn.execute(text("ANALYZE usage_rollups"))
    return time.perf_counter() - t0


def bench_usage(args: argparse.Namespace) -> tuple[float, float, float]:
    from fastapi.testclient import TestClient

    from api.app import create_app

    small, large = harness.make_org(), harness.make_org()
    for org, count in ((small, args.small), (large, args.large)):
        harness.log(f"loading {count} events ...")
        harness.log(f"  loaded in {load_events(org.org_id, count):.1f} s")
    timings: dict[str, list[float]] = {"small": [], "large": []}
    with TestClient(create_app()) as client:
        for org in (small, large):  # warm-up
            for _ in range(20):
                assert client.get("/v1/billing/usage", headers=org.headers).status_code == 200
        for _ in range(args.requests):
            for name, org in (("small", small), ("large", large)):
                t0 = time.perf_counter()
                r = client.get("/v1/billing/usage", headers=org.headers)
                timings[name].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        body = client.get("/v1/billing/usage", headers=large.headers).json()
        events = sum(line["events"] for line in body["lines"])
        assert events == args.large, (events, args.large)
    s, lg = sorted(timings["small"]), sorted(timings["large"])
    p50s, p50l = statistics.median(s), statistics.median(lg)
    p99l = harness.percentile(lg, 99)
    print(f"billing usage endpoint, {args.requests} requests a side (in-process ASGI)")
    p99s = harness.percentile(s, 99)
    print(
        f"  anchor  {args.small:>10} events : p50 {p50s * 1000:6.2f} ms  p99 {p99s * 1000:6.2f} ms"
    )
    print(
        f"  ours    {args.large:>10} events : p50 {p50l * 1000:6.2f} ms  p99 {p99l * 1000:6.2f} ms"
    )
    return p50l / p50s, p99l * 1000, p50l * 1000


def bench_metering(args: argparse.Namespace, bench: harness.Bench) -> float:
    from sqlalchemy import func, select

    from cli.main import worker_command
    from store.db import session_scope
    from store.models import Job
    from workers.app import celery_app

    celery_app.loader.import_default_modules()
    cmd = worker_command(None, ["maintenance"], args.concurrency)
    cmd[cmd.index("workers.app")] = "benchmarks.bench_tasks"
    cmd[cmd.index("-l") + 1] = "WARNING"
    host = socket.gethostname()
    nodes, procs = {}, {}
    for mode, enabled in (("off", "0"), ("on", "1")):
        mode_cmd = list(cmd)
        mode_cmd[mode_cmd.index("-n") + 1] = f"bill-{bench.redis_db}-{mode}@%h"
        nodes[mode] = f"bill-{bench.redis_db}-{mode}@{host}"
        procs[mode] = start_worker(
            bench, mode_cmd, f"worker-{mode}", {"CONVEYOR_BILLING_METERING": enabled}
        )

    def run(n: int, mode: str) -> float:
        other = "on" if mode == "off" else "off"
        control = celery_app.control
        control.cancel_consumer("maintenance", destination=[nodes[other]], reply=True, timeout=5)
        control.add_consumer("maintenance", destination=[nodes[mode]], reply=True, timeout=5)
        org = harness.make_org()
        t0 = time.perf_counter()
        submit_noop_jobs(org.org_id, n, args.batch)
        while True:
            with session_scope() as session:
                done = session.scalar(
                    select(func.count()).where(Job.org_id == org.org_id, Job.status == "completed")
                )
            if (done or 0) >= n:
                return float(time.perf_counter() - t0)
            if any(p.poll() is not None for p in procs.values()):
                raise RuntimeError("a worker died")
            time.sleep(0.01)

    for mode in ("off", "on"):
        run(args.warmup, mode)
    sizes = [args.n // args.rounds] * args.rounds
    seconds = {"off": 0.0, "on": 0.0}
    ratios = []
    load_before = os.getloadavg()
    for i, size in enumerate(sizes):
        took = {}
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            took[mode] = run(size, mode)
            seconds[mode] += took[mode]
        ratios.append(took["off"] / took["on"])
    load_after = os.getloadavg()
    total = sum(sizes)
    off, on = total / seconds["off"], total / seconds["on"]
    print(f"queue_overhead metering compare n={total} rounds={args.rounds} (ABBA)")
    print(f"  anchor  Conveyor jobs, metering off : {off:8.1f} jobs/s")
    print(f"  ours    Conveyor jobs, metering on  : {on:8.1f} jobs/s")
    ratio = statistics.median(ratios)
    print(
        f"  rounds' ratios: {', '.join(f'{r:.3f}' for r in ratios)}; median {ratio:.3f}, "
        f"spread {min(ratios):.3f}-{max(ratios):.3f}; all rounds pooled {on / off:.3f}"
    )
    print(
        f"  load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    return float(ratio)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--n", type=int, default=2000, help="jobs a side (metering compare)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--skip-metering", action="store_true")
    parser.add_argument(
        "--batch", type=int, default=0, help="jobs per submitting transaction (0: one each)"
    )
    parser.add_argument(
        "--skip-usage", action="store_true", help="only the metering compare (no event loading)"
    )
    args = parser.parse_args()
    with harness.services() as bench:
        usage = None if args.skip_usage else bench_usage(args)
        metering = None if args.skip_metering else bench_metering(args, bench)
    if usage is not None:
        usage_ratio, p99, _ = usage
        print(f"  target  usage p50 ratio <= 1.5 : {'met' if usage_ratio <= 1.5 else 'MISSED'}")
        print(f"  target  p99 < 50 ms at {args.large}: {'met' if p99 < 50 else 'MISSED'}")
    if metering is not None:
        print(f"  target  metering ratio >= 0.95 : {'met' if metering >= 0.95 else 'MISSED'}")
    if usage is not None:
        print(f"usage_ratio={usage_ratio:.3f}")
        print(f"usage_p99_ms={p99:.2f}")
    if metering is not None:
        print(f"metering_ratio={metering:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
