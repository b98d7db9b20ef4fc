"""List scaling: ``GET /v1/jobs?status=completed`` page time with 10k jobs in the table vs
``--rows`` (default 1M), on page 1 and on a deep cursor (90 % down the list), through real
uvicorn servers; the store-level time of the same page (``store.jobs.list_jobs``) beside it,
and PostgreSQL's plan of the deep page at the big size.

Two databases, one per table size (the big one is a copy of the small one, grown), each with
its own API server, measured at the same time with requests interleaved, so a change in the
machine's load hits both sizes alike. All rows belong to the one organisation that lists (the
hardest case): 60 % completed, the rest failed / cancelled / queued / running, one second
apart, generated inside PostgreSQL (``INSERT … SELECT generate_series``), then
``VACUUM ANALYZE``.

    .venv/bin/python benchmarks/list_scaling.py [--rows 1000000] [--limit 100] [--requests 200]

Needs PostgreSQL and Redis on 127.0.0.1 (creates and drops its own database). Last line:
``ratio=<worst page time at --rows ÷ the same page at 10k>`` (target ≤ 1.3).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg

from benchmarks import harness

SMALL = 10_000
CHUNK = 200_000

# Status by row number (i % 10): 60 % completed.
STATUS_SQL = """CASE i %% 10
    WHEN 6 THEN 'failed' WHEN 7 THEN 'cancelled' WHEN 8 THEN 'queued' WHEN 9 THEN 'running'
    ELSE 'completed' END"""

INSERT_SQL = f"""
INSERT INTO jobs (id, org_id, kind, status, input, progress, error, attempts, created_at,
                  started_at, completed_at, expires_at)
SELECT gen_random_uuid()::text, %(org)s, 'diagnostics', s.status,
       '{{"seconds": 0, "steps": 1}}'::jsonb, '{{"steps_total": 1, "steps_done": 1}}'::jsonb,
       CASE WHEN s.status = 'failed'
            THEN '{{"code": "diagnostics_failure", "message": "asked to fail"}}'::jsonb END,
       1, s.created, s.created + interval '1 second',
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN s.created + interval '2 seconds' END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN s.created + interval '2 seconds' + interval '24 hours' END
FROM (
    SELECT i, {STATUS_SQL} AS status,
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' AS created
    FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS i
) AS s
"""


@dataclass
class Target:
    size: int
    database_url: str
    base_url: str
    cursor: str = ""
    deep_offset: int = 0


def grow(conninfo: str, org_id: str, have: int, want: int) -> None:
    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for start in range(have, want, CHUNK):
            stop = min(want, start + CHUNK) - 1
            conn.execute(INSERT_SQL, {"org": org_id, "start": start, "stop": stop})
            harness.log(f"  {stop + 1:,} rows ({time.perf_counter() - started:.0f} s)")
        conn.execute("VACUUM ANALYZE jobs")
    harness.log(f"table at {want:,} rows after {time.perf_counter() - started:.0f} s")


def copy_database(source: str, target: str) -> None:
    from store.db import reset_engine

    reset_engine()  # CREATE DATABASE … TEMPLATE needs the source without connections
    with psycopg.connect(harness.PG_ADMIN_URL, autocommit=True) as conn:
        # This run's own idle connections (the engine's pool, Alembic's) still hold it.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (source,),
        )
        conn.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}"')


def session_for(database_url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    return Session(create_engine(database_url, pool_size=1))


def deep_cursor(database_url: str, org_id: str, fraction: float) -> tuple[str, int]:
    """The cursor that starts the page ``fraction`` of the way down the completed list."""
    from sqlalchemy import func, select

    from store.jobs import encode_cursor
    from store.models import Job

    with session_for(database_url) as session:
        completed = int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.org_id == org_id, Job.status == "completed")
            )
            or 0
        )
        offset = int(completed * fraction)
        row = session.execute(
            select(Job.created_at, Job.id)
            .where(Job.org_id == org_id, Job.status == "completed")
            .order_by(Job.created_at.desc(), Job.id.desc())
            .offset(offset)
            .limit(1)
        ).one()
    return encode_cursor(row.created_at, row.id), offset


def deep_plan(target: Target, org_id: str, limit: int) -> str:
    """PostgreSQL's plan for the deep page: an index walk, no sort, no scan of the org's rows."""
    from sqlalchemy.dialects import postgresql

    from store import jobs as job_store
    from store.jobs import JobFilter

    query = job_store._page_query(
        org_id,
        JobFilter(statuses=("completed",)),
        "completed",
        job_store.decode_cursor(target.cursor),
        limit + 1,
    )
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    conninfo = target.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute("EXPLAIN (ANALYZE) " + sql)  # warm
        lines = [row[0] for row in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the big table size")
    parser.add_argument("--limit", type=int, default=100, help="page size (max 100)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument("--deep", type=float, default=0.9, help="deep cursor position (0-1)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (each server)")
    args = parser.parse_args()
    if args.rows <= SMALL:
        parser.error(f"--rows must be above {SMALL:,}")

    pages = ("page 1", "deep")
    http: dict[tuple[int, str], list[float]] = {}
    store: dict[tuple[int, str], list[float]] = {}
    with harness.services() as bench:
        org = harness.make_org()
        grow(bench.psycopg_url, org.org_id, 0, SMALL)
        big_db = f"{bench.pg_db}_big"
        copy_database(bench.pg_db, big_db)
        big_url = bench.database_url.rsplit("/", 1)[0] + f"/{big_db}"
        try:
            grow(
                big_url.replace("postgresql+psycopg://", "postgresql://"),
                org.org_id,
                SMALL,
                args.rows,
            )
            targets = [Target(SMALL, bench.database_url, ""), Target(args.rows, big_url, "")]
            for target in targets:
                target.cursor, target.deep_offset = deep_cursor(
                    target.database_url, org.org_id, args.deep
                )
                port = harness.free_port()
                target.base_url = f"http://127.0.0.1:{port}"
                cmd = harness.uvicorn_command(
                    "api.app:create_app", port, args.workers, factory=True
                )
                server = bench.start(
                    f"api-{target.size}", cmd, {"CONVEYOR_DATABASE_URL": target.database_url}
                )
                harness.wait_http(f"{target.base_url}/v1/health", proc=server)
            plan = deep_plan(targets[1], org.org_id, args.limit)
            harness.log(plan)

            from store import jobs as job_store
            from store.jobs import JobFilter

            flt = JobFilter(statuses=("completed",))
            sessions = {t.size: session_for(t.database_url) for t in targets}
            clients = {
                t.size: httpx.Client(base_url=t.base_url, headers=org.headers, timeout=30)
                for t in targets
            }
            warmup = max(5, args.requests // 10)
            for i in range(warmup + args.requests):
                for target in targets:
                    for page in pages:
                        params = {"status": "completed", "limit": str(args.limit)}
                        if page == "deep":
                            params["cursor"] = target.cursor
                        t0 = time.perf_counter()
                        response = clients[target.size].get("/v1/jobs", params=params)
                        t1 = time.perf_counter()
                        if response.status_code != 200:
                            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                        if len(response.json()["data"]) != args.limit:
                            raise RuntimeError(f"{page} at {target.size}: short page")
                        session = sessions[target.size]
                        t2 = time.perf_counter()
                        job_store.list_jobs(
                            session,
                            org.org_id,
                            flt,
                            limit=args.limit,
                            cursor=params.get("cursor"),
                        )
                        session.rollback()
                        t3 = time.perf_counter()
                        if i >= warmup:
                            http.setdefault((target.size, page), []).append((t1 - t0) * 1000)
                            store.setdefault((target.size, page), []).append((t3 - t2) * 1000)
            for client in clients.values():
                client.close()
            for session in sessions.values():
                session.close()
                session.get_bind().dispose()
        finally:
            for proc in list(bench.procs):
                bench.stop(proc)
            with psycopg.connect(harness.PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{big_db}" WITH (FORCE)')

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(
        f"list_scaling GET /v1/jobs?status=completed&limit={args.limit} "
        f"({args.requests} interleaved requests per page, one organisation owns every row)"
    )
    print(f"  {'table rows':>12} {'page':>24} {'http p50':>9} {'http p90':>9} {'store p50':>10}")
    for target in targets:
        for page in pages:
            key = (target.size, page)
            label = page if page == "page 1" else f"deep (row {target.deep_offset:,})"
            values = sorted(http[key])
            print(
                f"  {target.size:>12,} {label:>24} {med(values):7.2f}ms "
                f"{harness.percentile(values, 90):7.2f}ms {med(store[key]):8.2f}ms"
            )
    big, small = args.rows, SMALL
    ratios = {p: med(http[(big, p)]) / med(http[(small, p)]) for p in pages}
    store_ratios = {p: med(store[(big, p)]) / med(store[(small, p)]) for p in pages}
    deep_vs_first = med(http[(big, "deep")]) / med(http[(big, "page 1")])
    index_walk = "Index Scan" in plan and "Sort" not in plan
    print(
        f"  anchor = the same page at {small:,} rows. {big:,} vs {small:,}: "
        f"page 1 {ratios['page 1']:.2f}, deep {ratios['deep']:.2f} "
        f"(store level {store_ratios['page 1']:.2f}, {store_ratios['deep']:.2f}); "
        f"deep vs page 1 at {big:,}: {deep_vs_first:.2f}"
    )
    print(f"  deep page plan at {big:,}: {'index walk, no sort' if index_walk else plan}")
    ratio = max(ratios.values())
    print(f"  target  ratio <= 1.3 : {'met' if ratio <= 1.3 else 'MISSED'}")
    print(f"ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
