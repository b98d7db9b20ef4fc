"""Alert evaluation cost: one beat run over ``--rules`` error-rate rules, with 10k jobs in the
table vs ``--rows`` (default 1M) jobs, on PostgreSQL. The error-rate measure is one range scan of
``ix_jobs_org_kind_created`` over the window, so the history outside the window must not make
it slower. The anchor, measured in the same run at each size: the same counts as one hand-written
SQL query per rule on a raw psycopg connection (no ORM, no state write, no transaction per rule).

All jobs belong to the organisation that owns the rules (the hardest case): the history is
one second apart ending a day ago; the window (5 min) holds 300 recent jobs, 10 % failed.

    .venv/bin/python benchmarks/alerts.py [--rows 1000000] [--rules 200] [--runs 5]

Needs PostgreSQL and Redis on 127.0.0.1 (creates and drops its own database). Last line:
``ratio=<run time at --rows ÷ run time at 10k>`` (target ≤ 1.3) and the per-rule cost beside
the anchor's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from benchmarks import harness

SMALL = 10_000
RECENT = 300

HISTORY_SQL = """
INSERT INTO jobs (id, org_id, kind, status, input, progress, attempts, created_at)
SELECT gen_random_uuid()::text, %(org)s, 'diagnostics',
       CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'completed' END, '{}'::jsonb, '{}'::jsonb, 1,
       now() - interval '1 day' - i * interval '1 second'
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS i
"""
RECENT_SQL = """
INSERT INTO jobs (id, org_id, kind, status, input, progress, attempts, created_at)
SELECT gen_random_uuid()::text, %(org)s, 'diagnostics',
       CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'completed' END, '{}'::jsonb, '{}'::jsonb, 1,
       now() - i * interval '500 milliseconds'
FROM generate_series(1, %(n)s) AS i
"""
ANCHOR_SQL = """
SELECT count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status IN ('completed', 'failed'))
FROM jobs WHERE org_id = %(org)s AND kind = 'diagnostics'
  AND created_at >= now() - interval '300 seconds'
"""


def conninfo(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def grow(conn: psycopg.Connection, org_id: str, have: int, want: int) -> None:
    for start in range(have + 1, want + 1, 200_000):
        stop = min(start + 200_000 - 1, want)
        conn.execute(HISTORY_SQL, {"org": org_id, "start": start, "stop": stop})
    conn.execute("VACUUM ANALYZE jobs")


def make_rules(org_id: str, n: int) -> None:
    from alerts import service
    from alerts.schemas import AlertCreate
    from store.db import session_scope

    condition = {"type": "error_rate", "kind": "diagnostics", "ratio": 0.5, "window_seconds": 300}
    with session_scope() as session:
        for i in range(n):
            body = AlertCreate.model_validate({"name": f"r{i}", "condition": condition})
            service.create(session, org_id, body)


def measure(conn: psycopg.Connection, org_id: str, rules: int, runs: int) -> tuple[float, float]:
    """Median seconds of one evaluation run of every rule, and of the anchor's queries."""
    from alerts.jobs import evaluate_all

    ours, anchor = [], []
    for _ in range(runs):
        started = time.perf_counter()
        totals = evaluate_all()
        ours.append(time.perf_counter() - started)
        assert totals["evaluated"] == rules and totals["errors"] == 0, totals
        started = time.perf_counter()
        for _ in range(rules):
            conn.execute(ANCHOR_SQL, {"org": org_id}).fetchone()
        anchor.append(time.perf_counter() - started)
    return statistics.median(ours), statistics.median(anchor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with harness.services() as bench:
        org = harness.make_org()
        make_rules(org.org_id, args.rules)
        with psycopg.connect(conninfo(bench.database_url), autocommit=True) as conn:
            conn.execute(RECENT_SQL, {"org": org.org_id, "n": RECENT})
            grow(conn, org.org_id, 0, SMALL)
            small, small_anchor = measure(conn, org.org_id, args.rules, args.runs)
            harness.log(f"grow to {args.rows:,} jobs …")
            grow(conn, org.org_id, SMALL, args.rows)
            big, big_anchor = measure(conn, org.org_id, args.rules, args.runs)
    for label, ours, anchor in (("10k", small, small_anchor), (f"{args.rows:,}", big, big_anchor)):
        print(
            f"{label:>10} jobs: one run of {args.rules} rules {ours * 1000:.1f} ms "
            f"({ours / args.rules * 1000:.2f} ms/rule); anchor raw SQL "
            f"{anchor / args.rules * 1000:.2f} ms/rule; ours/anchor {ours / anchor:.1f}"
        )
    print(f"ratio={big / small:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
