"""Small test helpers shared by the areas' tests."""

from __future__ import annotations

import time
from typing import Any


def wait_for_job(
    client: Any,
    job_id: str,
    headers: dict[str, str],
    *,
    statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s: {job}")
