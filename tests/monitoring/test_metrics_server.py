"""GET /metrics from a real uvicorn with two worker processes in prometheus_client's
multiprocess mode: every scrape answers the requests of both processes, and with no token set
it answers loopback clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_requests(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "conveyor_http_requests_total"
                and sample.labels["route"] == "/v1/health"
            ):
                total += sample.value
    return total


def test_two_uvicorn_workers_add_up(migrated: dict[str, object], tmp_path: Path) -> None:
    port = free_port()
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    env.pop("CONVEYOR_METRICS_TOKEN", None)
    proc = subprocess.Popen(
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
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        ready = 0
        while ready < 5:  # several answers in a row: both processes are likely up
            assert proc.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            try:
                ready = ready + 1 if httpx.get(f"{base}/openapi.json").status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
                time.sleep(0.5)
        n = 40
        with ThreadPoolExecutor(8) as pool, httpx.Client(base_url=base) as http:
            statuses = list(pool.map(lambda _: http.get("/v1/health").status_code, range(n)))
        assert all(s in (200, 503) for s in statuses)
        assert list(multiproc.glob("*.db")), "the values live in the multiprocess directory"
        for _ in range(3):  # whichever process answers, the count is the sum of both
            response = httpx.get(f"{base}/metrics")
            assert response.status_code == 200, response.text
            assert health_requests(response.text) == n
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
