"""The Grafana dashboard and compose's ``monitoring`` profile: every metric a panel queries is
one /metrics really exposes, and Prometheus scrapes the API with the metrics token."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitoring.settings import get_monitoring_settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "conveyor.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(conveyor_[a-z_]+)", expr))


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CONVEYOR_METRICS_TOKEN", "dashboard-test")
    get_monitoring_settings.cache_clear()
    yield "dashboard-test"
    get_monitoring_settings.cache_clear()


def test_every_panel_queries_an_exposed_metric(client: Any, token: str) -> None:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    exposed: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        exposed.add(family.name)
        exposed.update(sample.name for sample in family.samples)
    exprs = dashboard_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    for name in used:
        base = name
        for suffix in SUFFIXES:
            base = base.removesuffix(suffix)
        assert name in exposed or base in exposed, name
    # The four things an operator looks at: queues, job rates and durations, HTTP, workers.
    for needed in (
        "conveyor_queue_depth",
        "conveyor_jobs_total",
        "conveyor_job_duration_seconds_bucket",
        "conveyor_http_request_duration_seconds_bucket",
        "conveyor_workers",
    ):
        assert needed in used, needed


def test_monitoring_profile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards:" in mounts
    assert "./deploy/grafana/provisioning:" in mounts
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert job["authorization"]["credentials_file"] == "/tmp/conveyor-metrics-token"
    assert "conveyor-metrics-token" in " ".join(services["prometheus"]["command"])
    assert services["api"]["environment"]["CONVEYOR_METRICS_TOKEN"].startswith(
        "${CONVEYOR_METRICS_TOKEN"
    )
