"""``conveyor crawl`` as a person runs it: a real API server (uvicorn) and the CLI process."""

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

from tests.sites.site import GeneratedSite

pytestmark = pytest.mark.usefixtures("crawl_settings", "worker")


@pytest.fixture(scope="module")
def api_url(app: Any) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def run_cli(api_url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_API_URL": api_url, "CONVEYOR_API_KEY": key, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "crawl", *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_cli_full_crawl_writes_markdown(
    api_url: str, org: Any, site: GeneratedSite, tmp_path: Path
) -> None:
    out = tmp_path / "out.md"
    done = run_cli(
        api_url, org.key, f"{site.base}/list/5", "--mode", "full", "--max-pages", "12",
        "--include", "^/(list|articles)/", "--wait", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "completed: 12 crawled" in done.stderr
    assert "12/" in done.stderr  # the progress bar: crawled / discovered
    text = out.read_text()
    # Each page starts with a header naming its URL (the joined Markdown export).
    assert text.startswith(f"<!-- source: {site.base}/list/5 -->\n\n# Articles, page 5")
    assert text.count("\n\n---\n\n") == 11 and text.count("<!-- source: ") == 12


def test_cli_reports_api_errors(api_url: str, org: Any) -> None:
    done = run_cli(api_url, org.key, "http://169.254.169.254/", "--wait")
    assert done.returncode == 1 and "unsafe_url" in done.stderr
    done = run_cli(api_url, "cvy_wrong", "https://example.com/")
    assert done.returncode == 1 and "unauthorized" in done.stderr
