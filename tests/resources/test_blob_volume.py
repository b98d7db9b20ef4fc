"""Blob buckets on moto's real S3 API server (IAM auth on: per-bucket users, rotation,
presigned URLs) and local volumes: backups proven by restores, restore and branch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from resources.backends.blob import Blob
from resources.backends.volume import Volume
from resources.errors import NotSupported
from resources.settings import ResourceSettings


def _blob(settings: ResourceSettings, server: dict[str, str]) -> Blob:
    return Blob(
        dataclasses.replace(
            settings,
            s3_endpoint_url=server["endpoint_url"],
            s3_access_key_id=server["access_key_id"],
            s3_secret_access_key=server["secret_access_key"],
        )
    )


@pytest.fixture
def blob(res_settings: ResourceSettings, moto_s3: dict[str, str]) -> Blob:
    return _blob(res_settings, moto_s3)


@pytest.fixture
def open_blob(res_settings: ResourceSettings, moto_s3_open: dict[str, str]) -> Blob:
    return _blob(res_settings, moto_s3_open)


def _s3(secret: dict[str, str]):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=secret["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=secret["access_key_id"],
        aws_secret_access_key=secret["secret_access_key"],
    )


def test_blob_presigned_urls(open_blob: Blob, ident: str) -> None:
    a = open_blob.provision(ident, {})
    try:
        _s3(a.secret).put_object(Bucket=a.state["bucket"], Key="x.txt", Body=b"hello")
        assert httpx.get(open_blob.presign(a, "x.txt", "GET", 60)).content == b"hello"
        put = open_blob.presign(a, "up.txt", "PUT", 60)
        assert httpx.put(put, content=b"uploaded").status_code == 200
        got = _s3(a.secret).get_object(Bucket=a.state["bucket"], Key="up.txt")
        assert got["Body"].read() == b"uploaded"
    finally:
        open_blob.deprovision(a)


def test_blob_isolation_and_rotation(blob: Blob, ident: str) -> None:
    a, b = blob.provision(ident, {}), blob.provision(ident + "b", {})
    try:
        s3a = _s3(a.secret)
        s3a.put_object(Bucket=a.state["bucket"], Key="x.txt", Body=b"hello")
        with pytest.raises(ClientError, match="AccessDenied"):
            s3a.put_object(Bucket=b.state["bucket"], Key="x.txt", Body=b"nope")
        rotated = blob.rotate(a)
        with pytest.raises(ClientError):
            _s3(a.secret).get_object(Bucket=a.state["bucket"], Key="x.txt")
        assert (
            _s3(rotated.secret).get_object(Bucket=a.state["bucket"], Key="x.txt")["Body"].read()
            == b"hello"
        )
        assert blob.metrics(rotated) == {"objects": 1, "size_bytes": 5}
    finally:
        blob.deprovision(a)
        blob.deprovision(b)


def test_blob_backup_verify_restore_branch(blob: Blob, ident: str) -> None:
    h = blob.provision(ident, {})
    made = [h]
    try:
        s3 = _s3(h.secret)
        for i in range(20):
            s3.put_object(Bucket=h.state["bucket"], Key=f"dir/{i}.bin", Body=bytes([i]) * 100)
        backup = blob.backup(h, "b1")
        assert backup.fingerprint["objects"]["rows"] == 20
        assert blob.verify(h, backup).ok
        s3.delete_object(Bucket=h.state["bucket"], Key="dir/3.bin")
        restored = blob.restore(backup, h, ident + "r")
        made.append(restored)
        body = _s3(restored.secret).get_object(Bucket=restored.state["bucket"], Key="dir/3.bin")[
            "Body"
        ]
        assert body.read() == bytes([3]) * 100
        br = blob.branch(h, ident + "br")
        made.append(br)
        _s3(br.secret).put_object(Bucket=br.state["bucket"], Key="only-branch", Body=b"1")
        assert blob.metrics(h)["objects"] == 19
        assert blob.metrics(br)["objects"] == 20
    finally:
        for m in made:
            blob.deprovision(m)


def test_volume_backup_verify_restore_branch(res_settings: ResourceSettings, ident: str) -> None:
    vol = Volume(res_settings)
    h = vol.provision(ident, {"size_bytes": 1000})
    root = Path(h.env["VOLUME_PATH"])
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("a" * 600)
    (root / "b.txt").write_text("b" * 600)
    assert vol.metrics(h) == {
        "used_bytes": 1200,
        "limit_bytes": 1000,
        "over_limit": True,
        "read_only": False,
    }
    backup = vol.backup(h, "b1")
    assert backup.fingerprint["files"]["rows"] == 2
    assert vol.verify(h, backup).ok
    tampered = dataclasses.replace(backup, fingerprint={"files": {"rows": 2, "checksum": "1"}})
    assert not vol.verify(h, tampered).ok
    (root / "b.txt").unlink()
    restored = vol.restore(backup, h, ident + "r")
    assert (Path(restored.env["VOLUME_PATH"]) / "b.txt").read_text() == "b" * 600
    br = vol.branch(h, ident + "br")
    (Path(br.env["VOLUME_PATH"]) / "new").write_text("x")
    assert not (root / "new").exists()
    with pytest.raises(NotSupported):
        vol.rotate(h)
    for x in (h, restored, br):
        vol.deprovision(x)
    assert not root.exists()
