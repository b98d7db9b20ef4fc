"""The fault-injection harness: private PostgreSQL and Redis servers that a test can stop and
start, Conveyor's real processes (``conveyor migrate | api | worker | beat``) against them, an
HTTP load generator, and a ledger that reads every accepted job's fate from the store.

Servers and processes are real; nothing of Conveyor's own is mocked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from resources.backends.base import free_port
from resources.backends.proc import chown_tree, run
from tests.helpers import ServiceProcess

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("completed", "failed", "cancelled")

# Short crash-safety timings so the module runs in minutes; the production defaults are in
# config/settings.py (lease 45 s renewed every 10 s, sweep after 60 s every 15 s).
FAST_RECOVERY_ENV = {
    "CONVEYOR_JOB_LEASE_SECONDS": "6",
    "CONVEYOR_JOB_LEASE_RENEW_SECONDS": "2",
    "CONVEYOR_SWEEP_QUEUED_AFTER_SECONDS": "5",
    "CONVEYOR_SWEEP_INTERVAL_SECONDS": "2",
    "CONVEYOR_REAPER_GRACE_SECONDS": "1",
}


def scratch_dir(prefix: str) -> Path:
    """A directory under /tmp that the ``postgres`` OS user can reach (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class PrivatePostgres:
    """A PostgreSQL cluster of our own: ``initdb`` in ``root``, a free port, trust auth on
    127.0.0.1. Run as the ``postgres`` OS user when we are root (initdb refuses root)."""

    os_user = "postgres"

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin_dir = root, bin_dir
        self.data, self.sockets = root / "data", root / "sock"
        self.port = free_port()

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def init(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        chown_tree(self.root, self.os_user)
        run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "-A",
                "trust",
            ],
            user=self.os_user,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                # Stopped cleanly by the tests: durability of an OS crash is not under test.
                "fsync = off\nfull_page_writes = off\nshared_buffers = '32MB'\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            user=self.os_user,
            timeout=90,
        )

    def stop(self, mode: str = "fast") -> None:
        run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            user=self.os_user,
            ok_codes=(0, 1),
            timeout=90,
        )

    def url(self, database: str = "conveyor", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"


class PrivateRedis:
    """A ``redis-server`` of our own with ``appendonly yes``; restarted on the same port and
    directory, it comes back with what it had."""

    def __init__(self, root: Path, binary: str) -> None:
        self.root, self.binary = root, binary
        self.port = free_port()
        self.process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> float:
        """Start it and return the monotonic time it first answered PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.root),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            log=self.root / "redis.log",
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start; see {self.root / 'redis.log'}")

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file out and exits."""
        if self.process is not None:
            self.process.stop(timeout=20)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)


@contextlib.contextmanager
def private_redis(prefix: str) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis` in a scratch directory, stopped and removed after."""
    from workers.embedded import redis_server_binary

    root = scratch_dir(prefix)
    server = PrivateRedis(root, redis_server_binary())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def conveyor(*args: str) -> list[str]:
    """The command line of ``conveyor ARGS`` (the CLI the README's production commands use)."""
    return [sys.executable, "-m", "cli.main", *args]


@dataclass
class Platform:
    """Conveyor's production shape as separate processes against private servers."""

    postgres: PrivatePostgres
    redis: PrivateRedis
    env: dict[str, str]
    logs: Path
    api_port: int = 0
    key: str = ""
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-shot ``conveyor`` command to completion (it must succeed)."""
        done = subprocess.run(
            conveyor(*args),
            env={**self.env, **(env or {})},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise RuntimeError(f"conveyor {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """Start ``conveyor ARGS`` as the process ``name`` (replacing a dead one of that name)."""
        process = ServiceProcess(
            conveyor(*args),
            env={**self.env, **(env or {})},
            cwd=REPO,
            log=self.logs / f"{name.replace('#', '-')}.log",
        )
        self.processes[name] = process
        return process

    def start_worker(self) -> ServiceProcess:
        return self.start("worker", "worker", "--group", "light")

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=15)

    def wait_healthy(self, base_url: str | None = None, timeout: float = 120) -> None:
        url = f"{base_url or self.base_url}/v1/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{url} not healthy after {timeout}s; logs in {self.logs}")

    def submit(self, base_url: str | None = None, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{base_url or self.base_url}/v1/diagnostics/sleep",
            json=body or {"seconds": 0.1, "steps": 1},
            headers=self.headers,
            timeout=30,
        )

    def submit_accepted(self, timeout: float = 30, **body: Any) -> str:
        """Submit until the API accepts (202), riding out 503s and refused connections."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                response = self.submit(**body)
                if response.status_code == 202:
                    return str(response.json()["id"])
                assert response.status_code == 503, response.text
                last = response.text
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"no 202 within {timeout}s; last answer: {last}")

    def ledger(self) -> Ledger:
        return Ledger(self.postgres.url(driver="postgresql"))

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class JobRow:
    id: str
    status: str
    attempts: int
    error: dict[str, Any] | None
    completed_at: datetime | None
    results: int


class Ledger:
    """Every job's fate, read from the store (the source of truth for status)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _query(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return list(conn.execute(query, params).fetchall())

    def rows(self, ids: list[str]) -> dict[str, JobRow]:
        found = self._query(
            "SELECT j.id, j.status, j.attempts, j.error, j.completed_at,"
            " (SELECT count(*) FROM result_items r WHERE r.job_id = j.id)"
            " FROM jobs j WHERE j.id = ANY(%s)",
            (ids,),
        )
        return {row[0]: JobRow(*row) for row in found}

    def running(self, ids: list[str]) -> list[str]:
        return [r.id for r in self.rows(ids).values() if r.status == "running"]

    def created_since(self, since: datetime) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM jobs WHERE created_at > %s", (since,))]

    def wait(
        self, ids: list[str], statuses: tuple[str, ...] = TERMINAL, timeout: float = 120
    ) -> tuple[dict[str, JobRow], float | None]:
        """Poll until every job is in ``statuses``; return the rows and the monotonic time
        that happened (None when ``timeout`` passed first)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError):
                rows = self.rows(ids)
                if len(rows) == len(set(ids)) and all(r.status in statuses for r in rows.values()):
                    return rows, time.monotonic()
            if time.monotonic() > deadline:
                return self.rows(ids), None
            time.sleep(0.25)

    def wait_running(self, ids: list[str], timeout: float = 30) -> None:
        rows, done = self.wait(ids, ("running",), timeout)
        assert done is not None, f"jobs not running after {timeout}s: {rows}"


class Load:
    """Submits short diagnostics jobs over HTTP from a thread, ``rate`` a second, and records
    every answer: 202s (the accepted jobs), 503s, anything else, and transport errors."""

    def __init__(
        self, platform: Platform, rate: float = 8.0, body: dict[str, Any] | None = None
    ) -> None:
        self.platform, self.rate = platform, rate
        self.body = body or {"seconds": 0.1, "steps": 1}
        self.accepted: list[str] = []
        self.codes: Counter[int] = Counter()
        self.bad: list[tuple[int, str]] = []  # 5xx other than 503, and unexpected 4xx
        self.transport_errors = 0
        self.slowest = 0.0  # seconds of the slowest answer (how long a client waited)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.platform.base_url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        "/v1/diagnostics/sleep", json=self.body, headers=self.platform.headers
                    )
                except httpx.TransportError:
                    self.transport_errors += 1
                else:
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.codes[response.status_code] += 1
                    if response.status_code == 202:
                        self.accepted.append(str(response.json()["id"]))
                    elif response.status_code != 503:
                        self.bad.append((response.status_code, response.text[:300]))
                self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))


@dataclass
class FaultReport:
    """One line of the recovery table."""

    fault: str
    accepted: int
    completed: int
    lost: int
    recovery_s: float | None
    note: str = ""

    HEADER = f"{'fault':<38} {'accepted':>8} {'completed':>9} {'lost':>5} {'recovery s':>10}  note"

    def line(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (
            f"{self.fault:<38} {self.accepted:>8} {self.completed:>9} {self.lost:>5} "
            f"{recovery:>10}  {self.note}"
        )


def tally(rows: dict[str, JobRow], accepted: list[str]) -> tuple[int, int]:
    """(completed, lost): lost = accepted jobs missing or not terminal."""
    completed = sum(1 for r in rows.values() if r.status == "completed")
    lost = sum(1 for job_id in set(accepted) if rows.get(job_id) is None) + sum(
        1 for r in rows.values() if r.status not in TERMINAL
    )
    return completed, lost


def assert_exactly_once(rows: dict[str, JobRow], accepted: list[str]) -> None:
    """Every accepted job completed, with exactly one result row."""
    missing = set(accepted) - set(rows)
    assert not missing, f"accepted jobs missing from the store: {sorted(missing)[:5]}"
    not_done = {
        r.id: (r.status, r.attempts, r.error) for r in rows.values() if r.status != "completed"
    }
    assert not not_done, (
        f"{len(not_done)} accepted jobs did not complete: {list(not_done.items())[:5]}"
    )
    twice = {r.id: r.results for r in rows.values() if r.results != 1}
    assert not twice, f"jobs whose result was recorded other than once: {list(twice.items())[:5]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def base_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without any CONVEYOR_* setting of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["CONVEYOR_DATA_DIR"] = str(data_dir)
    return env
