"""Redis resources against real servers: the shared tier (ACL user on a key prefix of the
platform's Redis) and the dedicated tier (its own redis-server): isolation, rotation,
backups proven by restores, restore and branch into new resources."""

from __future__ import annotations

import pytest
import redis

from resources.backends.base import Handle
from resources.backends.redis_kv import RedisDedicated, RedisShared

pytestmark = pytest.mark.usefixtures("redis_available")


def _client(h: Handle) -> redis.Redis:
    return redis.Redis.from_url(h.env["REDIS_URL"])


def test_shared_prefix_isolation_and_rotation(shared_redis: RedisShared, ident: str) -> None:
    a = shared_redis.provision(ident, {})
    b = shared_redis.provision(ident + "b", {})
    ca = _client(a)
    prefix = a.secret["key_prefix"]
    ca.set(prefix + "x", "1")
    assert ca.get(prefix + "x") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        ca.set(b.secret["key_prefix"] + "x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ca.keys("*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ca.flushall()
    rotated = shared_redis.rotate(a)
    with pytest.raises(redis.exceptions.AuthenticationError):
        _client(a).ping()
    assert _client(rotated).get(prefix + "x") == b"1"
    assert shared_redis.metrics(rotated)["keys"] == 1
    shared_redis.deprovision(rotated)
    assert shared_redis._admin().exists(prefix + "x") == 0


def test_shared_backup_verify_restore_branch(shared_redis: RedisShared, ident: str) -> None:
    h = shared_redis.provision(ident, {})
    c, p = _client(h), h.secret["key_prefix"]
    for i in range(1200):
        c.set(f"{p}k{i}", str(i))
    c.hset(p + "h", mapping={"a": "1"})
    c.set(p + "ttl", "v", ex=3600)
    backup = shared_redis.backup(h, "b1")
    assert backup.fingerprint["keys"]["rows"] == 1202
    verified = shared_redis.verify(h, backup)
    assert verified.ok, verified.mismatches
    c.delete(p + "h")
    restored = shared_redis.restore(backup, h, ident + "r")
    cr, pr = _client(restored), restored.secret["key_prefix"]
    assert cr.hgetall(pr + "h") == {b"a": b"1"}
    assert cr.get(pr + "k1199") == b"1199"
    assert 0 < cr.ttl(pr + "ttl") <= 3600
    br = shared_redis.branch(h, ident + "br")
    cb, pb = _client(br), br.secret["key_prefix"]
    cb.set(pb + "only-branch", "1")
    assert c.exists(p + "only-branch") == 0
    assert shared_redis.metrics(br)["keys"] == 1202


def test_dedicated_auth_backup_verify_restore(dedicated_redis: RedisDedicated, ident: str) -> None:
    dedicated = dedicated_redis
    h = dedicated.provision(ident, {"maxmemory": "64mb"})
    c = _client(h)
    for i in range(300):
        c.set(f"k{i}", i)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=h.state["port"], username=h.state["user"], password="wrong").ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.config_get("*")
    backup = dedicated.backup(h, "b1")
    assert backup.fingerprint == {"db0": {"rows": 300, "expires": 0}}
    assert dedicated.verify(h, backup).ok
    c.flushall()
    restored = dedicated.restore(backup, h, ident + "r")
    assert _client(restored).dbsize() == 300
    rotated = dedicated.rotate(h)
    with pytest.raises(redis.exceptions.AuthenticationError):
        _client(h).ping()
    assert _client(rotated).dbsize() == 0
    dedicated.deprovision(rotated)
    dedicated.deprovision(restored)
    with pytest.raises(redis.ConnectionError):
        _client(restored).ping()
