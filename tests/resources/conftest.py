"""Fixtures for the resources tests: real PostgreSQL / Redis / moto S3 servers on 127.0.0.1.

Every database, role, key and bucket a test creates carries the ``cvy_res_`` prefix and a
random ident, and is removed after the test. A missing server skips locally, fails in CI.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from resources.settings import ResourceSettings

PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _unavailable(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not reachable (CI=true: a missing service fails)")
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        _unavailable("PostgreSQL at 127.0.0.1:5432")


@pytest.fixture(scope="session")
def redis_available() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.ConnectionError:
        _unavailable("Redis at 127.0.0.1:6379")


@pytest.fixture
def res_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResourceSettings]:
    # Dedicated instances run as the postgres OS user: their directories must be reachable.
    data_dir = Path(f"/tmp/cvy_res_{secrets.token_hex(4)}")
    data_dir.mkdir(mode=0o755)
    yield ResourceSettings(
        pg_admin_dsn=PG_DSN,
        redis_admin_url=REDIS_URL,
        data_dir=data_dir,
        name_prefix="cvy_res_",
        pg_archive_timeout_s=1,
    )
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ident() -> str:
    return secrets.token_hex(5)


def connect_url(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, connect_timeout=5, autocommit=True)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, str]]:
    """moto's S3/IAM server on 127.0.0.1 with IAM authentication switched on after the
    three bootstrap calls that create the platform's admin user and key."""
    yield from _moto_server(iam_auth=True)


@pytest.fixture(scope="session")
def moto_s3_open() -> Iterator[dict[str, str]]:
    """moto's server without IAM enforcement: its auth emulation cannot check presigned
    (query-string) signatures, so presigned URLs are exercised here."""
    yield from _moto_server(iam_auth=False)


def _moto_server(iam_auth: bool) -> Iterator[dict[str, str]]:
    import subprocess
    import sys
    import time

    import boto3
    import httpx

    from resources.backends.base import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3" if iam_auth else "inf"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    _unavailable("moto server")
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="platform")
        iam.put_user_policy(
            UserName="platform",
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
            '"Action":"*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="platform")["AccessKey"]
        yield {
            "endpoint_url": endpoint,
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
        }
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def api_env(worker: Any, moto_s3_open: dict[str, str]) -> Iterator[Any]:
    """Resource settings for the API/worker of this process: a data dir the postgres OS
    user can reach, our name prefix, 1 s archive_timeout, moto's S3."""
    from config import get_settings
    from resources import service
    from resources.settings import ResourceSettings

    data_dir = Path(f"/tmp/cvy_res_api_{secrets.token_hex(4)}")
    data_dir.mkdir(mode=0o755)
    custom = dataclasses.replace(
        ResourceSettings.from_platform(get_settings()),
        data_dir=data_dir,
        name_prefix="cvy_res_",
        pg_archive_timeout_s=1,
        s3_endpoint_url=moto_s3_open["endpoint_url"],
        s3_access_key_id=moto_s3_open["access_key_id"],
        s3_secret_access_key=moto_s3_open["secret_access_key"],
    )
    mp = pytest.MonkeyPatch()
    service.reset_caches()
    mp.setattr(service, "resource_settings", lambda: custom)
    yield custom
    from resources.backends.postgres_dedicated import PostgresDedicated

    root = custom.instances_dir.resolve()
    for inst in root.iterdir() if root.exists() else []:
        if inst.name.startswith("pg_") or inst.name.startswith("scratch_"):
            PostgresDedicated(custom)._destroy(inst)
    mp.undo()
    service.reset_caches()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def dedicated_redis(res_settings: ResourceSettings) -> Iterator[Any]:
    """The dedicated Redis backend; every redis-server it started is stopped afterwards."""
    import signal

    from resources.backends.redis_kv import RedisDedicated

    backend = RedisDedicated(res_settings)
    yield backend
    root = res_settings.instances_dir.resolve()
    for instance in root.iterdir() if root.exists() else []:
        pid = instance / "redis.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


@pytest.fixture
def shared_redis(res_settings: ResourceSettings) -> Iterator[Any]:
    """The shared Redis backend; its ACL users and keys are removed afterwards."""
    from resources.backends.redis_kv import RedisShared

    backend = RedisShared(res_settings)
    yield backend
    admin = backend._admin()
    for user in admin.acl_users():
        name = user.decode() if isinstance(user, bytes) else user
        if name.startswith(res_settings.name_prefix):
            admin.acl_deluser(name)
    for key in admin.scan_iter(match=f"{res_settings.name_prefix}*"):
        admin.delete(key)
