"""The operations routes over the API: /v1/health/status, /v1/health/runners, /v1/queues and
/metrics, against the session's real PostgreSQL, Redis and in-thread worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring import service
from monitoring.settings import get_monitoring_settings
from tests.conftest import OrgKey
from tests.helpers import wait_for_job

TOKEN = "metrics-test-token"


@pytest.fixture
def metrics_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN", TOKEN)
    get_monitoring_settings.cache_clear()
    yield {"Authorization": f"Bearer {TOKEN}"}
    get_monitoring_settings.cache_clear()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_health_status_shape_and_cache(client: Any) -> None:
    service._health.clear()
    response = client.get("/v1/health/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] in ("healthy", "degraded")
    assert {"database", "broker", "workers", "storage"} <= set(body["services"])
    assert body["services"]["database"]["status"] == "ok"
    assert body["services"]["broker"]["status"] == "ok"
    assert body["services"]["database"]["latency_ms"] >= 0
    assert body["timestamp"].endswith("Z") or body["timestamp"].endswith("+00:00")
    # Cached: a second call within 2 s answers the same check (same timestamp).
    assert client.get("/v1/health/status").json()["timestamp"] == body["timestamp"]


def test_health_status_503_when_the_store_is_down(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that refuses connections: 503 with the health body and the error envelope."""
    from config import get_settings
    from store.db import reset_engine

    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    get_settings.cache_clear()
    reset_engine()
    service._health.clear()
    try:
        response = client.get("/v1/health/status")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_engine()
        service._health.clear()
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["database"]["status"] == "down"
    assert body["error"]["code"] == "unavailable"
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]


def test_runners_and_queues_need_a_key(client: Any) -> None:
    for path in ("/v1/health/runners", "/v1/queues"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"


def test_queues_report(client: Any, org: OrgKey, worker: object) -> None:
    from config.queues import QUEUES

    job = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers=org.headers)
    assert job.status_code == 202, job.text
    wait_for_job(client, job.json()["id"], org.headers)
    service._queues.clear()
    response = client.get("/v1/queues", headers=org.headers)
    assert response.status_code == 200, response.text
    queues = {q["name"]: q for q in response.json()["data"]}
    assert set(queues) == set(QUEUES)
    maintenance = queues["maintenance"]
    assert maintenance["completed_last_minute"] >= 1
    assert set(maintenance) == {
        "name",
        "depth",
        "oldest_age_s",
        "consumers",
        "running",
        "completed_last_minute",
    }


def test_metrics_refuses_remote_clients_without_token(client: Any) -> None:
    response = client.get("/metrics")  # TestClient's peer is "testclient", not loopback
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_metrics_token(client: Any, metrics_token: dict[str, str]) -> None:
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    response = client.get("/metrics", headers=metrics_token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")


def test_metrics_count_jobs_and_requests(
    client: Any, org: OrgKey, worker: object, metrics_token: dict[str, str]
) -> None:
    """A job run by the session's worker reaches /metrics through the Redis totals; HTTP
    requests are labelled by route template, never by raw path."""
    from monitoring.jobs import recorder

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        recorder().flush()  # the in-thread worker shares this process's recorder
        service._queues.clear()
        response = client.get("/metrics", headers=metrics_token)
        assert response.status_code == 200
        return samples(response.text)

    done = frozenset({("kind", "diagnostics"), ("status", "completed")})
    before = scrape().get(("conveyor_jobs_total", done), 0.0)
    job = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers=org.headers).json()
    wait_for_job(client, job["id"], org.headers)
    client.get(f"/v1/jobs/{job['id']}", headers=org.headers)
    deadline = time.monotonic() + 20
    while True:
        now = scrape()
        if now.get(("conveyor_jobs_total", done), 0.0) >= before + 1:
            break
        assert time.monotonic() < deadline, "the job never reached conveyor_jobs_total"
        time.sleep(0.2)
    count = ("conveyor_job_duration_seconds_count", frozenset({("kind", "diagnostics")}))
    assert now[count] >= 1
    wait = ("conveyor_job_wait_seconds_count", frozenset({("queue", "maintenance")}))
    assert now[wait] >= 1
    routes = {dict(labels)["route"] for name, labels in now if name.startswith("conveyor_http")}
    assert "/v1/jobs/{job_id}" in routes
    assert not any(job["id"] in route for route in routes)
    for queue in ("crawl", "maintenance"):
        assert ("conveyor_queue_depth", frozenset({("queue", queue)})) in now
        assert ("conveyor_workers", frozenset({("queue", queue), ("state", "offline")})) in now


class _KubeVersion(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        ).encode()
        self.send_response(200 if self.path == "/version/" or self.path == "/version" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_health_status_checks_kubernetes_when_a_backend_uses_it(
    client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real local HTTP server answers the API server's /version; once it is gone the
    platform is degraded (deployments and resources suffer), not unhealthy."""
    from config import get_settings

    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubeVersion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("CONVEYOR_DEPLOY_BACKEND", "kubernetes")
    monkeypatch.setenv("CONVEYOR_KUBE_CONFIG", str(kubeconfig))
    get_settings.cache_clear()
    try:
        service._health.clear()
        up = client.get("/v1/health/status").json()
        server.shutdown()
        server.server_close()
        service._health.clear()
        down = client.get("/v1/health/status")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        service._health.clear()
    assert up["services"]["kubernetes"]["status"] == "ok", up
    assert down.status_code == 200
    assert down.json()["services"]["kubernetes"]["status"] == "down"
    assert down.json()["status"] == "degraded"


def test_webhook_deliveries_are_counted_by_outcome(
    client: Any, org: OrgKey, worker: object, metrics_token: dict[str, str], monkeypatch: Any
) -> None:
    """A delivery that fails once (retry) then succeeds, through the session's real worker and
    a real local receiver."""
    from config import get_settings
    from monitoring.jobs import recorder
    from tests.api_contract.receiver import start_receiver

    receiver = start_receiver()
    port = receiver.server.server_address[1]
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", f"127.0.0.1:{port}")
    monkeypatch.setattr(get_settings(), "webhook_backoff_base_seconds", 0.2)
    receiver.script = [503]

    def outcomes() -> dict[str, float]:
        recorder().flush()
        text = client.get("/metrics", headers=metrics_token).text
        return {
            dict(labels)["outcome"]: value
            for (name, labels), value in samples(text).items()
            if name == "conveyor_webhook_deliveries_total"
        }

    try:
        before = outcomes()
        hook = client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["job.completed"]},
            headers=org.headers,
        )
        assert hook.status_code == 201, hook.text
        job = client.post("/v1/diagnostics/sleep", json={"seconds": 0}, headers=org.headers)
        wait_for_job(client, job.json()["id"], org.headers)
        deadline = time.monotonic() + 30
        while True:
            now = outcomes()
            grew = {k for k in ("retry", "succeeded") if now.get(k, 0) >= before.get(k, 0) + 1}
            if grew == {"retry", "succeeded"}:
                break
            assert time.monotonic() < deadline, (before, now, len(receiver.requests))
            time.sleep(0.2)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_a_job_failed_outside_a_task_is_counted_once_noted(org: OrgKey) -> None:
    """What the sweeper's one call does: a job failed with worker_lost is counted."""
    from monitoring.jobs import note_job_finished, recorder
    from monitoring.repository import read_worker_metrics
    from store import jobs as job_store
    from store.db import session_scope
    from store.jobs import JobStatus

    failed = ("conveyor_jobs_total", (("kind", "diagnostics"), ("status", "failed")))
    before = read_worker_metrics().get(failed, 0.0)
    with session_scope() as session:
        job = job_store.insert_job(session, org_id=org.org_id, kind="diagnostics", input={})
        job_id = job.id
    with session_scope() as session:
        for to, from_ in ((JobStatus.RUNNING, ["queued"]), (JobStatus.FAILED, ["running"])):
            assert job_store.transition(
                session, job_id, to=to, from_=from_, error={"code": "worker_lost", "message": ""}
            )
    note_job_finished(job_id, "diagnostics")
    recorder().flush()
    assert read_worker_metrics().get(failed, 0.0) >= before + 1
