"""The embedded default's S3 server (``resources.s3server``): blob resources served on this
machine, presigned PUT/GET with boto3 and plain HTTP, objects and users kept in the data dir
across restarts (a stop, and a kill after the change was flushed); with no endpoint configured
or running, ``POST /v1/resources`` refuses a blob at once, naming the setting."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from sqlalchemy import func, select

from resources.backends.blob import Blob
from resources.s3server import FLUSH_DELAY_S, recorded_endpoint
from resources.settings import ResourceSettings
from store.db import session_scope
from store.models import Job


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        (self.data_dir / "s3" / "endpoint").unlink(missing_ok=True)  # a killed one's is stale
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resources.s3server", "--data-dir", str(self.data_dir)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        deadline = time.monotonic() + 30
        while (endpoint := recorded_endpoint(self.data_dir)) is None:
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        return endpoint

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path / "data")
    yield running
    if running.proc is not None and running.proc.poll() is None:
        running.stop(signal.SIGKILL)


def _client(endpoint: str, key_id: str, secret: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def test_blob_resources_on_the_embedded_server_survive_restarts(
    server: Server, tmp_path: Path
) -> None:
    endpoint = server.start()
    settings = ResourceSettings(data_dir=tmp_path / "res", s3_endpoint_url=endpoint)
    blob = Blob(settings)
    blob.preflight()
    handle = blob.provision("emb1", {})
    bucket, secret = handle.secret["bucket"], handle.secret
    s3 = _client(endpoint, secret["access_key_id"], secret["secret_access_key"])
    put = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "a/one.txt"}, ExpiresIn=300
    )
    assert httpx.put(put, content=b"first").status_code == 200  # plain HTTP
    s3.put_object(Bucket=bucket, Key="b/two.txt", Body=b"second")  # boto3
    server.stop()  # a clean stop saves

    again = server.start()
    assert again == endpoint  # the same URL: the resource's credentials still hold
    s3 = _client(again, secret["access_key_id"], secret["secret_access_key"])
    assert s3.get_object(Bucket=bucket, Key="b/two.txt")["Body"].read() == b"second"
    get = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "a/one.txt"}, ExpiresIn=300
    )
    assert httpx.get(get).content == b"first"
    s3.put_object(Bucket=bucket, Key="c/three.txt", Body=b"third")
    time.sleep(FLUSH_DELAY_S + 1.5)  # flushed a moment after the change…
    server.stop(signal.SIGKILL)  # …so even a kill keeps it

    s3 = _client(server.start(), secret["access_key_id"], secret["secret_access_key"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["a/one.txt", "b/two.txt", "c/three.txt"]
    assert (server.data_dir / "s3" / "state.pickle").stat().st_mode & 0o777 == 0o600
    blob.deprovision(handle)


def test_blob_without_an_endpoint_is_refused_at_once(
    client: Any, org: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import get_settings
    from resources import service

    none = dataclasses.replace(ResourceSettings.from_platform(get_settings()), s3_endpoint_url=None)
    monkeypatch.setattr(service, "resource_settings", lambda: none)
    r = client.post(
        "/v1/resources", json={"type": "blob", "tier": "shared", "name": "b"}, headers=org.headers
    )
    assert r.status_code == 503, r.text
    assert "CONVEYOR_RESOURCES_S3_ENDPOINT_URL" in r.json()["error"]["message"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Job.org_id == org.org_id)) == 0
    assert client.get("/v1/resources", headers=org.headers).json()["data"] == []
