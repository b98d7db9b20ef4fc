"""``conveyor up`` keeps its processes running: a child that dies is restarted with exponential
backoff and a log line, and an external Redis that blinks does not stop the platform."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import httpx
import psutil
import pytest

from resources.backends.base import free_port
from tests.faults.harness import REPO, PrivateRedis, base_env, conveyor, private_redis
from tests.helpers import ServiceProcess
from workers.supervisor import Child, Supervisor

pytestmark = pytest.mark.faults


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_killed_child_is_restarted_and_a_crashing_one_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeper = Child("sleeper", _python("import time; time.sleep(60)"))
    crasher = Child("crasher", _python("raise SystemExit(3)"))
    supervisor = Supervisor([sleeper, crasher], backoff_base=0.2, backoff_max=0.8)
    starts: list[float] = []
    try:
        with caplog.at_level(logging.WARNING, logger="conveyor.up"):
            supervisor.start()
            first_pid = sleeper.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            deadline = time.monotonic() + 6
            last_crasher_pid = crasher.pid
            while time.monotonic() < deadline:
                supervisor.poll()
                if crasher.pid != last_crasher_pid:
                    starts.append(time.monotonic())
                    last_crasher_pid = crasher.pid
                time.sleep(0.02)
        assert sleeper.running() and sleeper.pid != first_pid
        assert sleeper.restarts == 1
        # The crasher was started again and again, each wait longer, capped at 0.8 s.
        gaps = [later - earlier for earlier, later in pairwise(starts)]
        assert len(gaps) >= 4, gaps
        assert gaps[0] + 0.2 < gaps[1], gaps  # 0.4 s, then 0.8 s (the cap) after each exit
        assert all(gap < 1.3 for gap in gaps), gaps
        messages = [record.getMessage() for record in caplog.records]
        assert any("sleeper" in m and "signal SIGKILL" in m and "restarting" in m for m in messages)
        assert any("crasher" in m and "exit code 3" in m for m in messages)
    finally:
        supervisor.stop(grace=5)
    assert not sleeper.running() and not crasher.running()


def test_the_delay_doubles_up_to_the_cap() -> None:
    supervisor = Supervisor([], backoff_base=1.0, backoff_max=30.0)
    assert [supervisor.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.fixture
def external_redis() -> Iterator[PrivateRedis]:
    with private_redis("cvy_up_redis_") as server:
        yield server


def _child_running(up: ServiceProcess, word: str) -> psutil.Process | None:
    for child in psutil.Process(up.pid).children():
        try:
            if word in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_conveyor_up_restarts_a_killed_child_and_rides_out_a_redis_blink(
    external_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A real ``conveyor up`` (SQLite store, an external Redis as its broker): SIGKILL its beat,
    a new beat appears; stop Redis for 8 s, the platform stays up and runs a job after."""
    api_port = free_port()
    env = base_env(tmp_path / "data")
    env.update(
        CONVEYOR_BROKER_URL=external_redis.url,
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_FLOWER_PORT=str(free_port()),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_WORKER_CONCURRENCY="1",
    )
    log = tmp_path / "up.log"
    up = ServiceProcess(conveyor("up"), env=env, log=log, cwd=REPO)
    base = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 180
        key = ""
        while time.monotonic() < deadline and not key:
            key = next((w for w in log.read_text().split() if w.startswith("cvy_live_")), "")
            time.sleep(0.2)
        assert key, log.read_text()[-3000:]
        beat = None
        while time.monotonic() < deadline and beat is None:
            beat = _child_running(up, "beat")
            time.sleep(0.2)
        assert beat is not None, log.read_text()[-3000:]
        beat.kill()
        restarted = None
        restart_deadline = time.monotonic() + 15
        while time.monotonic() < restart_deadline:
            restarted = _child_running(up, "beat")
            if restarted is not None and restarted.pid != beat.pid:
                break
            time.sleep(0.2)
        assert restarted is not None and restarted.pid != beat.pid, log.read_text()[-3000:]
        assert "beat (pid" in log.read_text() and "restarting it in" in log.read_text()

        external_redis.stop()
        time.sleep(8)
        external_redis.start()
        assert up.alive(), log.read_text()[-3000:]
        headers = {"Authorization": f"Bearer {key}"}
        job_id = ""
        while time.monotonic() < deadline and not job_id:
            try:
                answer = httpx.post(
                    f"{base}/v1/diagnostics/sleep",
                    json={"seconds": 0.1, "steps": 1},
                    headers=headers,
                    timeout=30,
                )
                if answer.status_code == 202:
                    job_id = answer.json()["id"]
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert job_id, log.read_text()[-3000:]
        status = ""
        while time.monotonic() < deadline and status not in ("completed", "failed"):
            status = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()[
                "status"
            ]
            time.sleep(0.3)
        assert status == "completed", log.read_text()[-3000:]
        assert up.alive()
    finally:
        up.stop(timeout=60)
