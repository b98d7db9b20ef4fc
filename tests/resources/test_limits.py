"""Limits applied to running servers (role connection limits, max_connections with a restart,
Redis maxmemory), volume size limits enforced by read-only permissions (checked as a non-root
user), and shared Redis ACL users re-applied from the stored handle after Redis forgets them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from resources.backends.base import Handle
from resources.backends.postgres_dedicated import PostgresDedicated
from resources.backends.postgres_shared import PostgresShared
from resources.backends.redis_kv import RedisDedicated, RedisShared
from resources.backends.volume import Volume
from resources.settings import ResourceSettings
from tests.resources.conftest import connect_url

NOBODY = 65534


def _show(url: str, setting: str) -> str:
    with connect_url(url) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
        assert row is not None
        return str(row[0])


@pytest.mark.usefixtures("pg_available")
def test_shared_postgres_connection_limit_applies_to_the_role(
    res_settings: ResourceSettings, ident: str
) -> None:
    backend = PostgresShared(res_settings)
    h = backend.provision(ident, {"connection_limit": 5})
    try:
        url = h.env["DATABASE_URL"]
        assert backend.apply_limits(h, {"connection_limit": 1}) == {"connection_limit": 1}
        with (
            connect_url(url),
            pytest.raises(psycopg.OperationalError, match="too many connections for role"),
        ):
            connect_url(url)
        backend.apply_limits(h, {"connection_limit": 2})
        with connect_url(url), connect_url(url):
            pass
        assert backend.usage_bytes(h) > 0
    finally:
        backend.deprovision(h)


@pytest.fixture
def dedicated_pg(res_settings: ResourceSettings) -> Iterator[PostgresDedicated]:
    b = PostgresDedicated(res_settings)
    yield b
    root = res_settings.instances_dir.resolve()
    for inst in root.iterdir() if root.exists() else []:
        b._destroy(inst)


@pytest.mark.usefixtures("pg_available")
def test_dedicated_postgres_limits_restart_only_to_raise_max_connections(
    dedicated_pg: PostgresDedicated, ident: str
) -> None:
    h = dedicated_pg.provision(ident, {"connection_limit": 10})
    url = h.env["DATABASE_URL"]
    assert _show(url, "max_connections") == "20"
    dedicated_pg.apply_limits(h, {"connection_limit": 60})  # needs a restart
    assert _show(url, "max_connections") == "70"
    pid = (Path(h.state["data_dir"]) / "postmaster.pid").read_text().split()[0]
    dedicated_pg.apply_limits(h, {"connection_limit": 1})  # the role enforces it: no restart
    assert (Path(h.state["data_dir"]) / "postmaster.pid").read_text().split()[0] == pid
    with (
        connect_url(url),
        pytest.raises(psycopg.OperationalError, match="too many connections for role"),
    ):
        connect_url(url)


@pytest.mark.usefixtures("redis_available")
def test_dedicated_redis_maxmemory_and_policy_on_the_running_server(
    dedicated_redis: RedisDedicated, ident: str
) -> None:
    h = dedicated_redis.provision(ident, {"maxmemory": "64mb", "maxmemory_policy": "allkeys-lfu"})
    assert h.state["maxmemory_policy"] == "allkeys-lfu"
    c = redis.Redis.from_url(h.env["REDIS_URL"])
    changed = dedicated_redis.apply_limits(
        h, {"maxmemory": "3mb", "maxmemory_policy": "noeviction"}
    )
    assert changed == {"maxmemory": "3mb", "maxmemory_policy": "noeviction"}
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        for i in range(100):
            c.set(f"k{i}", "x" * 100_000)
    conf = (Path(h.state["dir"]) / "redis.conf").read_text()
    assert "maxmemory 3mb" in conf  # CONFIG REWRITE: kept over a restart
    dedicated_redis.apply_limits(h, {**changed, "maxmemory_policy": "allkeys-lru"})
    for i in range(100):  # evicts instead of refusing
        c.set(f"k{i}", "x" * 100_000)
    assert 0 < c.dbsize() < 100
    dedicated_redis.deprovision(h)


@pytest.mark.usefixtures("redis_available")
def test_shared_redis_acl_user_is_reapplied_after_redis_forgets_it(
    shared_redis: RedisShared, ident: str
) -> None:
    h = shared_redis.provision(ident, {})
    other = shared_redis.provision(ident + "o", {})
    url, prefix = h.env["REDIS_URL"], h.secret["key_prefix"]
    redis.Redis.from_url(url).set(prefix + "a", "1")
    assert shared_redis.reconcile(h) is False  # matches: left alone
    admin = shared_redis._admin()
    admin.acl_deluser(h.state["user"])  # what a restart without an aclfile does
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url).ping()
    assert shared_redis.reconcile(h) is True
    assert redis.Redis.from_url(url).get(prefix + "a") == b"1"
    # Drift (a wider key pattern) is put back; a stale generation is removed.
    admin.execute_command("ACL", "SETUSER", h.state["user"], "~*")  # type: ignore[no-untyped-call]
    stale = h.state["user"].replace("_u1", "_u0")
    admin.execute_command("ACL", "SETUSER", stale, "on", ">x")  # type: ignore[no-untyped-call]
    assert shared_redis.reconcile(h) is True
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(url).set(other.secret["key_prefix"] + "x", "1")
    assert stale.encode() not in admin.acl_users()
    assert shared_redis.reconcile(h) is False


def _write_as_nobody(path: Path, data: str) -> bool:
    """Write ``path`` as an unprivileged user (root ignores permission bits)."""
    proc = subprocess.run(
        ["sh", "-c", f"printf %s '{data}' > '{path}'"],
        user=NOBODY,
        group=NOBODY,
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="writes as another user: needs root")
def test_volume_read_only_lock_holds_for_real_writers_and_is_undone(
    res_settings: ResourceSettings, ident: str
) -> None:
    vol = Volume(res_settings)
    h: Handle = vol.provision(ident, {"size_bytes": 100})
    root = Path(h.env["VOLUME_PATH"])
    root.chmod(0o777)  # the app's user may write here
    (root / "sub").mkdir(mode=0o775)
    os.chown(root / "sub", NOBODY, NOBODY)
    assert _write_as_nobody(root / "sub" / "a.txt", "a" * 80)
    assert _write_as_nobody(root / "b.txt", "b" * 80)
    modes = {p: p.stat().st_mode for p in (root, root / "sub", root / "sub" / "a.txt")}
    assert vol.usage_bytes(h) == 160
    vol.set_read_only(h, True)
    vol.set_read_only(h, True)  # idempotent: the saved modes are the original ones
    assert vol.is_read_only(h) and vol.metrics(h)["read_only"] is True
    assert not _write_as_nobody(root / "c.txt", "c")  # no new files
    assert not _write_as_nobody(root / "sub" / "a.txt", "x")  # no rewrites of old ones
    assert (root / "sub" / "a.txt").read_text() == "a" * 80
    vol.set_read_only(h, False)
    assert {p: p.stat().st_mode for p in modes} == modes
    assert _write_as_nobody(root / "c.txt", "c")
    assert not vol.is_read_only(h)
    vol.deprovision(h)
    assert not root.exists()
