"""Fixtures of the alert tests: a real webhook receiver the platform may reach, a real local
SMTP server (aiosmtpd), deployment rows to watch, and helpers to evaluate and wait."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
import standardwebhooks
from aiosmtpd.controller import Controller

from tests.api_contract.receiver import Receiver, start_receiver
from tests.conftest import OrgKey


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1, on the SSRF allow-list for this test."""
    from config import get_settings

    rec = start_receiver()
    port = rec.server.server_address[1]
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", f"127.0.0.1:{port}")
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def subscribe(client: Any, org: OrgKey, receiver: Receiver) -> str:
    """Register ``receiver`` for the org's alert events; returns the webhook secret."""
    response = client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "events": ["alert.firing", "alert.resolved"]},
        headers=org.headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


def verified_events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every request the receiver got, each verified against the Standard Webhooks secret."""
    verifier = standardwebhooks.Webhook(secret)
    out = []
    for request in list(receiver.requests):
        event = verifier.verify(request.body, request.headers)
        assert isinstance(event, dict)
        out.append(event)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def create_alert(client: Any, org: OrgKey, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/alerts", json=body, headers=org.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def evaluate(org: OrgKey, *types: str) -> dict[str, int]:
    """One evaluation run of the org's rules (what beat's task and the event trigger run)."""
    from alerts.jobs import evaluate_org
    from alerts.schemas import CONDITION_TYPES

    return evaluate_org(org.org_id, types or CONDITION_TYPES)


def events_of(client: Any, org: OrgKey, alert_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/alerts/{alert_id}/events", headers=org.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def add_deployment(org: OrgKey, status: str = "running") -> str:
    """A deployment row in ``status`` (the alert watches the store's observed status)."""
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        dep = Deployment(
            org_id=org.org_id,
            name=f"watched-{time.monotonic_ns()}",
            model="tiny",
            model_path="/models/tiny",
            runtime="cpu",
            backend="local",
            status=status,
        )
        session.add(dep)
        session.flush()
        return dep.id


def set_deployment_status(deployment_id: str, status: str) -> None:
    from deployments.models import Deployment
    from store.db import session_scope

    with session_scope() as session:
        dep = session.get(Deployment, deployment_id)
        assert dep is not None
        dep.status = status


@dataclass
class Mailbox:
    """What the local SMTP server received."""

    host: str
    port: int
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free port, configured as the platform's."""
    from config import get_settings

    box = Mailbox("127.0.0.1", _free_port())
    controller = Controller(box, hostname=box.host, port=box.port)
    controller.start()
    settings = get_settings()
    monkeypatch.setattr(settings, "smtp_host", box.host)
    monkeypatch.setattr(settings, "smtp_port", box.port)
    monkeypatch.setattr(settings, "smtp_from", "alerts@conveyor.test")
    yield box
    controller.stop()


def payload_types(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["type"]) for e in events]


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
