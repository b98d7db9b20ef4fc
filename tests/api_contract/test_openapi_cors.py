"""The OpenAPI spec documents the contract on every route; CORS is off unless configured."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import OrgKey


def test_every_operation_documents_errors_headers_and_auth(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(
        s.get("scheme") == "bearer" and "cvy_live_" in s["description"] for s in schemes.values()
    )
    operations = 0
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            operations += 1
            responses = operation["responses"]
            label = f"{method.upper()} {path}"
            assert {"400", "404", "422", "500", "503"} <= set(responses), label
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    assert re.match(r"^`[a-z_, ]+`: ", response["description"]), (label, status)
                assert "X-Request-ID" in response.get("headers", {}), (label, status)
            for response in responses.values():
                assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
                    response["headers"]
                ), label
            if path == "/v1/health":
                continue
            assert "401" in responses and "429" in responses, label
            assert "Retry-After" in responses["429"]["headers"], label
            if "requestBody" in operation:
                assert {"413", "415"} <= set(responses), label
            if method == "post" and "202" in responses:
                assert "402" in responses, label
    assert operations >= 30
    sleep = spec["paths"]["/v1/diagnostics/sleep"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in sleep["parameters"]]
    assert "409" in sleep["responses"]
    hooks = spec["webhooks"]
    assert {"job.started", "job.progress", "job.completed", "job.failed", "job.cancelled"} <= set(
        hooks
    )
    completed = hooks["job.completed"]["post"]
    assert "webhook-signature" in completed["description"]
    assert completed["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "EventPayload"
    )


def test_unknown_query_parameters_are_rejected_on_every_get(client: Any, org: OrgKey) -> None:
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        if "get" not in methods:
            continue
        concrete = re.sub(r"\{[^}]+\}", "missing", path)
        response = client.get(concrete, params={"limt": "5"}, headers=org.headers)
        assert response.status_code == 422, (path, response.status_code)
        assert response.json()["error"]["details"][0]["loc"] == ["query", "limt"]
    declared = client.get("/v1/webhooks", params={"limit": "5"}, headers=org.headers)
    assert declared.status_code == 200


def test_cors_is_off_by_default_and_configurable(
    client: Any, org: OrgKey, monkeypatch: Any
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from config import get_settings

    origin = {"Origin": "https://app.example"}
    plain = client.get("/v1/jobs", headers={**org.headers, **origin})
    assert "access-control-allow-origin" not in plain.headers
    monkeypatch.setattr(get_settings(), "cors_origins", "https://app.example")
    with TestClient(create_app()) as cors_client:
        preflight = cors_client.options(
            "/v1/jobs",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        real = cors_client.get("/v1/jobs", headers={**org.headers, **origin})
        assert real.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-RateLimit-Remaining" in real.headers["access-control-expose-headers"]
        other = cors_client.get("/v1/jobs", headers={**org.headers, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers
