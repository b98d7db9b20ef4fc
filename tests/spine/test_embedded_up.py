"""``conveyor up`` on the embedded default: SQLite store, embedded Redis, real worker
processes, beat and Flower, with nothing configured but a data directory and ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from config.queues import WORKER_GROUPS

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_conveyor_up_runs_a_job_end_to_end(tmp_path: Path) -> None:
    api_port, flower_port, redis_port = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONVEYOR_DATABASE_URL", "CONVEYOR_BROKER_URL")
    }
    env.update(
        CONVEYOR_DATA_DIR=str(tmp_path / "data"),
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_FLOWER_PORT=str(flower_port),
        CONVEYOR_EMBEDDED_REDIS_PORT=str(redis_port),
        CONVEYOR_LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        key = proc.stdout.readline().strip()  # printed with "Conveyor is up"
        assert key.startswith("cvy_live_"), key
        up_at = time.monotonic()
        # Flower's workers API lists every worker, with its queues and tasks (within 10 s on a
        # quiet machine; 45 s leaves room for a CI machine running other suites beside it).
        workers: dict[str, Any] = {}
        while time.monotonic() - up_at < 45:
            with contextlib.suppress(httpx.HTTPError):
                workers = httpx.get(f"http://127.0.0.1:{flower_port}/api/workers", timeout=5).json()
            if len(workers) >= len(WORKER_GROUPS):
                break
            time.sleep(0.5)
        assert len(workers) == len(WORKER_GROUPS), sorted(workers)
        for info in workers.values():
            queues = {q["name"] for q in info["active_queues"]}
            # Every worker knows its queues' tasks; the crawl group imports only the crawl tasks.
            crawl_only = queues == {"crawl"}
            expected = "crawl.run" if crawl_only else "diagnostics.run"
            assert queues and expected in info["registered"], (queues, info["registered"])
            assert crawl_only == ("diagnostics.run" not in info["registered"])
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        health = httpx.get(f"{base}/v1/health", timeout=30).json()
        assert health["store"] == "ok" and health["broker"] == "ok"
        assert (tmp_path / "data" / "conveyor.db").exists()
        job = httpx.post(
            f"{base}/v1/diagnostics/sleep",
            json={"seconds": 0.5, "steps": 5},
            headers=headers,
            timeout=30,
        ).json()
        while time.monotonic() < deadline:
            current = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers, timeout=30).json()
            if current["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert current["status"] == "completed", current
        result = httpx.get(f"{base}/v1/jobs/{job['id']}/result", headers=headers, timeout=30)
        assert result.status_code == 200 and result.json()["steps"] == 5
        # Flower sees the task that ran (its API is open on loopback in the embedded default).
        seen = {}
        while time.monotonic() < deadline:
            response = httpx.get(f"http://127.0.0.1:{flower_port}/api/tasks", timeout=10)
            if response.status_code == 200:
                seen = response.json()
                if any(t.get("name") == "diagnostics.run" for t in seen.values()):
                    break
            time.sleep(1)
        assert any(t.get("name") == "diagnostics.run" for t in seen.values()), seen
        # …and finds it by the job's id: the job's first task id is the job id.
        assert job["links"]["flower"].endswith(f"/task/{job['id']}")
        info = httpx.get(f"http://127.0.0.1:{flower_port}/api/task/info/{job['id']}", timeout=10)
        assert info.status_code == 200 and info.json()["args"] == repr([job["id"]]), info.text
        # The instance's credentials, for client commands, readable by its owner only.
        credentials = tmp_path / "data" / "credentials"
        assert f"CONVEYOR_API_KEY={key}" in credentials.read_text()
        assert credentials.stat().st_mode & 0o777 == 0o600
        # A second `up` on the same data dir is refused at once, and so is one whose API port
        # is taken; neither disturbs the running instance.
        again = subprocess.run(
            [sys.executable, "-m", "cli.main", "up"], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert again.returncode == 1 and "in use by a running `conveyor up`" in again.stderr
        assert not again.stdout.strip()  # no key printed
        elsewhere = {**env, "CONVEYOR_DATA_DIR": str(tmp_path / "other")}
        taken = subprocess.run(
            [sys.executable, "-m", "cli.main", "up"], env=elsewhere, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert taken.returncode == 1 and f"Port {api_port}" in taken.stderr, taken.stderr
        assert httpx.get(f"{base}/v1/health", timeout=10).status_code == 200
        # Blob resources are served by the embedded S3 server (nothing configured).
        blob_id = _blob_with_object(base, headers)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 9  # api, 5 worker groups, beat, flower, S3 (+ pool processes)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(1)
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{api_port}/v1/health", timeout=2)
    # Up again on the same data dir: the object is still there.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        headers = {"Authorization": f"Bearer {proc.stdout.readline().strip()}"}
        get = httpx.post(
            f"{base}/v1/resources/{blob_id}/presign",
            json={"key": "notes/hello.txt", "method": "GET"},
            headers=headers,
            timeout=30,
        )
        assert get.status_code == 200, get.text
        assert httpx.get(get.json()["url"], timeout=30).content == b"kept across restarts"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _blob_with_object(base: str, headers: dict[str, str]) -> str:
    """A blob resource on the embedded S3 server, with one object PUT by plain HTTP."""
    created = httpx.post(
        f"{base}/v1/resources",
        json={"type": "blob", "tier": "shared", "name": "files"},
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 202, created.text
    blob = created.json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and blob["status"] == "provisioning":
        time.sleep(0.2)
        blob = httpx.get(f"{base}/v1/resources/{blob['id']}", headers=headers, timeout=30).json()
    assert blob["status"] == "ready", blob
    put = httpx.post(
        f"{base}/v1/resources/{blob['id']}/presign",
        json={"key": "notes/hello.txt", "method": "PUT"},
        headers=headers,
        timeout=30,
    ).json()
    assert httpx.put(put["url"], content=b"kept across restarts", timeout=30).status_code == 200
    return str(blob["id"])
