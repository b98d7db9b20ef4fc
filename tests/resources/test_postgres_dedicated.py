"""Dedicated-tier PostgreSQL: a real instance per resource (initdb/pg_ctl as the postgres OS
user), WAL archiving, base backups proven by recovery, PITR into new instances, the
restorable window, archive-failure detection, rotation with password auth, branches."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from resources.backends.base import BackupResult, Handle
from resources.backends.postgres_dedicated import PostgresDedicated
from resources.errors import OutsideWindow
from resources.settings import ResourceSettings
from tests.resources.conftest import connect_url

pytestmark = pytest.mark.usefixtures("pg_available")


@pytest.fixture
def backend(res_settings: ResourceSettings) -> Iterator[PostgresDedicated]:
    b = PostgresDedicated(res_settings)
    yield b
    # Stop every instance this test started (its directory is removed with data_dir).
    inst_root = res_settings.instances_dir.resolve()
    for inst in inst_root.iterdir() if inst_root.exists() else []:
        b._destroy(inst)


@pytest.fixture
def instance(backend: PostgresDedicated, ident: str) -> Handle:
    return backend.provision(ident, {"connection_limit": 10})


def _exec(url: str, *stmts: str) -> None:
    with connect_url(url) as conn:
        for stmt in stmts:
            conn.execute(stmt)


def _ids(url: str) -> list[int]:
    with connect_url(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")]


def test_password_auth_and_rotation(backend: PostgresDedicated, instance: Handle) -> None:
    url = instance.env["DATABASE_URL"]
    _exec(url, "CREATE TABLE t (id int)", "INSERT INTO t VALUES (1)")
    wrong = url.replace(instance.secret["password"], "wrong")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_url(wrong)
    rotated = backend.rotate(instance)
    with pytest.raises(psycopg.OperationalError):
        connect_url(url)
    assert _ids(rotated.env["DATABASE_URL"]) == [1]
    assert backend.metrics(rotated)["archiver"]["status"] == "ok"


def test_backup_verify_restore_and_branch(backend: PostgresDedicated, instance: Handle) -> None:
    url = instance.env["DATABASE_URL"]
    _exec(
        url, "CREATE TABLE t (id int primary key)", "INSERT INTO t SELECT generate_series(1, 100)"
    )
    backup = backend.backup(instance, "b1")
    assert backup.fingerprint["public.t"]["rows"] == 100
    _exec(url, "INSERT INTO t VALUES (101)")  # after the restore point: not in the backup
    verified = backend.verify(instance, backup)
    assert verified.ok, verified.mismatches
    _exec(url, "DELETE FROM t")
    restored = backend.restore(backup, instance, instance.state["ident"] + "r")
    assert restored.state["port"] != instance.state["port"]
    assert _ids(restored.env["DATABASE_URL"]) == list(range(1, 101))
    # The source's password does not open the restored resource.
    with pytest.raises(psycopg.OperationalError):
        connect_url(url.replace(str(instance.state["port"]), str(restored.state["port"])))
    # Branch: a copy now; writes to it do not reach the parent.
    _exec(url, "INSERT INTO t VALUES (7)")
    br = backend.branch(instance, instance.state["ident"] + "b")
    _exec(br.env["DATABASE_URL"], "INSERT INTO t VALUES (8)")
    assert _ids(br.env["DATABASE_URL"]) == [7, 8]
    assert _ids(url) == [7]


def test_pitr_restores_exactly_the_rows_at_t1(backend: PostgresDedicated, instance: Handle) -> None:
    url = instance.env["DATABASE_URL"]
    _exec(url, "CREATE TABLE t (id int primary key)")
    backup = backend.backup(instance, "b1")
    _exec(url, "INSERT INTO t SELECT generate_series(1, 10)")
    time.sleep(0.2)
    t1 = datetime.now(UTC)
    time.sleep(0.2)
    _exec(url, "INSERT INTO t SELECT generate_series(11, 20)")
    # Wait until the archive holds a commit after t1 (archive_timeout = 1 s here).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        last = backend.last_archived_commit(instance.state["archive_dir"])
        if last is not None and last > t1:
            break
        time.sleep(0.5)
    window = backend.window(instance, [backup])
    assert window.contains(t1)
    # Archived segments are gzip'd: a segment padded by archive_timeout is mostly zeros.
    archived = [p for p in Path(instance.state["archive_dir"]).iterdir() if len(p.name) == 27]
    assert archived and all(p.suffix == ".gz" and p.stat().st_size < 4 << 20 for p in archived)
    restored = backend.pitr(instance, [backup], t1, instance.state["ident"] + "p")
    assert _ids(restored.env["DATABASE_URL"]) == list(range(1, 11))
    # Past the last archived commit: refused before any work, naming the window.
    late = window.restorable_until + timedelta(minutes=5)
    with pytest.raises(OutsideWindow, match="restorable window") as exc:
        backend.pitr(instance, [backup], late, instance.state["ident"] + "q")
    assert window.restorable_until.isoformat() in exc.value.message
    assert not (backend._instance_dir(instance.state["ident"] + "q")).exists()
    early = window.restorable_from - timedelta(seconds=1)
    with pytest.raises(OutsideWindow):
        backend.pitr(instance, [backup], early, instance.state["ident"] + "q")


def test_archive_failure_is_detected(backend: PostgresDedicated, instance: Handle) -> None:
    archive = Path(instance.state["archive_dir"])
    assert backend.health(instance)["status"] == "ok"
    os.chmod(archive, 0o500)  # the postgres user can no longer write segments
    try:
        _exec(instance.env["DATABASE_URL"], "CREATE TABLE t (id int)")
        with psycopg.connect(backend.admin_dsn(instance.state), autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while backend.health(instance)["status"] != "failing" and time.monotonic() < deadline:
            time.sleep(0.3)
        health = backend.health(instance)
        assert health["status"] == "failing" and health["failed_count"] >= 1
    finally:
        os.chmod(archive, 0o755)
    deadline = time.monotonic() + 60
    while backend.health(instance)["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert backend.health(instance)["status"] == "ok"


def test_archive_pruned_to_the_oldest_kept_base_backup(
    backend: PostgresDedicated, instance: Handle
) -> None:
    url = instance.env["DATABASE_URL"]
    archive = Path(instance.state["archive_dir"])
    _exec(url, "CREATE TABLE t (id int)")
    first = backend.backup(instance, "b1")
    for i in range(3):
        _exec(url, f"INSERT INTO t VALUES ({i})")
        with psycopg.connect(backend.admin_dsn(instance.state), autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
    second = backend.backup(instance, "b2")

    def segments() -> set[str]:
        return {p.name[:24] for p in archive.iterdir() if len(p.name) == 27}

    def start(b: BackupResult) -> str:
        label = (Path(b.location) / "backup_label").read_text()
        return label.split("(file ", 1)[1][:24]

    before = segments()
    backend.prune_archive(instance, [first, second])
    kept = segments()
    assert {s for s in before if s >= start(first)} <= kept  # b1 still needs them
    assert all(s >= start(first) for s in kept)
    backend.prune_archive(instance, [second])
    assert all(s >= start(second) for s in segments())
    assert len(segments()) < len(kept)
    assert backend.verify(instance, second).ok  # what b2 needs is still there


def test_a_data_dir_under_a_0700_parent(ident: str) -> None:
    """The platform runs as root with its checkout in /root (0700): the postgres OS user gets
    search access to the parents (ACL ``u:postgres:x``) and the instance starts."""
    import secrets
    import shutil
    import subprocess

    from tests.resources.conftest import PG_DSN, REDIS_URL

    private = Path(f"/tmp/cvy_private_{secrets.token_hex(4)}")
    private.mkdir(mode=0o700)
    try:
        settings = ResourceSettings(
            pg_admin_dsn=PG_DSN,
            redis_admin_url=REDIS_URL,
            data_dir=private / "checkout" / ".data" / "resources",
            name_prefix="cvy_res_",
            pg_archive_timeout_s=1,
        )
        backend = PostgresDedicated(settings)
        handle = backend.provision(ident, {"connection_limit": 5})
        try:
            _exec(handle.env["DATABASE_URL"], "CREATE TABLE t (id int)", "INSERT INTO t VALUES (7)")
            assert _ids(handle.env["DATABASE_URL"]) == [7]
        finally:
            backend._destroy(settings.instances_dir / f"pg_{ident}")
        assert private.stat().st_mode & 0o007 == 0  # others still locked out: one user's ACL
        acl = subprocess.run(["getfacl", "-p", str(private)], capture_output=True, text=True)
        assert f"user:{settings.pg_os_user}:--x" in acl.stdout
    finally:
        shutil.rmtree(private, ignore_errors=True)
