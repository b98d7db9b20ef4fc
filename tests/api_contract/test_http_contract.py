"""The HTTP contract on real routes: rate-limit headers and 429, 413/415, keys, usage, quotas."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import OrgKey


def test_every_response_carries_rate_limit_headers(client: Any, free_org: OrgKey) -> None:
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/nope"), ("GET", "/v1/jobs/missing")]:
        response = client.request(method, path, headers=free_org.headers)
        assert response.headers["X-RateLimit-Limit"] == "120", (path, response.headers)
        assert int(response.headers["X-RateLimit-Remaining"]) < 120
        assert int(response.headers["X-RateLimit-Reset"]) > time.time()
        assert response.headers["X-Request-ID"].startswith("req_")
    # Health checks report the read budget without spending it.
    before = client.get("/v1/health", headers=free_org.headers)
    after = client.get("/v1/health", headers=free_org.headers)
    assert before.headers["X-RateLimit-Limit"] == "120"
    assert before.headers["X-RateLimit-Remaining"] == after.headers["X-RateLimit-Remaining"]
    write = client.delete("/v1/keys/none", headers=free_org.headers)
    assert write.status_code == 404
    assert write.headers["X-RateLimit-Limit"] == "60"


def test_write_budget_runs_out_with_429_envelope_and_retry_after(
    client: Any, free_org: OrgKey
) -> None:
    statuses = [
        client.delete("/v1/webhooks/none", headers=free_org.headers).status_code for _ in range(61)
    ]
    assert statuses[:60] == [404] * 60 and statuses[60] == 429
    limited = client.delete("/v1/webhooks/none", headers=free_org.headers)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["request_id"] == limited.headers["X-Request-ID"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    # Reads have their own budget.
    assert client.get("/v1/webhooks", headers=free_org.headers).status_code == 200


def test_body_over_64_kib_is_413_before_parsing(client: Any, org: OrgKey) -> None:
    big = b'{"url": "' + b"a" * (64 * 1024) + b'"}'
    response = client.post(
        "/v1/webhooks",
        content=big,
        headers={**org.headers, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Any:
        yield b'{"url": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}'

    chunked = client.post(
        "/v1/webhooks",
        content=chunks(),
        headers={**org.headers, "content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert chunked.json()["error"]["code"] == "payload_too_large"


def test_wrong_content_type_is_415(client: Any, org: OrgKey) -> None:
    response = client.post(
        "/v1/webhooks",
        content=b"url=http://example.com",
        headers={**org.headers, "content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_unknown_query_parameters_are_422(client: Any, org: OrgKey) -> None:
    for path in ("/v1/webhooks", "/v1/keys", "/v1/jobs"):
        response = client.get(path, params={"limt": 5}, headers=org.headers)
        assert response.status_code == 422, path
        assert response.json()["error"]["code"] == "validation_error"


def test_keys_are_listed_masked_and_revocation_is_immediate(client: Any, org: OrgKey) -> None:
    created = client.post("/v1/keys", json={"name": "ci"}, headers=org.headers)
    assert created.status_code == 201
    body = created.json()
    raw = body["key"]
    assert raw.startswith("cvy_live_") and len(raw) > 40
    new_headers = {"Authorization": f"Bearer {raw}"}
    assert client.get("/v1/keys", headers=new_headers).status_code == 200
    listing = client.get("/v1/keys", headers=org.headers).json()["data"]
    assert raw not in json.dumps(listing)
    mine = next(k for k in listing if k["id"] == body["id"])
    assert mine["prefix"].startswith("cvy_live_") and mine["last4"] == raw[-4:]
    assert mine["masked"] == f"{mine['prefix']}…{raw[-4:]}"
    assert client.delete(f"/v1/keys/{body['id']}", headers=org.headers).status_code == 204
    revoked = client.get("/v1/keys", headers=new_headers)
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "unauthorized"
    assert client.delete(f"/v1/keys/{body['id']}", headers=org.headers).status_code == 204


def test_usage_reports_the_plan(client: Any, free_org: OrgKey) -> None:
    usage = client.get("/v1/usage", headers=free_org.headers)
    assert usage.status_code == 200
    body = usage.json()
    assert body["plan"] == "free"
    assert body["pages"] == {"used": 0, "limit": 1000, "remaining": 1000}
    assert body["concurrent_jobs"]["limit"] == 20
    assert body["rate_limits"] == {"read_per_minute": 120, "write_per_minute": 60}


def test_a_json_body_without_content_type_is_accepted(client: Any, org: OrgKey) -> None:
    response = client.post(
        "/v1/diagnostics/sleep",
        content=b'{"seconds": 0}',
        headers={k: v for k, v in org.headers.items() if k.lower() != "content-type"},
    )
    assert response.status_code == 202, response.text
    assert "content-type" not in {k.lower() for k in response.request.headers}
    assert response.json()["input"]["seconds"] == 0
