"""App deploys on the local backend (issue 16), against a real API server and deploy worker.

(a) Deploy latency: ``POST /v1/projects/{id}/deploy`` of a new commit → the router answers with
    the new version, vs the same steps by hand in the same run (git clone + checkout, venv,
    ``pip install -r requirements.txt`` when it lists anything, start the Procfile's web and worker
    processes with ``PORT``, poll the health check). Rounds alternate the order (A B, B A, …);
    the ratio is of the medians. Target ≤ 1.2.
(b) Zero-downtime: a steady HTTP load through the router (``/apps/{slug}/production/``, a few
    concurrent clients) while a new commit rolls out and then a rollback runs; the figure is the
    number of non-2xx answers plus connection errors (target 0) and the rollback's
    ``POST …/rollback`` → rolled-back version answering, in seconds (target ≤ 3).

    .venv/bin/python benchmarks/app_deploy.py [--rounds 3] [--concurrency 4]

Needs PostgreSQL and Redis on 127.0.0.1. The sample app is stdlib-only (no download). Last lines:
``ratio=<conveyor ÷ by hand>``, ``failed_requests=<n>``, ``rollback_s=<s>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks import harness
from projects.testing import commit_version, kill_everything

POLL_S = 0.05  # both ways poll for the new version at this interval
#: One HTTP client for both ways, made before any timing: building an ``httpx.Client`` costs
#: ≈ 20 ms here (its SSL context), which a timed step must not pay (a user's SDK keeps one).
CLIENT = httpx.Client(timeout=5.0, trust_env=False)


def wait_version(url: str, version: str, timeout: float = 120.0, **kw: Any) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = CLIENT.get(url, **kw)
            if response.status_code == 200 and response.json().get("version") == version:
                return time.monotonic()
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"{url} never answered version {version}")


def by_hand(repo: Path, commit: str, version: str, work: Path) -> float:
    """Clone, venv, pip install, start web + worker, health check: seconds until it serves."""
    started = time.monotonic()
    src, venv = work / "src", work / "venv"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(repo), str(src)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=src, check=True)
    reqs = [ln for ln in (src / "requirements.txt").read_text().splitlines() if ln.strip()]
    venv_cmd = [sys.executable, "-m", "venv", "--system-site-packages"]
    if not reqs:
        venv_cmd.append("--without-pip")
    subprocess.run([*venv_cmd, str(venv)], check=True)
    if reqs:
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"],
            cwd=src,
            check=True,
        )
    port = harness.free_port()
    env = {**os.environ, "PORT": str(port), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    procs = [
        subprocess.Popen(
            ["/bin/sh", "-c", f"exec {cmd}"],
            cwd=src,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for cmd in ("python app.py", "python worker.py")
    ]
    try:
        done = wait_version(f"http://127.0.0.1:{port}/", version)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return done - started


def via_conveyor(api: str, headers: dict[str, str], project: dict[str, Any], version: str) -> float:
    started = time.monotonic()
    response = CLIENT.post(
        f"{api}/v1/projects/{project['id']}/deploy", json={}, headers=headers, timeout=30
    )
    response.raise_for_status()
    done = wait_version(f"{api}/apps/{project['slug']}/production/", version)
    wait_job(api, headers, response.json()["links"]["job"])  # the drain ends, then the next
    return done - started


class Load:
    """Steady requests through the router from a thread: counts answers and failures."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self.stop.is_set():
            try:
                response = await client.get(self.url)
                if 200 <= response.status_code < 300:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(f"{response.status_code} {response.text[:120]}")
            except httpx.HTTPError as exc:
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def wait_job(api: str, headers: dict[str, str], job_url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{api}{job_url}", headers=headers, trust_env=False).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        time.sleep(0.1)
    raise RuntimeError(f"{job_url} did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with harness.services() as bench:
        try:
            results = run(bench, args)
        finally:
            kill_everything(bench.data_dir / "projects")  # whatever happened, no replica stays
    conveyor, hand, load, rollback_s = results
    ratio = statistics.median(conveyor) / statistics.median(hand)
    harness.log(f"load average before {load_before}, after {os.getloadavg()}")
    print(f"conveyor_s={statistics.median(conveyor):.3f} hand_s={statistics.median(hand):.3f}")
    print(f"ratio={ratio:.3f}")
    print(f"requests_ok={load.ok}")
    print(f"failed_requests={load.failed}")
    print(f"rollback_s={rollback_s:.3f}")


def run(
    bench: harness.Bench, args: argparse.Namespace
) -> tuple[list[float], list[float], Load, float]:
    work = Path(tempfile.mkdtemp(prefix="app-deploy-"))
    repo = work / "repo"
    commit_version(repo, "v0")
    env = {"CONVEYOR_PROJECTS_DRAIN_SECONDS": "1.0"}
    org = harness.make_org()
    api_port = harness.free_port()
    api_proc = bench.start(
        "api", harness.uvicorn_command("api.app:create_app", api_port, 1, factory=True), env
    )
    worker = bench.start(
        "worker",
        harness.worker_command("deploy,webhooks", 4),
        env,
    )
    api = f"http://127.0.0.1:{api_port}"
    harness.wait_http(f"{api}/v1/health", proc=api_proc)
    time.sleep(2.0)
    if worker.poll() is not None:
        raise RuntimeError(bench.log_tail("worker"))
    headers = org.headers
    project = httpx.post(
        f"{api}/v1/projects",
        json={
            "name": "bench",
            "slug": "bench",
            "git_repository": str(repo),
            "git_branch": "main",
            "health_check_path": "/health",
        },
        headers=headers,
        trust_env=False,
    ).json()
    first = via_conveyor(api, headers, project, "v0")  # warm-up: the mirror, first route
    harness.log(f"warm-up deploy: {first:.2f} s")

    conveyor: list[float] = []
    hand: list[float] = []
    for n in range(args.rounds):
        version = f"v{n + 1}"
        commit = commit_version(repo, version)
        ways = ["hand", "conveyor"] if n % 2 == 0 else ["conveyor", "hand"]
        for way in ways:
            if way == "hand":
                hand.append(by_hand(repo, commit, version, work / f"hand-{n}"))
                harness.log(f"round {n}: by hand {hand[-1]:.2f} s")
            else:
                conveyor.append(via_conveyor(api, headers, project, version))
                harness.log(f"round {n}: conveyor {conveyor[-1]:.2f} s")

    # (b) rollout and rollback under load
    history = httpx.get(
        f"{api}/v1/projects/{project['id']}/deployments?limit=100",
        headers=headers,
        trust_env=False,
    ).json()["data"]
    target = history[-1]  # the first deployment (v0)
    commit_version(repo, "vload")
    url = f"{api}/apps/bench/production/"
    with Load(url, args.concurrency) as load:
        time.sleep(1.0)
        via_conveyor(api, headers, project, "vload")
        time.sleep(1.5)  # past the drain: the old replicas are stopped under load
        started = time.monotonic()
        accepted = httpx.post(
            f"{api}/v1/projects/{project['id']}/rollback",
            json={"deployment_id": target["id"]},
            headers=headers,
            trust_env=False,
        )
        accepted.raise_for_status()
        rollback_s = wait_version(url, "v0") - started
        wait_job(api, headers, accepted.json()["links"]["job"])
        time.sleep(1.5)
    harness.log(f"under load: {load.ok} ok, {load.failed} failed; rollback {rollback_s:.2f} s")
    for line in load.errors[:5]:
        harness.log(f"  {line}")
    httpx.delete(f"{api}/v1/projects/{project['id']}", headers=headers, trust_env=False)
    time.sleep(3.0)
    shutil.rmtree(work, ignore_errors=True)
    return conveyor, hand, load, rollback_s


if __name__ == "__main__":
    main()
