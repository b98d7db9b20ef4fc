"""Small test helpers shared by the areas' tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil


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


class ServiceProcess:
    """A real server or worker subprocess in its own session (process group), so a test can
    SIGKILL its main process alone or the whole tree. Output goes to ``log`` when given (else
    stdout is dropped and stderr kept in a pipe)."""

    def __init__(
        self,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.cmd = cmd
        self.log = log
        out = log.open("ab") if log is not None else None
        self.proc = subprocess.Popen(
            cmd,
            env=env if env is not None else dict(os.environ),
            cwd=cwd,
            start_new_session=True,
            stdout=out or subprocess.DEVNULL,
            stderr=out or subprocess.PIPE,
        )
        if out is not None:
            out.close()  # the child holds its own descriptor

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_main(self) -> None:
        """SIGKILL the main process only (its children are orphaned, still in the group)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill_all(self) -> None:
        """SIGKILL the whole process group (main process and children): no chance to clean up."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the group, SIGKILL what is left after ``timeout`` (or orphaned)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        self.kill_all()  # what is left of the group (orphaned pool children included)
        if self.proc.stderr:
            self.proc.stderr.close()


class WorkerProcess(ServiceProcess):
    """A real ``celery worker`` subprocess (its own process group) for end-to-end tests."""

    def __init__(
        self,
        queues: list[str],
        *,
        pool: str = "prefork",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or f"test-{uuid.uuid4().hex[:8]}@%h"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            ",".join(queues),
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.name,
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        super().__init__(cmd, env={**os.environ, **(env or {})})


def create_job_now(kind: str, org_id: str, payload: dict[str, Any]) -> Any:
    """Create a job the way every entry point does (``jobs.service.create_job``) in a transaction
    of its own; it is sent when that commits. Returns the job."""
    from jobs.service import create_job
    from store.db import session_scope
    from workers import outbox

    with session_scope() as session:
        session.info[outbox.ON_SEND_FAILURE] = "reject"
        return create_job(session, kind, org_id, payload)


def stored_job(session: Any, *, org_id: str, kind: str, input: dict[str, Any]) -> Any:
    """A bare ``queued`` job row (no message sent), attached to ``session`` so a test can set
    its fields: a fixture for store-level tests."""
    from store import jobs as job_store
    from store.models import Job

    job_id = job_store.insert_job(session, org_id=org_id, kind=kind, input=input).id
    return session.get(Job, job_id)
