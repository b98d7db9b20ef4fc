"""Queue overhead: N ``diagnostics`` no-op jobs through Conveyor's full job path vs N raw Celery
no-op tasks, same broker, same worker process and settings, same run.

Conveyor's path per job: validate + insert the row + commit, enqueue
(``jobs.service.create_job``, sent by the outbox after the commit), then in the worker the
compare-and-set to running, the handler (one cancel check, one progress write), the result item
and the transition to completed. The raw task only increments a Redis counter so its completion
can be observed.
Both sides are timed from the first submission to the last completion, the submitter running
while the worker consumes. ``--batch N`` submits the Conveyor jobs N to a transaction with
``jobs.service.create_jobs`` (what ``JobTask.submit_many`` does: bulk submits) instead of one
job per transaction; the raw side sends one task at a time either way (Celery has no cheaper
bulk send).

    .venv/bin/python benchmarks/queue_overhead.py [--n 5000] [--rounds 5] [--batch 0]
        [--pool prefork] [--concurrency 2]

Needs PostgreSQL and Redis on 127.0.0.1 (creates and drops its own database). Prints each
round's ratio, their median and spread, and the load average before and after. Last line:
``ratio=<median of the rounds' conveyor jobs/s ÷ raw tasks/s>`` (target ≥ 0.7).

``--metrics-compare`` measures what metrics cost the job path instead: the same Conveyor jobs
on a worker with ``CONVEYOR_METRICS_ENABLED=0`` (the anchor) and on one with metrics on (the
signal handlers, the per-process flush thread, the Redis totals), in alternating rounds of one
run: two workers stay up and take turns on the queue in many short ABBA rounds, after an untimed
warm-up of each. Last line:
``metrics_ratio=<jobs/s with metrics ÷ jobs/s without>`` (target ≥ 0.97).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness

NOOP_INPUT = {"seconds": 0, "steps": 1}


def submit_noop_jobs(org_id: str, n: int, batch: int = 0) -> None:
    """Submit ``n`` no-op diagnostics jobs: one per transaction (``batch`` 0: what every REST
    route and Python's ``submit`` do) or ``batch`` to a transaction (``create_jobs``, what
    ``JobTask.submit_many`` does)."""
    from jobs.service import create_job, create_jobs
    from store.db import session_scope
    from workers import outbox

    for first in range(0, n, max(batch, 1)):
        with session_scope() as session:
            session.info[outbox.ON_SEND_FAILURE] = "reject"
            if batch > 0:
                size = min(batch, n - first)
                create_jobs(session, "diagnostics", org_id, [NOOP_INPUT] * size)
            else:
                create_job(session, "diagnostics", org_id, dict(NOOP_INPUT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="jobs and raw tasks (each)")
    parser.add_argument("--pool", default="prefork", help="worker pool: prefork, threads …")
    parser.add_argument("--concurrency", type=int, default=2, help="worker concurrency")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (n split)")
    parser.add_argument(
        "--batch", type=int, default=0, help="Conveyor jobs per transaction (0: one per job)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per side, seconds")
    parser.add_argument(
        "--metrics-compare",
        action="store_true",
        help="compare Conveyor jobs with metrics on vs off (instead of raw Celery vs Conveyor)",
    )
    args = parser.parse_args()

    with harness.services() as bench:
        import redis
        from sqlalchemy import func, select

        from benchmarks.bench_tasks import DONE_KEY
        from cli.main import worker_command
        from store.db import session_scope
        from store.models import Job
        from workers.app import celery_app

        celery_app.loader.import_default_modules()
        broker = redis.Redis.from_url(bench.broker_url)

        # The worker `conveyor worker --queues maintenance` runs, with this benchmark's app.
        cmd = worker_command(None, ["maintenance"], args.concurrency)
        cmd[cmd.index("workers.app")] = "benchmarks.bench_tasks"
        cmd[cmd.index("-P") + 1] = args.pool
        cmd[cmd.index("-n") + 1] = f"bench-{bench.redis_db}@%h"
        cmd[cmd.index("-l") + 1] = "WARNING"

        if args.metrics_compare:
            return compare_metrics(args, bench, cmd)
        worker = start_worker(bench, cmd, "worker", {})
        harness.log(f"worker up: pool={args.pool} concurrency={args.concurrency}")

        def wait(done: Callable[[], int], n: int, what: str, started: float) -> float:
            while True:
                count = done()
                if count >= n:
                    return time.perf_counter()
                if time.perf_counter() - started > args.timeout:
                    raise TimeoutError(f"{what}: {count}/{n} done after {args.timeout} s")
                if worker.poll() is not None:
                    harness.log(bench.log_tail("worker"))
                    raise RuntimeError("the worker died")
                time.sleep(0.05)

        cpu = {"raw_worker": 0.0, "raw_submit": 0.0, "ours_worker": 0.0, "ours_submit": 0.0}

        def run_raw(n: int, count: bool = True) -> float:
            broker.delete(DONE_KEY)
            w0, p0 = harness.cpu_seconds(worker.pid), time.process_time()
            t0 = time.perf_counter()
            for _ in range(n):
                celery_app.send_task("bench.noop", queue="maintenance")
            harness.log(f"  raw: {n} sent in {time.perf_counter() - t0:.2f} s")
            t1 = wait(lambda: int(broker.get(DONE_KEY) or 0), n, "raw", t0)
            if count:
                cpu["raw_worker"] += harness.cpu_seconds(worker.pid) - w0
                cpu["raw_submit"] += time.process_time() - p0
            return t1 - t0

        def run_conveyor(n: int, count: bool = True) -> float:
            org = harness.make_org()
            w0, p0 = harness.cpu_seconds(worker.pid), time.process_time()

            def finished() -> int:
                with session_scope() as session:
                    rows = session.execute(
                        select(Job.status, func.count())
                        .where(Job.org_id == org.org_id)
                        .group_by(Job.status)
                    ).all()
                counts = {status: count for status, count in rows}
                bad = {s: c for s, c in counts.items() if s in ("failed", "cancelled")}
                if bad:
                    raise RuntimeError(f"jobs did not complete: {bad}")
                return int(counts.get("completed", 0))

            t0 = time.perf_counter()
            submit_noop_jobs(org.org_id, n, args.batch)
            harness.log(f"  conveyor: {n} submitted in {time.perf_counter() - t0:.2f} s")
            t1 = wait(finished, n, "conveyor", t0)
            if count:
                cpu["ours_worker"] += harness.cpu_seconds(worker.pid) - w0
                cpu["ours_submit"] += time.process_time() - p0
            return t1 - t0

        run_raw(args.warmup, count=False)
        run_conveyor(args.warmup, count=False)
        # Alternate the two sides in rounds so a change in the machine's load hits both alike.
        sizes = [
            args.n // args.rounds + (1 if i < args.n % args.rounds else 0)
            for i in range(args.rounds)
        ]
        harness.log(f"warmed up; measuring {args.n} of each in rounds of {sizes}")
        load_before = os.getloadavg()
        raw_s = ours_s = 0.0
        ratios = []
        for i, size in enumerate(sizes):  # ABBA: each side goes first in every other round
            took = {}
            for side in ("raw", "ours") if i % 2 == 0 else ("ours", "raw"):
                took[side] = run_raw(size) if side == "raw" else run_conveyor(size)
            raw_s, ours_s = raw_s + took["raw"], ours_s + took["ours"]
            ratios.append(took["raw"] / took["ours"])
            harness.log(
                f"round {i + 1}: raw celery {size / took['raw']:.0f} tasks/s, "
                f"conveyor {size / took['ours']:.0f} jobs/s, ratio {ratios[-1]:.3f}"
            )
        load_after = os.getloadavg()
        raw, ours = args.n / raw_s, args.n / ours_s

    ratio = statistics.median(ratios)
    submit = f"batches of {args.batch}" if args.batch > 0 else "one job per transaction"
    print(
        f"queue_overhead n={args.n} rounds={args.rounds} pool={args.pool} "
        f"concurrency={args.concurrency} submit={submit}"
    )
    print(
        f"  load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.2f}' for x in load_after)}"
    )
    print(f"  anchor  raw Celery no-op tasks : {raw:8.1f} tasks/s")
    print(f"  ours    Conveyor no-op jobs    : {ours:8.1f} jobs/s")
    per = {k: v * 1000 / args.n for k, v in cpu.items()}
    print(
        f"  CPU ms per item (worker / submitter): raw {per['raw_worker']:.2f} / "
        f"{per['raw_submit']:.2f}, ours {per['ours_worker']:.2f} / {per['ours_submit']:.2f} "
        "(PostgreSQL's own CPU and disk flushes not included)"
    )
    print(
        f"  rounds' ratios: {', '.join(f'{r:.3f}' for r in ratios)}; median {ratio:.3f}, "
        f"spread {min(ratios):.3f}-{max(ratios):.3f}; all rounds pooled {ours / raw:.3f}"
    )
    print(f"  target  median ratio >= 0.7 : {'met' if ratio >= 0.7 else 'MISSED'}")
    print(f"ratio={ratio:.3f}")
    return 0


def start_worker(bench: harness.Bench, cmd: list[str], name: str, env: dict[str, str]) -> Any:
    """Start the benchmark's worker process and wait until it answers a ping."""
    from workers.app import celery_app

    proc = bench.start(name, cmd, env)
    node = cmd[cmd.index("-n") + 1].replace("%h", socket.gethostname())
    deadline = time.monotonic() + 60
    while not celery_app.control.ping(destination=[node], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            harness.log(bench.log_tail(name))
            raise RuntimeError(f"the worker {node} did not start")
    return proc


def compare_metrics(args: argparse.Namespace, bench: harness.Bench, cmd: list[str]) -> int:
    """Conveyor jobs with worker metrics off (the anchor) and on, same run.

    Both workers stay up for the whole run; only one consumes the queue at a time (Celery's
    ``cancel_consumer``/``add_consumer``), so the sides swap in a fraction of a second and many
    short rounds in ABBA order put each pair of measurements under nearly the same machine load.
    The "on" worker flushes every second (5x the default), so its flushes land in its own
    rounds and their cost is counted on its side.
    """
    from sqlalchemy import func, select

    from store.db import session_scope
    from store.models import Job
    from workers.app import celery_app

    host = socket.gethostname()
    nodes, procs = {}, {}
    for mode, enabled in (("off", "0"), ("on", "1")):
        mode_cmd = list(cmd)
        mode_cmd[mode_cmd.index("-n") + 1] = f"bench-{bench.redis_db}-{mode}@%h"
        nodes[mode] = f"bench-{bench.redis_db}-{mode}@{host}"
        env = {"CONVEYOR_METRICS_ENABLED": enabled, "CONVEYOR_METRICS_FLUSH_SECONDS": "1"}
        procs[mode] = start_worker(bench, mode_cmd, f"worker-{mode}", env)
    harness.log(f"workers up: pool={args.pool} concurrency={args.concurrency} x 2 (off, on)")

    def consume_with(mode: str) -> None:
        other = "on" if mode == "off" else "off"
        control = celery_app.control
        control.cancel_consumer("maintenance", destination=[nodes[other]], reply=True, timeout=5)
        control.add_consumer("maintenance", destination=[nodes[mode]], reply=True, timeout=5)

    def run(n: int, mode: str) -> float:
        consume_with(mode)
        org = harness.make_org()
        t0 = time.perf_counter()
        submit_noop_jobs(org.org_id, n, args.batch)  # as the default mode's Conveyor side
        while True:
            with session_scope() as session:
                done = session.scalar(
                    select(func.count()).where(Job.org_id == org.org_id, Job.status == "completed")
                )
            if (done or 0) >= n:
                return time.perf_counter() - t0
            if any(proc.poll() is not None for proc in procs.values()):
                raise RuntimeError("a worker died")
            if time.perf_counter() - t0 > args.timeout:
                raise TimeoutError(f"{done}/{n} jobs done after {args.timeout} s")
            time.sleep(0.01)

    for mode in ("off", "on"):
        run(args.warmup, mode)
    sizes = [
        args.n // args.rounds + (1 if i < args.n % args.rounds else 0) for i in range(args.rounds)
    ]
    harness.log(f"warmed up; measuring {args.n} jobs a side in {args.rounds} rounds (ABBA)")
    seconds = {"off": 0.0, "on": 0.0}
    cpu = {"off": 0.0, "on": 0.0}  # each worker's CPU (main process and pool children)
    pair_ratios = []
    for i, size in enumerate(sizes):
        took = {}
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            cpu0 = harness.cpu_seconds(procs[mode].pid)
            took[mode] = run(size, mode)
            cpu[mode] += harness.cpu_seconds(procs[mode].pid) - cpu0
            seconds[mode] += took[mode]
        pair_ratios.append(took["off"] / took["on"])
    off, on = args.n / seconds["off"], args.n / seconds["on"]
    ratio = on / off
    print(
        f"queue_overhead --metrics-compare n={args.n} rounds={args.rounds} pool={args.pool} "
        f"concurrency={args.concurrency}"
    )
    print(f"  anchor  Conveyor jobs, metrics off : {off:8.1f} jobs/s")
    print(f"  ours    Conveyor jobs, metrics on  : {on:8.1f} jobs/s")
    print(
        f"  median of the {len(pair_ratios)} round pairs' ratios: "
        f"{statistics.median(pair_ratios):.3f}"
    )
    print(
        f"  worker CPU ms per job: metrics off {cpu['off'] * 1000 / args.n:.2f}, "
        f"on {cpu['on'] * 1000 / args.n:.2f}"
    )
    print(f"  target  ratio >= 0.97 : {'met' if ratio >= 0.97 else 'MISSED'}")
    print(f"metrics_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
