"""Blob buckets on any S3 API through boto3 (moto's server locally, or a real endpoint).

Each resource is a bucket. With ``s3_use_iam`` each bucket gets its own IAM user whose
policy allows only that bucket; rotation issues a new access key and deletes the old one.
Backups copy every object into a ``tar`` file fingerprinted per object (key + SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.config import Config

from resources.backends import files
from resources.backends.base import BackupResult, Handle, NoPitr, VerifyResult, compare_fingerprints
from resources.errors import MachineNotReady, NotSupported
from resources.settings import ResourceSettings


class Blob(NoPitr):
    type = "blob"
    tier = "shared"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings

    def _client(
        self, service: str, key_id: str | None = None, secret: str | None = None
    ) -> BaseClient:
        return boto3.client(
            service,
            endpoint_url=self.settings.s3_endpoint_url,
            region_name=self.settings.s3_region,
            aws_access_key_id=key_id or self.settings.s3_access_key_id,
            aws_secret_access_key=secret or self.settings.s3_secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def preflight(self) -> None:
        """Before a blob resource or job exists: an S3 endpoint is configured and answers (else
        503 naming the setting; the public internet is never tried by default)."""
        endpoint = self.settings.s3_endpoint_url
        if not endpoint:
            raise MachineNotReady(
                "Blob resources need an S3 endpoint and none is configured or running here: "
                "set CONVEYOR_RESOURCES_S3_ENDPOINT_URL (https://s3.amazonaws.com for AWS), or "
                "run the embedded default with `conveyor up`, which serves one."
            )
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=3).close()
        except OSError as exc:
            raise MachineNotReady(
                f"The S3 endpoint {endpoint} (CONVEYOR_RESOURCES_S3_ENDPOINT_URL, or the "
                f"embedded server of `conveyor up`) does not answer: {exc}."
            ) from exc

    def _bucket(self, ident: str) -> str:
        return f"{self.settings.name_prefix}{ident}".replace("_", "-").lower()

    def _handle(self, ident: str, bucket: str, key_id: str, secret: str) -> Handle:
        endpoint = self.settings.s3_endpoint_url or ""
        return Handle(
            state={
                "ident": ident,
                "bucket": bucket,
                "endpoint_url": endpoint,
                "access_key_id": key_id,
            },
            secret={
                "endpoint_url": endpoint,
                "bucket": bucket,
                "access_key_id": key_id,
                "secret_access_key": secret,
                "env": {
                    "BLOB_URL": f"s3://{bucket}",
                    "BLOB_ENDPOINT_URL": endpoint,
                    "BLOB_BUCKET": bucket,
                    "BLOB_ACCESS_KEY_ID": key_id,
                    "BLOB_SECRET_ACCESS_KEY": secret,
                },
            },
        )

    def _new_key(self, user: str) -> tuple[str, str]:
        key = self._client("iam").create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def _create(self, ident: str) -> Handle:
        self.preflight()
        bucket = self._bucket(ident)
        self._client("s3").create_bucket(Bucket=bucket)
        if not self.settings.s3_use_iam:
            return self._handle(
                ident, bucket, self.settings.s3_access_key_id, self.settings.s3_secret_access_key
            )
        iam = self._client("iam")
        iam.create_user(UserName=bucket)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:*",
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName=bucket, PolicyName="bucket", PolicyDocument=json.dumps(policy))
        return self._handle(ident, bucket, *self._new_key(bucket))

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        return self._create(ident)

    def _keys(self, bucket: str) -> Iterator[dict[str, Any]]:
        pages = self._client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            yield from page.get("Contents", [])

    def _empty_and_delete(self, bucket: str) -> None:
        s3 = self._client("s3")
        batch: list[dict[str, str]] = []
        for obj in self._keys(bucket):
            batch.append({"Key": obj["Key"]})
            if len(batch) == 1000:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch})
                batch = []
        if batch:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch})
        s3.delete_bucket(Bucket=bucket)

    def deprovision(self, handle: Handle) -> None:
        bucket = handle.state["bucket"]
        s3 = self._client("s3")
        if bucket in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            self._empty_and_delete(bucket)
        if self.settings.s3_use_iam:
            iam = self._client("iam")
            try:
                keys = iam.list_access_keys(UserName=bucket)["AccessKeyMetadata"]
            except iam.exceptions.NoSuchEntityException:
                return
            for key in keys:
                iam.delete_access_key(UserName=bucket, AccessKeyId=key["AccessKeyId"])
            iam.delete_user_policy(UserName=bucket, PolicyName="bucket")
            iam.delete_user(UserName=bucket)

    def rotate(self, handle: Handle) -> Handle:
        if not self.settings.s3_use_iam:
            raise NotSupported("this S3 endpoint is used without IAM: its keys are the platform's")
        bucket = handle.state["bucket"]
        new = self._handle(handle.state["ident"], bucket, *self._new_key(bucket))
        self._client("iam").delete_access_key(
            UserName=bucket, AccessKeyId=handle.state["access_key_id"]
        )
        return new

    def presign(self, handle: Handle, key: str, method: str, expires_in: int) -> str:
        client = self._client(
            "s3", handle.secret["access_key_id"], handle.secret["secret_access_key"]
        )
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        url: str = client.generate_presigned_url(
            operation, Params={"Bucket": handle.state["bucket"], "Key": key}, ExpiresIn=expires_in
        )
        return url

    # -- backups ------------------------------------------------------------------------------
    def _fingerprint(self, bucket: str) -> tuple[Any, list[tuple[str, bytes]]]:
        s3 = self._client("s3")
        objects = []
        for obj in self._keys(bucket):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            objects.append((obj["Key"], body))
        fp = files.fingerprint(((k, hashlib.sha256(b).hexdigest()) for k, b in objects), "objects")
        return fp, objects

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        dest = self.settings.backups_dir / handle.state["ident"] / backup_id / "objects.tar"
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3, bucket = self._client("s3"), handle.state["bucket"]
        digests: list[tuple[str, str]] = []
        with tarfile.open(dest, "w") as tar:
            for obj in self._keys(bucket):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                digests.append((obj["Key"], hashlib.sha256(body).hexdigest()))
                info = tarfile.TarInfo(obj["Key"])
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        fp = files.fingerprint(digests, "objects")
        return BackupResult(str(dest), dest.stat().st_size, fp, "s3-copy")

    def _upload(self, archive: Path, bucket: str) -> None:
        s3 = self._client("s3")
        with tarfile.open(archive, "r") as tar:
            for member in tar:
                fh = tar.extractfile(member)
                if fh is not None:
                    s3.put_object(Bucket=bucket, Key=member.name, Body=fh.read())

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        scratch = self._bucket(f"scratch-{secrets.token_hex(6)}")
        self._client("s3").create_bucket(Bucket=scratch)
        try:
            self._upload(Path(backup.location), scratch)
            actual, _ = self._fingerprint(scratch)
        finally:
            self._empty_and_delete(scratch)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        handle = self._create(ident)
        self._upload(Path(backup.location), handle.state["bucket"])
        return handle

    def branch(self, handle: Handle, ident: str) -> Handle:
        new = self._create(ident)
        s3 = self._client("s3")
        for obj in self._keys(handle.state["bucket"]):
            s3.copy_object(
                Bucket=new.state["bucket"],
                Key=obj["Key"],
                CopySource={"Bucket": handle.state["bucket"], "Key": obj["Key"]},
            )
        return new

    def metrics(self, handle: Handle) -> dict[str, Any]:
        count = size = 0
        for obj in self._keys(handle.state["bucket"]):
            count += 1
            size += int(obj["Size"])
        return {"objects": count, "size_bytes": size}
