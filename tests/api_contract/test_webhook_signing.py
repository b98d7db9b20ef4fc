"""Standard Webhooks signing and the receiver-side verification helper."""

from __future__ import annotations

import base64
import time

import pytest
import standardwebhooks

from webhooks.signing import (
    WebhookVerificationFailed,
    generate_secret,
    is_valid_secret,
    sign,
    signature_headers,
    verify,
)

BODY = b'{"type":"job.completed","timestamp":"2026-01-01T00:00:00Z","data":{"id":"job_1"}}'


def test_generated_secret_is_whsec_base64_of_24_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    assert generate_secret() != secret
    assert is_valid_secret(secret)


@pytest.mark.parametrize(
    "bad", ["", "whsec_", "sk_abc", "whsec_not base64!", "whsec_" + base64.b64encode(b"x").decode()]
)
def test_malformed_secrets_are_refused(bad: str) -> None:
    assert not is_valid_secret(bad)
    with pytest.raises(ValueError):
        sign(bad, "msg_1", 1, BODY)


def test_known_vector_matches_the_standard_webhooks_spec() -> None:
    # Test vector from the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_verify_with_the_reference_library_and_our_helper() -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = signature_headers(secret, "msg_abc", now, BODY)
    assert set(headers) >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert standardwebhooks.Webhook(secret).verify(BODY, headers)["data"]["id"] == "job_1"
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify(secret, upper, BODY)["type"] == "job.completed"


def test_tampered_body_wrong_secret_and_replays_are_rejected() -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = signature_headers(secret, "msg_abc", now, BODY)
    with pytest.raises(WebhookVerificationFailed):
        verify(secret, headers, BODY.replace(b"job_1", b"job_2"))
    with pytest.raises(WebhookVerificationFailed):
        verify(generate_secret(), headers, BODY)
    with pytest.raises(WebhookVerificationFailed, match="tolerance"):
        verify(secret, headers, BODY, now=now + 301)
    assert verify(secret, headers, BODY, now=now + 299)["data"]["id"] == "job_1"
    other_id = dict(headers, **{"webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationFailed):
        verify(secret, other_id, BODY)


@pytest.mark.parametrize(
    "signature",
    ["", "v1", "v1,", "garbage", "v2,AAAA", "v1,!!!notbase64", "v1,AAAA v1 ,,,"],
)
def test_malformed_signature_headers_fail_cleanly(signature: str) -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": signature}
    with pytest.raises(WebhookVerificationFailed):
        verify(secret, headers, BODY)


def test_missing_or_bad_timestamp_fails_cleanly() -> None:
    secret = generate_secret()
    good = signature_headers(secret, "m", int(time.time()), BODY)
    for broken in ({**good, "webhook-timestamp": "soon"}, {"webhook-id": "m"}):
        with pytest.raises(WebhookVerificationFailed):
            verify(secret, broken, BODY)


def test_rotation_accepts_any_of_several_signatures() -> None:
    old, new = generate_secret(), generate_secret()
    now = int(time.time())
    both = f"{sign(old, 'm', now, BODY)} {sign(new, 'm', now, BODY)}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": both}
    assert verify(new, headers, BODY)["data"]["id"] == "job_1"
    assert verify(old, headers, BODY)["data"]["id"] == "job_1"
