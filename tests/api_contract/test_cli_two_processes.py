"""``conveyor orgs`` admin commands, and one rate-limit budget shared by two API processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from cli.main import app as cli
from tests.conftest import make_org

ROOT = Path(__file__).resolve().parents[2]


def test_orgs_create_and_set_plan(migrated: Any) -> None:
    runner = CliRunner()
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = runner.invoke(cli, ["orgs", "create", name, "--plan", "starter"])
    assert created.exit_code == 0, created.output
    assert len(created.output.strip()) == 36
    moved = runner.invoke(cli, ["orgs", "set-plan", name, "pro"])
    assert moved.exit_code == 0, moved.output
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        org = orgs.find_org(session, name)
        assert org is not None and org.plan == "pro"
    unknown = runner.invoke(cli, ["orgs", "set-plan", name, "platinum"])
    assert unknown.exit_code == 1 and "platinum" in unknown.output
    duplicate = runner.invoke(cli, ["orgs", "create", name])
    assert duplicate.exit_code == 1
    listed = runner.invoke(cli, ["orgs", "plans"])
    assert listed.exit_code == 0 and "unlimited" in listed.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_api(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=dict(os.environ),
        start_new_session=True,
    )


def _wait_up(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not start")


def test_two_api_processes_share_one_budget(migrated: Any) -> None:
    tester = make_org(plan="free")  # 60 writes a minute
    ports = [_free_port(), _free_port()]
    procs = [_start_api(port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 60
        for url in urls:
            _wait_up(url, deadline)
        statuses: list[int] = []
        remaining: list[int] = []
        with httpx.Client(headers=tester.headers, timeout=10) as http:
            for i in range(70):  # alternate between the two processes
                response = http.delete(f"{urls[i % 2]}/v1/webhooks/none")
                statuses.append(response.status_code)
                remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert statuses.count(404) == 60, statuses
        assert statuses[60:] == [429] * 10
        # One budget: the remaining count falls by one per request whichever process answered.
        assert remaining[:60] == list(range(59, -1, -1))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
