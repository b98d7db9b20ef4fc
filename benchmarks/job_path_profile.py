"""Round trips per job on Conveyor's job path: SQL statements (with BEGIN/COMMIT) and Redis
commands, counted on the submit side and on the worker side, in one process.

The submit side is ``jobs.service.create_job`` in its own transaction (what every REST route and
Python's ``submit`` do), one job at a time, then ``create_jobs`` (what ``submit_many`` calls)
with ``--batch`` jobs per transaction; the worker side is the ``diagnostics.run`` task body
(``tasks.runner.run_job``: start, handler, completion with metering) run in-process on each job's
id, as a worker's pool child runs it. The broker's own reads (the worker's fetch and ack) are the
same for a raw Celery task and are not part of either count.

    .venv/bin/python benchmarks/job_path_profile.py [--n 200] [--batch 50] [--metering 0|1]

Needs PostgreSQL and Redis on 127.0.0.1 (creates and drops its own database). Prints one line per
side: statements per job by kind (``SELECT``/``INSERT``/``UPDATE``/``WITH``/``BEGIN``/``COMMIT``
…) and Redis commands per job.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness

NOOP_INPUT = {"seconds": 0, "steps": 1}


class Counts:
    """SQL statements by their first word and Redis commands, while :meth:`counting`."""

    def __init__(self) -> None:
        self.sql: Counter[str] = Counter()
        self.redis: Counter[str] = Counter()
        self.on = False

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.sql.clear()
        self.redis.clear()
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def install(self) -> None:
        import redis.connection
        from sqlalchemy import event

        from store.db import get_autocommit_engine, get_engine, get_relaxed_autocommit_engine

        counts = self

        def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            if counts.on:
                counts.sql[sql.lstrip().split(None, 1)[0].upper()] += 1

        def begin(_conn: Any) -> None:
            if counts.on:
                counts.sql["BEGIN"] += 1

        def commit(_conn: Any) -> None:
            if counts.on:
                counts.sql["COMMIT"] += 1

        def rollback(_conn: Any) -> None:
            if counts.on:
                counts.sql["ROLLBACK"] += 1

        for engine in (get_engine(), get_autocommit_engine(), get_relaxed_autocommit_engine()):
            event.listen(engine, "before_cursor_execute", statement)
        event.listen(get_engine(), "begin", begin)
        event.listen(get_engine(), "commit", commit)
        event.listen(get_engine(), "rollback", rollback)

        original: Any = redis.connection.AbstractConnection.send_packed_command

        def send(self: Any, command: Any, check_health: bool = True) -> None:
            if counts.on:  # one write per command or per pipeline: one round trip
                counts.redis["round trips"] += 1
            original(self, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]

    def line(self, what: str, n: int) -> str:
        sql = sum(self.sql.values())
        parts = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(self.sql.items()))
        return (
            f"{what:<34} SQL {sql / n:5.2f} per job ({parts}); "
            f"Redis {self.redis['round trips'] / n:.2f} round trips per job"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--metering", default="1", choices=["0", "1"])
    args = parser.parse_args()
    os.environ["CONVEYOR_BILLING_METERING"] = args.metering
    os.environ["CONVEYOR_METRICS_ENABLED"] = "0"  # its flush thread is not the job path

    with harness.services():
        from jobs.service import create_job, create_jobs
        from store.db import session_scope
        from workers import outbox
        from workers.app import celery_app

        celery_app.loader.import_default_modules()
        task = celery_app.tasks["diagnostics.run"]
        counts = Counts()
        counts.install()
        org = harness.make_org()

        def submit_one() -> str:
            with session_scope() as session:
                session.info[outbox.ON_SEND_FAILURE] = "reject"
                return create_job(session, "diagnostics", org.org_id, dict(NOOP_INPUT)).id

        def run(job_ids: list[str]) -> None:
            for job_id in job_ids:
                result = task.apply(args=[job_id], task_id=job_id)
                if result.failed():
                    raise RuntimeError(f"job {job_id}: {result.result!r}")

        def measure(what: str, work: Callable[[], Any]) -> Any:
            with counts.counting():
                out = work()
            print(counts.line(what, args.n))
            return out

        for _ in range(5):  # warm-up: imports, pools, statement caches
            run([submit_one()])
        ids = measure(
            "submit (create_job, one each)", lambda: [submit_one() for _ in range(args.n)]
        )
        measure("worker (start, handler, complete)", lambda: run(ids))

        def submit_batches() -> list[str]:
            out: list[str] = []
            for start in range(0, args.n, args.batch):
                size = min(args.batch, args.n - start)
                with session_scope() as session:
                    session.info[outbox.ON_SEND_FAILURE] = "reject"
                    jobs = create_jobs(
                        session, "diagnostics", org.org_id, [dict(NOOP_INPUT)] * size
                    )
                out += [job.id for job in jobs]
            return out

        ids = measure(f"create_jobs ({args.batch} a transaction)", submit_batches)
        run(ids)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
