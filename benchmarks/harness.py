"""What every benchmark shares: a private PostgreSQL database and Redis DB on this machine's
services, the store migrated, an organisation with a key, and real server/worker processes.

The environment is set before any Conveyor module is imported (settings, the engine and the
Celery app are process-wide caches), and child processes inherit it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("CONVEYOR_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("CONVEYOR_BENCH_REDIS", "redis://127.0.0.1:6379")
# The same lock keys as tests/conftest.py, so benchmarks and test sessions never share a DB.
REDIS_LOCK = "conveyor:test-db-lock:{db}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _claim_redis_db() -> int:
    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    for db in (14, 15, 13, 12, *range(1, 12)):
        if admin.set(REDIS_LOCK.format(db=db), f"bench-{os.getpid()}", nx=True, ex=3600):
            return int(db)
    raise RuntimeError("no free Redis database")


@dataclass
class Bench:
    """The private services of one benchmark run and the processes it started."""

    pg_db: str
    redis_db: int
    data_dir: Path
    database_url: str
    broker_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def psycopg_url(self) -> str:
        return self.database_url.replace("postgresql+psycopg://", "postgresql://")

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Any:
        """Start a child process in its own process group; its output goes to a log file."""
        log_file = (self.data_dir / f"{name}.log").open("wb")
        self.logs.append(log_file)
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc in self.procs:
            self.procs.remove(proc)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def services(log_level: str = "WARNING") -> Iterator[Bench]:
    """Create the database and claim the Redis DB, point CONVEYOR_* at them, migrate; undo all."""
    pg_db = f"cvy_bench_{os.getpid()}_{secrets.token_hex(2)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{pg_db}"')
    redis_db = _claim_redis_db()
    data_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    host_port = PG_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    bench = Bench(
        pg_db=pg_db,
        redis_db=redis_db,
        data_dir=data_dir,
        database_url=f"postgresql+psycopg://{host_port}/{pg_db}",
        broker_url=f"{REDIS_BASE}/{redis_db}",
    )
    os.environ.update(
        {
            "CONVEYOR_DATABASE_URL": bench.database_url,
            "CONVEYOR_BROKER_URL": bench.broker_url,
            "CONVEYOR_DATA_DIR": str(data_dir),
            "CONVEYOR_LOG_LEVEL": log_level,
        }
    )
    redis.Redis.from_url(bench.broker_url).flushdb()
    try:
        from store.migrate import upgrade

        upgrade()
        yield bench
    finally:
        for proc in list(bench.procs):
            bench.stop(proc)
        for log_file in bench.logs:
            log_file.close()
        with contextlib.suppress(Exception):
            from store.db import reset_engine

            reset_engine()
        with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(bench.broker_url).flushdb()
            redis.Redis.from_url(f"{REDIS_BASE}/0").delete(REDIS_LOCK.format(db=redis_db))
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class OrgKey:
    org_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_org(name: str | None = None, plan: str = "unlimited") -> OrgKey:
    """An organisation and key; the ``unlimited`` plan keeps quotas and rate limits out of the
    way (their checks still run on every request and job)."""
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        org = orgs.get_or_create_org(session, name or f"bench-{secrets.token_hex(4)}", plan=plan)
        raw = orgs.create_key(session, org.id, name="bench").raw
        return OrgKey(org.id, raw)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def uvicorn_command(app: str, port: int, workers: int, *, factory: bool = False) -> list[str]:
    """The same server settings for every app a benchmark compares."""
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    if factory:
        cmd.append("--factory")
    return [*cmd, "--workers", str(workers), "--no-access-log", "--log-level", "warning"]


def worker_command(queues: str, concurrency: int) -> list[str]:
    """A Celery worker (threads pool) of the platform on ``queues`` (comma-separated)."""
    return [
        *(sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues),
        *("-P", "threads", "-c", str(concurrency), "--loglevel", "WARNING"),
    ]


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (a server's workers)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in (root, *root.children(recursive=True)):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total
