"""Organisation isolation over every OpenAPI route, hostile input, and secrets kept out of logs."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from tests.conftest import OrgKey
from tests.helpers import wait_for_job

PARAM = re.compile(r"\{([^}]+)\}")


def _first_org_objects(client: Any, org: OrgKey, worker: Any) -> dict[str, tuple[Any, str]]:
    """One object of every kind the first organisation can own: {path param: (model, id)}."""
    from alerts.models import Alert
    from assistants.models import AssistantConversation, AssistantInstance
    from deployments.models import Deployment
    from resources.models import Resource, ResourceBackup, ResourceBinding
    from store import orgs
    from store.db import session_scope
    from store.models import ApiKey, Job, Member, Organization
    from webhooks import secretbox
    from webhooks.models import WebhookDelivery, WebhookEndpoint
    from webhooks.signing import generate_secret

    job = client.post(
        "/v1/diagnostics/sleep", json={"seconds": 0, "steps": 1}, headers=org.headers
    ).json()
    wait_for_job(client, job["id"], org.headers)
    key = client.post("/v1/keys", json={"name": "victim"}, headers=org.headers).json()
    batch = _finished_batch(org)
    with session_scope() as session:
        dep = Deployment(
            org_id=org.org_id,
            name="isolation-secret-dep",
            model="isolation-model",
            model_path="/nonexistent",
            runtime="cpu",
            backend="local",
            desired="stopped",
            status="stopped",
        )
        res = Resource(
            org_id=org.org_id,
            name="isolation-secret-db",
            type="postgres",
            tier="shared",
            status="failed",
        )
        hook = WebhookEndpoint(
            org_id=org.org_id,
            url="https://isolation.example/hook",
            events=["job.completed"],
            secret_encrypted="x",
        )
        session.add_all([dep, res, hook])
        session.flush()
        backup = ResourceBackup(org_id=org.org_id, resource_id=res.id, status="completed")
        binding = ResourceBinding(org_id=org.org_id, deployment_id=dep.id, resource_id=res.id)
        delivery = WebhookDelivery(
            org_id=org.org_id,
            endpoint_id=hook.id,
            msg_id="msg_isolation",
            event_type="job.completed",
            payload={},
            status="failed",
        )
        instance = AssistantInstance(
            org_id=org.org_id,
            name="isolation-secret-assistant",
            model="isolation-secret-dep",
            backend="deployment",
            plan="hobby",
            message_template="{event}",
            webhook_secret_encrypted=secretbox.encrypt(generate_secret()),
        )
        session.add_all([backup, binding, delivery, instance])
        session.flush()
        conversation = AssistantConversation(instance_id=instance.id, org_id=org.org_id)
        session.add(conversation)
        alert = Alert(
            org_id=org.org_id,
            name="isolation-secret-alert",
            condition_type="deployment_status",
            condition={"type": "deployment_status", "subject_id": dep.id, "for_seconds": 0},
            channels=[{"type": "webhook"}],
        )
        session.add(alert)
        session.flush()
        newer = _new_domain_objects(session, org.org_id, dep.id, res.id)
        return {
            **newer,
            "job_id": (Job, job["id"]),
            "key_id": (ApiKey, key["id"]),
            "deployment_id": (Deployment, dep.id),
            "resource_id": (Resource, res.id),
            "backup_id": (ResourceBackup, backup.id),
            "binding_id": (ResourceBinding, binding.id),
            "webhook_id": (WebhookEndpoint, hook.id),
            "delivery_id": (WebhookDelivery, delivery.id),
            "batch_id": (Job, batch),
            "instance_id": (AssistantInstance, instance.id),
            "conversation_id": (AssistantConversation, conversation.id),
            "alert_id": (Alert, alert.id),
            "org_id": (Organization, org.org_id),
            "member_id": (Member, orgs.service_member(session, org.org_id).id),
        }


#: First-organisation names and keys that appear in path parameters (not row ids).
SERVICE_NAME = "isolationweb"
SERVICE_ID = "svc_15015a7e0000beef"
ENV_KEY = "ISOLATION_SECRET_KEY"
CONFIG_KEY = "isolation_config_key"
STORAGE_NAME = "isolationstore"
ENDPOINT_SLUG = "isolation-secret-endpoint"


def _new_domain_objects(
    session: Any, org_id: str, deployment_id: str, resource_id: str
) -> dict[str, tuple[Any, str]]:
    """The first organisation's objects of the newest domains: a project with its environment,
    env var, service, volume, release, storage binding and TCP proxy; a RAG dataset with a file,
    a provider, a policy and an endpoint; an invoice. Rows as their services write them."""
    import secrets
    from datetime import timedelta

    from billing.models import Invoice
    from billing.service import period_bounds, previous_period
    from common.timeutil import utcnow
    from plans.service import period_key
    from projects.models import (
        Project,
        ProjectBinding,
        ProjectDeployment,
        ProjectEnvironment,
        ProjectEnvVar,
        ProjectTcpProxy,
        ProjectVolume,
    )
    from rag.models import Dataset, DatasetFile, Endpoint, Policy, Provider
    from rag.schemas import EndpointCreate, PolicyCreate
    from resources.service import credential_box

    project = Project(
        org_id=org_id,
        name="isolation-secret-project",
        slug=f"isolation-{secrets.token_hex(4)}",
        git_repository="https://isolation.example/app.git",
        services={SERVICE_NAME: {"id": SERVICE_ID, "command": "python app.py", "port": 8000}},
        config={CONFIG_KEY: "isolation-secret-config"},
    )
    session.add(project)
    session.flush()
    env = ProjectEnvironment(
        org_id=org_id, project_id=project.id, name="production", status="ready"
    )
    session.add(env)
    session.flush()
    release = ProjectDeployment(
        org_id=org_id,
        project_id=project.id,
        environment_id=env.id,
        environment=env.name,
        status="failed",
        status_reason="health_check_failed: isolation",
    )
    volume = ProjectVolume(
        org_id=org_id, project_id=project.id, name="isolationvol", mount_path="/data"
    )
    env_var = ProjectEnvVar(
        org_id=org_id,
        environment_id=env.id,
        key=ENV_KEY,
        value_encrypted=credential_box().encrypt({"v": "isolation-secret-value"}),
        secret=True,
    )
    storage = ProjectBinding(
        org_id=org_id, environment_id=env.id, resource_id=resource_id, kind="storage",
        name=STORAGE_NAME,
    )  # fmt: skip
    proxy = ProjectTcpProxy(
        org_id=org_id,
        project_id=project.id,
        environment_id=env.id,
        service=SERVICE_NAME,
        external_port=40000 + secrets.randbelow(20000),
        target_port=8000,
    )
    dataset = Dataset(
        org_id=org_id, name="isolation-secret-dataset", dtype="local_file",
        embedding_model="isolation-embedder", chunk_size=200, chunk_overlap=20,
    )  # fmt: skip
    provider = Provider(org_id=org_id, name="isolation-secret-provider", kind="conveyor")
    policy_body = PolicyCreate(name="isolation-secret-policy", type="rate_limit")
    policy = Policy(
        org_id=org_id, name=policy_body.name, type="rate_limit", config=policy_body.config
    )
    session.add_all([release, volume, env_var, storage, proxy, dataset, provider, policy])
    session.flush()
    file = DatasetFile(
        org_id=org_id, dataset_id=dataset.id, name="isolation-secret.txt", source="upload",
        media_type="text/plain", size=5, content_hash="0" * 64, content=b"hello", status="ready",
    )  # fmt: skip
    body = EndpointCreate(
        name="isolation-secret-endpoint", slug=ENDPOINT_SLUG, dataset_ids=[dataset.id],
        response_type="search", policy_ids=[policy.id], provider=provider.id,
    )  # fmt: skip
    endpoint = Endpoint(
        org_id=org_id,
        name=body.name,
        slug=body.slug,
        settings=body.model_dump(exclude={"name", "slug"}),
    )
    period = previous_period(period_key())
    start, end = period_bounds(period)
    invoice = Invoice(
        org_id=org_id, period=period, plan="unlimited", status="open", currency="USD",
        lines=[], subtotal_micros=1_234_567, total_micros=1_234_567, period_start=start,
        period_end=end, finalized_at=end + timedelta(hours=1), created_at=utcnow(),
    )  # fmt: skip
    session.add_all([file, endpoint, invoice])
    session.flush()
    return {
        "project_id": (Project, project.id),
        "env_id": (ProjectEnvironment, env.id),
        "project_deployment_id": (ProjectDeployment, release.id),
        "volume_id": (ProjectVolume, volume.id),
        "env_var": (ProjectEnvVar, env_var.id),
        "storage_binding": (ProjectBinding, storage.id),
        "tcp_proxy": (ProjectTcpProxy, proxy.id),
        "dataset_id": (Dataset, dataset.id),
        "dataset_file_id": (DatasetFile, file.id),
        "provider_id": (Provider, provider.id),
        "policy_id": (Policy, policy.id),
        "endpoint": (Endpoint, endpoint.id),
        "invoice_id": (Invoice, invoice.id),
    }


def _finished_batch(org: OrgKey) -> str:
    """An OpenAI batch (an inference job) of the first organisation, completed with one line,
    so its output file exists too."""
    from store import jobs as job_store
    from store.db import session_scope
    from store.jobs import JobStatus

    line = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}
    with session_scope() as session:
        job = job_store.insert_job(
            session,
            org_id=org.org_id,
            kind="inference",
            input={"operation": "batch", "requests": [line], "relay": False},
        )
        job_store.transition(session, job.id, to=JobStatus.RUNNING, from_=[JobStatus.QUEUED])
        job_store.add_result_item(
            session, job.id, seq=0, name="line", data={"custom_id": "a", "error": None}
        )
        job_store.set_progress(session, job.id, {"requests_total": 1, "requests_completed": 1})
        job_store.transition(session, job.id, to=JobStatus.COMPLETED, from_=[JobStatus.RUNNING])
    return job.id


def _uploaded_file(client: Any, org: OrgKey) -> str:
    files = {"file": ("isolation.jsonl", b'{"custom_id": "x"}\n')}
    r = client.post("/v1/files", files=files, data={"purpose": "batch"}, headers=org.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _snapshot(objects: dict[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    from sqlalchemy import inspect

    from store.db import session_scope

    out: dict[str, dict[str, Any]] = {}
    with session_scope() as session:
        for name, (model, row_id) in objects.items():
            row = session.get(model, row_id)
            assert row is not None, name
            out[name] = {c.key: getattr(row, c.key) for c in inspect(model).column_attrs}
    return out


def test_a_second_org_sees_and_changes_nothing_on_any_route(
    client: Any, org: OrgKey, other_org: OrgKey, worker: Any
) -> None:
    objects = _first_org_objects(client, org, worker)
    ids = {name: str(row_id) for name, (_, row_id) in objects.items()}
    ids["file_id"] = _uploaded_file(client, org)  # kept in Redis, not a row
    ids.update(PATH_VALUES)
    before = _snapshot(objects)
    secrets_of_a = [*(v for v in ids.values() if not v.isdigit()), *SECRET_NAMES]
    spec = client.get("/openapi.json").json()
    walked: list[str] = []
    for path, operations in spec["paths"].items():
        names = PARAM.findall(path)
        for method in operations:
            if not names:
                if method == "get":  # lists and reports: nothing of the first organisation
                    body = client.get(path, headers=other_org.headers).text
                    leaked = [s for s in secrets_of_a if s in body]
                    assert not leaked, (path, leaked)
                    walked.append(f"GET {path}")
                continue
            values = {name: ids[_id_key(path, name)] for name in names}
            absent = {name: _absent(value) for name, value in values.items()}
            concrete = _fill(path, values)
            response = client.request(method.upper(), concrete, headers=other_org.headers, json={})
            walked.append(f"{method.upper()} {path}")
            # An incoming webhook takes no API key: its own signature is what is refused.
            allowed = (401,) if path in SIGNED_NOT_KEYED else (404, 422)
            assert response.status_code in allowed, (method, concrete, response.status_code)
            if response.status_code == 404:
                assert response.json()["error"]["code"] == "not_found"
            # The first organisation's object answers exactly as an id that exists nowhere (a
            # signed route is public: its unguessable id is the URL the sender was given).
            twin = client.request(
                method.upper(), _fill(path, absent), headers=other_org.headers, json={}
            )
            if path not in SIGNED_NOT_KEYED:
                assert _shape(response, values) == _shape(twin, absent), (method, concrete)
            leaked = [s for s in secrets_of_a if s in response.text and s not in concrete]
            assert not leaked, (method, concrete, leaked)
    assert len(walked) >= 30
    assert {f"GET {p}" for p in OWNER_SEES} <= set(walked)
    # Nothing of the first organisation changed: every row is exactly as it was.
    assert _snapshot(objects) == before
    assert client.get(f"/v1/jobs/{ids['job_id']}/result", headers=org.headers).status_code == 200
    assert client.get(f"/v1/files/{ids['file_id']}", headers=org.headers).status_code == 200
    output = client.get(f"/v1/batches/{ids['batch_id']}", headers=org.headers).json()
    assert (
        client.get(f"/v1/files/{output['output_file_id']}", headers=org.headers).status_code == 200
    )
    # ... and the ids walked are real: the first organisation reads each of them.
    for path in OWNER_SEES:
        response = client.get(_fill(path, {n: ids[_id_key(path, n)] for n in PARAM.findall(path)}),
                              headers=org.headers)  # fmt: skip
        assert response.status_code == 200, (path, response.text)


SIGNED_NOT_KEYED = {"/v1/webhooks/incoming/{instance_id}"}
#: Path parameters that are names or keys of the first organisation's objects, not row ids.
PATH_VALUES = {
    "name": SERVICE_NAME, "key": ENV_KEY, "slug": ENDPOINT_SLUG, "service_id": SERVICE_ID,
    "storage_name": STORAGE_NAME, "config_key": CONFIG_KEY,
}  # fmt: skip
#: A parameter whose object depends on the route: (path fragment, parameter) → entry of ``ids``.
ID_OVERRIDES = {
    ("/v1/projects/", "deployment_id"): "project_deployment_id",
    ("/v1/datasets/", "file_id"): "dataset_file_id",
    ("/storage/", "name"): "storage_name",
    ("/config/", "key"): "config_key",
}
SECRET_NAMES = [
    "isolation-secret-dep", "isolation-secret-db", "isolation.example",
    "isolation-secret-project", "isolation-secret-dataset", "isolation-secret-provider",
    "isolation-secret-policy", "isolation-secret-value", "isolation-secret-config",
    "isolation-secret.txt",
]  # fmt: skip
#: Routes of the newest domains the first organisation reads with its own key (200), so the
#: ids the sweep used are proven real.
OWNER_SEES = [
    "/v1/projects/{project_id}",
    "/v1/projects/{project_id}/environments/{env_id}",
    "/v1/projects/{project_id}/deployments/{deployment_id}",
    "/v1/projects/{project_id}/services/{name}",
    "/v1/projects/{project_id}/config/{key}",
    "/v1/projects/{project_id}/env-vars",
    "/v1/projects/{project_id}/volumes",
    "/v1/projects/{project_id}/storage",
    "/v1/services/{service_id}/tcp-proxy",
    "/v1/datasets/{dataset_id}",
    "/v1/datasets/{dataset_id}/files/{file_id}",
    "/v1/models/providers/{provider_id}",
    "/v1/policies/{policy_id}",
    "/v1/endpoints/{slug}",
    "/v1/billing/invoices/{invoice_id}",
    "/v1/alerts/{alert_id}",
    "/v1/instances/{instance_id}",
]


def _id_key(path: str, name: str) -> str:
    return next(
        (key for (frag, param), key in ID_OVERRIDES.items() if param == name and frag in path), name
    )


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _absent(value: str) -> str:
    """An id of the same shape that exists nowhere: the prefix (``prj_``) kept, every other
    letter ``f`` (``F``) and digit ``9`` (still valid hex, UUID and name syntax)."""
    head, sep, tail = value.partition("_")
    if not sep or len(head) > 5:
        head, sep, tail = "", "", value
    swap = "".join("9" if c.isdigit() else "F" if c.isupper() else "f" if c.isalpha() else c
                   for c in tail)  # fmt: skip
    return head + sep + swap


def _shape(response: Any, values: dict[str, str]) -> tuple[int, str, str]:
    """Status, error code and message, with the path values put back as their names."""
    if response.status_code < 400:
        return response.status_code, "", ""
    error = response.json()["error"]
    message = str(error["message"])
    for name, value in sorted(values.items(), key=lambda item: -len(item[1])):
        message = message.replace(value, "{" + name + "}")
    return response.status_code, str(error["code"]), message


HOSTILE_BODIES = [
    b"{not json",
    b'{"url": "' + b"\xff\xfe" + b'"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"url": 1e999999}',
    b'{"url": 123456789012345678901234567890123456789012345678901234567890}',
    b'{"url": "http://x/\' OR 1=1; DROP TABLE jobs; --"}',
    b'{"url": "https://example.com", "events": ["job.completed"], "secret": "whsec_%%%"}',
    b"null",
    b'"just a string"',
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_get_clear_4xx(client: Any, org: OrgKey, body: bytes) -> None:
    response = client.post(
        "/v1/webhooks", content=body, headers={**org.headers, "content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (body[:40], response.status_code)
    error = response.json()["error"]
    assert error["code"] in ("validation_error", "invalid_json", "unsafe_url", "dns_error")
    assert error["request_id"].startswith("req_")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/' OR '1'='1",
        "/v1/webhooks/" + "9" * 500,
        "/v1/webhooks/%00",
        "/v1/jobs/%E2%80%AE",
        "/v1/keys/..%2f..%2fv1%2fhealth",
    ],
)
def test_hostile_ids_get_404(client: Any, org: OrgKey, path: str) -> None:
    response = client.get(path, headers=org.headers)
    assert response.status_code in (404, 405), (path, response.status_code)
    assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")


def test_secrets_never_reach_the_logs(
    client: Any, org: OrgKey, worker: Any, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    from config import get_settings

    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1:9", raising=False)
    caplog.set_level(logging.DEBUG)
    created = client.post("/v1/keys", json={"name": "logged?"}, headers=org.headers).json()
    raw_key = created["key"]
    hook = client.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]},
        headers=org.headers,
    ).json()
    job = client.post(
        "/v1/diagnostics/sleep",
        json={"seconds": 0, "steps": 1},
        headers={"Authorization": f"Bearer {raw_key}"},
    ).json()
    wait_for_job(client, job["id"], org.headers)
    client.get("/v1/jobs", headers={"Authorization": "Bearer cvy_live_wrongwrongwrong"})
    client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=org.headers)
    text = (
        "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
        + caplog.text
    )
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for secret in (raw_key, org.key, hook["secret"], "cvy_live_wrongwrongwrong"):
        assert secret not in text
    assert hook["secret"].removeprefix("whsec_") not in text


def test_control_characters_in_query_are_422(client: Any, org: OrgKey) -> None:
    for params in ({"kind": "\x00"}, {"cursor": "a\x00b"}, {"status": "queued\x1b"}):
        response = client.get("/v1/jobs", params=params, headers=org.headers)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "body",
    [
        b'{"url": "https://example.com/\\u0000", "events": ["job.completed"]}',
        b'{"url": "https://example.com/", "description": "a\\ud800b"}',
    ],
)
def test_nul_and_lone_surrogates_are_422_not_store_errors(
    client: Any, org: OrgKey, body: bytes
) -> None:
    response = client.post(
        "/v1/webhooks", content=body, headers={**org.headers, "content-type": "application/json"}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["loc"] == ["body"]


def test_multipart_only_where_uploads_are_taken(client: Any, org: OrgKey) -> None:
    files = {"file": ("in.jsonl", b'{"a": 1}\n', "application/jsonl")}
    refused = client.post("/v1/webhooks", files=files, headers=org.headers)
    assert refused.status_code == 415
    accepted = client.post("/v1/files", files=files, data={"purpose": "batch"}, headers=org.headers)
    assert accepted.status_code not in (413, 415), accepted.text


ANY_ROUTE_HOSTILE_BODIES = [
    b"{not json",
    b'{"name": "\xff\xfe"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"1e999999",
    b'{"name": "a\\u0000b"}',
    b'{"name": "\\udc00"}',
    b'"' + b"a" * 70_000 + b'"',
]


def test_every_body_taking_route_answers_hostile_bodies_with_4xx(
    client: Any, org: OrgKey, monkeypatch: Any
) -> None:
    from workers.app import celery_app

    monkeypatch.setattr(celery_app, "send_task", lambda *args, **kwargs: None)
    spec = client.get("/openapi.json").json()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            concrete = re.sub(r"\{[^}]+\}", "missing", path)
            for body in ANY_ROUTE_HOSTILE_BODIES:
                response = client.request(
                    method.upper(),
                    concrete,
                    content=body,
                    headers={**org.headers, "content-type": "application/json"},
                )
                label = (method, path, body[:20], response.status_code)
                assert 400 <= response.status_code < 500, label
                assert response.json()["error"]["request_id"].startswith("req_"), label
                checked += 1
    assert checked >= 10 * len(ANY_ROUTE_HOSTILE_BODIES)
