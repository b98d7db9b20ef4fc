"""One delivery attempt against a real local receiver, and the retry schedule."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator

import httpx
import pytest
import standardwebhooks

from crawler.safety import check_url
from tests.api_contract.receiver import Receiver
from webhooks.delivery import (
    DEFAULT_MAX_ATTEMPTS,
    deliver,
    encode_payload,
    retry_delay,
    retry_schedule,
)
from webhooks.signing import generate_secret


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


BODY = encode_payload(
    "job.completed", "2026-01-01T00:00:00Z", {"id": "job_1", "status": "completed"}
)


def test_delivery_is_signed_and_verifiable(receiver: Receiver, client: httpx.Client) -> None:
    secret = generate_secret()
    outcome = deliver(client, receiver.url, secret, "msg_1", BODY)
    assert outcome.ok and outcome.status_code == 204 and outcome.error is None
    (got,) = receiver.requests
    assert got.body == BODY
    assert got.headers["webhook-id"] == "msg_1"
    assert got.headers["content-type"] == "application/json"
    event = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    assert event == {
        "type": "job.completed",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"id": "job_1", "status": "completed"},
    }
    assert json.loads(BODY)["type"] == "job.completed"


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (400, False), (410, False)],
)
def test_failed_status_is_recorded_with_retry_decision(
    receiver: Receiver, client: httpx.Client, status: int, retryable: bool
) -> None:
    receiver.default = status
    outcome = deliver(client, receiver.url, generate_secret(), "msg_1", BODY)
    assert not outcome.ok
    assert outcome.status_code == status
    assert outcome.error == f"http_{status}"
    assert outcome.retryable is retryable


def test_redirects_are_not_followed(receiver: Receiver, client: httpx.Client) -> None:
    receiver.default = 302
    receiver.extra_headers = {"location": "http://169.254.169.254/latest/meta-data"}
    outcome = deliver(client, receiver.url, generate_secret(), "msg_1", BODY)
    assert not outcome.ok and outcome.status_code == 302
    assert len(receiver.requests) == 1


def test_timeout_and_connection_refused_are_retryable(
    receiver: Receiver, client: httpx.Client
) -> None:
    receiver.delay = 1.0
    slow = deliver(client, receiver.url, generate_secret(), "m", BODY, timeout=0.2)
    assert (slow.ok, slow.error, slow.retryable) == (False, "timeout", True)
    receiver.server.shutdown()
    receiver.server.server_close()
    refused = deliver(client, receiver.url, generate_secret(), "m", BODY, timeout=2)
    assert not refused.ok and refused.retryable
    assert refused.error is not None and refused.error.startswith("connection_error")


def test_response_snippet_is_bounded(receiver: Receiver, client: httpx.Client) -> None:
    receiver.default = 299  # the receiver sends 5000 bytes with this status
    outcome = deliver(client, receiver.url, generate_secret(), "m", BODY)
    assert outcome.ok and len(outcome.response_snippet) == 1024


def test_ssrf_guard_blocks_loopback_unless_allow_listed(
    receiver: Receiver, client: httpx.Client
) -> None:
    blocked = deliver(
        client, receiver.url, generate_secret(), "m", BODY, url_guard=lambda u: check_url(u, "")
    )
    assert not blocked.ok and not blocked.retryable
    assert blocked.error is not None and blocked.error.startswith("unsafe_url")
    assert receiver.requests == []
    port = receiver.server.server_address[1]
    allowed = deliver(
        client,
        receiver.url,
        generate_secret(),
        "m",
        BODY,
        url_guard=lambda u: check_url(u, f"127.0.0.1:{port}"),
    )
    assert allowed.ok and len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/", "http://[::1]/", "http://0177.0.0.1/", "file:///etc/passwd"]
)
def test_ssrf_guard_refuses_internal_targets(client: httpx.Client, url: str) -> None:
    outcome = deliver(client, url, generate_secret(), "m", BODY, url_guard=check_url)
    assert not outcome.ok and not outcome.retryable
    assert outcome.error is not None and outcome.error.startswith("unsafe_url")


def test_backoff_is_exponential_with_at_least_five_retries_over_about_an_hour() -> None:
    schedule = retry_schedule()
    assert len(schedule) >= 5 and len(schedule) + 1 == DEFAULT_MAX_ATTEMPTS
    assert all(b > a for a, b in itertools.pairwise(schedule))
    assert all(
        b / a == pytest.approx(schedule[1] / schedule[0]) for a, b in itertools.pairwise(schedule)
    )
    assert 45 * 60 <= sum(schedule) <= 75 * 60
    rng = random.Random(7)
    for n, nominal in enumerate(schedule, start=1):
        jittered = retry_delay(n, rng=rng)
        assert 0.9 * nominal <= jittered <= 1.1 * nominal
    with pytest.raises(ValueError):
        retry_delay(0)


def test_guarded_transport_refuses_private_addresses_at_connect_time(
    receiver: Receiver,
) -> None:
    # No URL guard here: the transport alone must refuse (as after a DNS rebinding).
    from crawler.safety import AllowList
    from webhooks.transport import GuardedSyncTransport

    port = receiver.server.server_address[1]
    allow = {"value": AllowList.parse("")}
    with httpx.Client(transport=GuardedSyncTransport(lambda: allow["value"])) as guarded:
        for url in (receiver.url, f"http://localhost:{port}/hook"):
            refused = deliver(guarded, url, generate_secret(), "m", BODY)
            assert not refused.ok and not refused.retryable
            assert refused.error is not None and refused.error.startswith("unsafe_url"), refused
        assert receiver.requests == []
        allow["value"] = AllowList.parse(f"127.0.0.1:{port}")
        allowed = deliver(guarded, receiver.url, generate_secret(), "m", BODY)
        assert allowed.ok and len(receiver.requests) == 1
