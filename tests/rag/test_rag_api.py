"""The RAG routes' contract in process (no workers): validation, scoping, masking, lists."""

from __future__ import annotations

from typing import Any

from tests.conftest import OrgKey


def test_datasets_scoped_validated_and_listed(client: Any, org: OrgKey, other_org: OrgKey) -> None:
    r = client.post("/v1/datasets", json={"name": "x", "dtype": "nope"}, headers=org.headers)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["body", "dtype"]
    r = client.post(
        "/v1/datasets",
        json={"name": "c", "dtype": "crawl", "configuration": {}},
        headers=org.headers,
    )
    assert r.status_code == 422 and "exactly one of job_id" in r.json()["error"]["message"]
    ids = [
        client.post("/v1/datasets", json={"name": f"d{i}"}, headers=org.headers).json()["id"]
        for i in range(3)
    ]
    assert client.get(f"/v1/datasets/{ids[0]}", headers=other_org.headers).status_code == 404
    page = client.get("/v1/datasets", params={"limit": 2}, headers=org.headers).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["next_cursor"]
    syft = client.get("/v1/datasets", params={"skip": 1, "limit": 5}, headers=org.headers).json()
    assert syft["total"] == 3 and [d["id"] for d in syft["items"]] == ids[::-1][1:]
    assert client.get("/v1/datasets", params={"bogus": 1}, headers=org.headers).status_code == 422
    r = client.patch(f"/v1/datasets/{ids[0]}", json={"name": "renamed"}, headers=org.headers)
    assert r.json()["name"] == "renamed"
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/datasets/{ids[0]}", headers=org.headers).status_code == 404


def test_providers_mask_keys_and_endpoints_check_references(client: Any, org: OrgKey) -> None:
    body = {
        "name": "remote",
        "kind": "openai_compatible",
        "base_url": "https://llm.example.invalid/v1",
        "api_key": "sk-secret-123",
        "models": ["m"],
    }
    r = client.post("/v1/models/providers", json=body, headers=org.headers)
    assert r.status_code == 201, r.text
    assert r.json()["api_key"] == "****" and "sk-secret" not in r.text
    local = {**body, "base_url": "http://169.254.169.254/v1"}
    r = client.post("/v1/models/providers", json=local, headers=org.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_url"

    ds = client.post("/v1/datasets", json={"name": "d"}, headers=org.headers).json()["id"]
    ep = {"name": "e", "slug": f"s-{ds[-8:]}", "dataset_ids": ["ds_missing"], "model": "tiny"}
    assert client.post("/v1/endpoints", json=ep, headers=org.headers).status_code == 404
    ep["dataset_ids"] = [ds]
    assert (
        client.post("/v1/endpoints", json={**ep, "model": None}, headers=org.headers).status_code
        == 422
    )
    r = client.post("/v1/endpoints", json=ep, headers=org.headers)
    assert r.status_code == 201 and r.json()["links"]["query"].endswith("/query")
    assert client.post("/v1/endpoints", json=ep, headers=org.headers).status_code == 409
    r = client.patch(f"/v1/endpoints/{ep['slug']}", json={"response_type": "answer", "model": None},
                     headers=org.headers)  # fmt: skip
    assert r.status_code == 422
    r = client.post(
        "/v1/policies", json={"name": "p", "type": "budget", "config": {}}, headers=org.headers
    )
    assert r.status_code == 422
