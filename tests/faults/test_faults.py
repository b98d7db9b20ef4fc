"""No accepted job is lost or stuck: Conveyor in its production shape (separate API, worker and
beat processes on a private PostgreSQL and a private Redis with append-only persistence) takes
short diagnostics jobs under load while a worker is SIGKILLed, Redis restarts, PostgreSQL stops
for 15 s, and the API dies between a job's insert and its send.

For each fault: every accepted (202) job ends terminal within 120 s of the fault's end and
completes exactly once (one result row), the API answers no 5xx but 503, and the recovery time
goes into the table printed at the end of the run (``-m faults``; ``-s`` prints it as it goes).
The crash-safety settings are short here (lease 6 s renewed every 2 s, sweep after 5 s every
2 s: ``harness.FAST_RECOVERY_ENV``) so the module takes a few minutes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import psutil
import pytest

from resources.backends.base import free_port
from tests.faults.conftest import record
from tests.faults.harness import (
    FaultReport,
    Load,
    Platform,
    assert_exactly_once,
    tally,
    utcnow,
)

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

DRAIN_SECONDS = 120  # every accepted job is terminal this long after the fault ends
RERUN_SECONDS = 60  # a job whose worker died runs again within this
FLOW_SECONDS = 10  # after Redis answers again, a new job completes within this
LONG_JOB = {"seconds": 3, "steps": 30}  # surely in flight when the fault strikes


def drain_and_report(
    platform: Platform,
    fault: str,
    load: Load,
    extra: list[str],
    recovery: float | None,
    measured: str,
) -> None:
    """Wait for every accepted job, record the table line, then assert: nothing lost, each
    completed exactly once, and no 5xx but 503 from the API."""
    accepted = [*load.accepted, *extra]
    rows, _ = platform.ledger().wait(accepted, timeout=DRAIN_SECONDS)
    completed, lost = tally(rows, accepted)
    note = f"{measured}; codes {dict(load.codes)}, slowest answer {load.slowest:.1f} s"
    if load.transport_errors:
        note += f", {load.transport_errors} refused"
    record(FaultReport(fault, len(accepted), completed, lost, recovery, note))
    assert not load.bad, f"the API answered other than 202/503: {load.bad[:5]}"
    assert_exactly_once(rows, accepted)


def sigkilled_worker_case(platform: Platform, fault: str, *, whole_main: bool) -> None:
    ledger = platform.ledger()
    worker = platform.processes["worker"]
    with Load(platform) as load:
        time.sleep(2)
        long_jobs = [platform.submit_accepted(**LONG_JOB) for _ in range(2)]
        ledger.wait_running(long_jobs[:1])
        in_flight = ledger.running(long_jobs)
        if whole_main:
            # The main process dies; a supervisor (systemd's control group, a container's
            # PID 1) then kills what is left of it and starts a new worker.
            worker.kill_main()
            worker.kill_all()
            killed_at = time.monotonic()
            platform.start_worker()
        else:
            children = worker.children()
            assert children, "the prefork worker has no pool process"
            for pid in children:
                psutil.Process(pid).kill()
            killed_at = time.monotonic()
        time.sleep(3)
    rows, rerun_at = ledger.wait(in_flight, ("completed",), timeout=RERUN_SECONDS + 30)
    recovery = None if rerun_at is None else rerun_at - killed_at
    drain_and_report(platform, fault, load, long_jobs, recovery, "kill → in-flight jobs done")
    assert rerun_at is not None and recovery is not None and recovery <= RERUN_SECONDS, (
        f"jobs in flight at the kill did not run again within {RERUN_SECONDS}s: {rows}"
    )
    for job_id in in_flight:
        assert rows[job_id].attempts >= 2, f"{job_id} did not run again: {rows[job_id]}"
    if not whole_main:
        assert worker.alive(), "the worker's main process died with its pool child"


def test_worker_main_process_sigkilled_then_restarted(platform: Platform) -> None:
    """SIGKILL of the worker's main process mid-load: each job in flight runs again (lease
    lapse, reaper re-queue) within 60 s of the supervisor's restart."""
    sigkilled_worker_case(platform, "1a worker main process SIGKILL", whole_main=True)


def test_worker_pool_child_sigkilled(platform: Platform) -> None:
    """SIGKILL of the pool child running a job: the job runs again (reject_on_worker_lost)."""
    sigkilled_worker_case(platform, "1b worker pool child SIGKILL", whole_main=False)


def test_redis_restart_mid_load(platform: Platform) -> None:
    """Redis stops for ~3 s and comes back on the same port and append-only file: beat, the
    worker and the API stay up, and a new job completes within 10 s of Redis answering."""
    ledger = platform.ledger()
    survivors = {name: platform.processes[name] for name in ("api", "worker", "beat")}
    with Load(platform) as load:
        time.sleep(2)
        # A job that finishes while Redis is down (its ack waits for the reconnect); the other
        # pool process stays free, so the consumer is polling Redis when it goes.
        across = [platform.submit_accepted(seconds=2, steps=10)]
        ledger.wait_running(across)
        platform.redis.stop()
        time.sleep(3)
        answering_at = platform.redis.start()
        probe = platform.submit_accepted(timeout=FLOW_SECONDS)
        time.sleep(2)
    rows, flowing_at = ledger.wait([probe], ("completed",), timeout=DRAIN_SECONDS)
    recovery = None if flowing_at is None else flowing_at - answering_at
    drain_and_report(
        platform,
        "2  Redis restart (down 3 s)",
        load,
        [probe, *across],
        recovery,
        "Redis up → new job done",
    )
    dead = [name for name, process in survivors.items() if not process.alive()]
    assert not dead, f"exited on the Redis restart: {dead}\n{platform.log_tail(dead[0])}"
    assert recovery is not None and recovery <= FLOW_SECONDS, (
        f"jobs did not flow again within {FLOW_SECONDS}s of Redis answering: {rows}"
    )
    # Beat still holds (or took back) its lock and keeps scheduling.
    lock = platform.redis.client().get("conveyor:redbeat::lock")
    assert lock is not None, platform.log_tail("beat")


def _outage_probe(platform: Platform, job_id: str, stop: threading.Event) -> list[str]:
    """Call authenticated routes (and a create) every 0.3 s; return what was not a proper 503."""
    wrong: list[str] = []
    # A connection per request: no keep-alive connection closed by the server under our feet.
    with httpx.Client(
        base_url=platform.base_url,
        headers=platform.headers,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        while not stop.is_set():
            for method, path, body in (
                ("GET", "/v1/jobs", None),
                ("GET", f"/v1/jobs/{job_id}", None),
                ("POST", "/v1/diagnostics/sleep", {"seconds": 0.1, "steps": 1}),
            ):
                try:
                    response = client.request(method, path, json=body)
                    error: Any = response.json().get("error")
                except (httpx.HTTPError, ValueError) as exc:
                    wrong.append(f"{method} {path}: {exc!r}")
                    continue
                if not (
                    response.status_code == 503
                    and isinstance(error, dict)
                    and error.get("code") == "unavailable"
                    and "retry-after" in response.headers
                ):
                    wrong.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            stop.wait(0.3)
    return wrong


def test_postgres_stopped_for_15_s_with_a_backlog(platform: Platform) -> None:
    """PostgreSQL stops for 15 s with jobs queued: the API answers 503 ``unavailable`` (with
    Retry-After) on every route meanwhile, and every queued job completes after."""
    ledger = platform.ledger()
    backlog = [platform.submit_accepted(seconds=0.5, steps=2) for _ in range(30)]
    platform.postgres.stop("fast")
    stop = threading.Event()
    wrong: list[str] = []
    probe = threading.Thread(
        target=lambda: wrong.extend(_outage_probe(platform, backlog[0], stop)), daemon=True
    )
    probe.start()
    time.sleep(15)
    stop.set()
    probe.join(timeout=60)
    platform.postgres.start()
    back_at = time.monotonic()
    rows, drained_at = ledger.wait(backlog, timeout=DRAIN_SECONDS)
    completed, lost = tally(rows, backlog)
    recovery = None if drained_at is None else drained_at - back_at
    record(
        FaultReport(
            "3  PostgreSQL stopped 15 s, 30 queued",
            len(backlog),
            completed,
            lost,
            recovery,
            f"PostgreSQL up → backlog done; {len(wrong)} non-503 answers during the outage",
        )
    )
    assert not wrong, f"answers during the outage other than 503 unavailable: {wrong[:5]}"
    assert_exactly_once(rows, backlog)


def test_api_sigkilled_between_insert_and_send(platform: Platform) -> None:
    """An API process dies after committing a job's row and before sending its message (the
    window held open by CONVEYOR_TEST_PAUSE_BEFORE_SEND_SECONDS): the sweeper sends the
    orphan and it completes."""
    port = free_port()
    paused = platform.start(
        "api#paused",
        "api",
        env={"CONVEYOR_API_PORT": str(port), "CONVEYOR_TEST_PAUSE_BEFORE_SEND_SECONDS": "60"},
    )
    base = f"http://127.0.0.1:{port}"
    platform.wait_healthy(base)
    since = utcnow()
    answer: list[object] = []

    def submit() -> None:
        try:
            answer.append(platform.submit(base, seconds=0.1, steps=1).status_code)
        except httpx.TransportError as exc:
            answer.append(exc)

    request = threading.Thread(target=submit, daemon=True)
    request.start()
    deadline = time.monotonic() + 30
    orphans: list[str] = []
    while not orphans and time.monotonic() < deadline and not answer:
        orphans = platform.ledger().created_since(since)
        time.sleep(0.05)
    assert not answer, (
        f"the API answered {answer} before it was killed: it should hold the request between "
        "the commit and the send for CONVEYOR_TEST_PAUSE_BEFORE_SEND_SECONDS"
    )
    assert len(orphans) == 1, f"expected one committed job row, found {orphans}"
    paused.kill_all()
    killed_at = time.monotonic()
    request.join(timeout=30)
    assert answer and isinstance(answer[0], httpx.TransportError), answer
    rows, done_at = platform.ledger().wait(orphans, timeout=DRAIN_SECONDS)
    completed, lost = tally(rows, orphans)
    recovery = None if done_at is None else done_at - killed_at
    record(
        FaultReport(
            "4  API SIGKILL between insert and send",
            0,
            completed,
            lost,
            recovery,
            "kill → orphan done",
        )
    )
    assert_exactly_once(rows, orphans)


def test_beat_sigkilled_then_restarted_takes_over_its_lock_promptly(platform: Platform) -> None:
    """A beat SIGKILLed leaves its redbeat lock behind: the restarted beat takes it once it
    lapses (CONVEYOR_BEAT_LOCK_TIMEOUT, 20 s), not after redbeat's default 300 s."""
    client = platform.redis.client()
    ttl = client.ttl("conveyor:redbeat::lock")
    assert 0 < ttl <= 20, f"the beat lock's TTL is {ttl} s"
    log = platform.logs / "beat.log"
    taken_before = log.read_text().count("beat: Acquired lock")
    platform.processes["beat"].kill_all()
    killed_at = time.monotonic()
    platform.start("beat", "beat")
    taken_at = None
    while time.monotonic() - killed_at < 60 and taken_at is None:
        if log.read_text().count("beat: Acquired lock") > taken_before:
            taken_at = time.monotonic()
        time.sleep(0.2)
    recovery = None if taken_at is None else taken_at - killed_at
    record(
        FaultReport(
            "5  beat SIGKILL, restarted at once",
            0,
            0,
            0,
            recovery,
            "kill → new beat holds the lock",
        )
    )
    assert recovery is not None and recovery <= 20 + 5 + 10, platform.log_tail("beat")
