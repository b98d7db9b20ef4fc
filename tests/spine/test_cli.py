"""The ``conveyor`` CLI: ``keys create`` prints a working key alone on stdout; ``jobs``
commands talk to a real API server (uvicorn on a free port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_api(app: Any) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_prints_only_the_key(live_api: str) -> None:
    done = conveyor("keys", "create", "--org", "cli-test-org")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("cvy_live_") and "\n" not in key
    response = httpx.get(f"{live_api}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_jobs_commands(live_api: str, worker: object, tmp_path: Path) -> None:
    key = conveyor("keys", "create", "--org", "cli-jobs-org").stdout.strip()
    env = {"CONVEYOR_API_URL": live_api, "CONVEYOR_API_KEY": key}
    job = httpx.post(
        f"{live_api}/v1/diagnostics/sleep",
        json={"seconds": 0.1},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = conveyor("jobs", "get", job["id"], env=env)
        assert shown.returncode == 0, shown.stderr
        if '"completed"' in shown.stdout:
            break
        time.sleep(0.2)
    listed = conveyor("jobs", "list", "--json", "--status", "completed", env=env)
    assert job["id"] in listed.stdout
    out = tmp_path / "result.json"
    fetched = conveyor("jobs", "result", job["id"], "-o", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert '"steps"' in out.read_text()
    missing = conveyor("jobs", "get", "nope", env=env)
    assert missing.returncode == 1 and "not_found" in missing.stderr
    no_key = conveyor("jobs", "list", env={"CONVEYOR_API_KEY": "", "CONVEYOR_API_URL": live_api})
    assert no_key.returncode == 2
