"""Shared-tier PostgreSQL against the real server: provision, credentials, rotation, backups
proven by restores, branches (template and the busy-source fallback), deprovision."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from resources.backends.base import Handle
from resources.backends.postgres_shared import PostgresShared
from resources.settings import ResourceSettings
from tests.resources.conftest import PG_DSN, connect_url

pytestmark = pytest.mark.usefixtures("pg_available")


@pytest.fixture
def backend(res_settings: ResourceSettings) -> Iterator[PostgresShared]:
    made: list[Handle] = []
    b = PostgresShared(res_settings)
    orig = b._create

    def tracking(*args, **kwargs):  # type: ignore[no-untyped-def]
        h = orig(*args, **kwargs)
        made.append(h)
        return h

    b._create = tracking  # type: ignore[method-assign]
    yield b
    for h in made:
        b.deprovision(h)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'cvy\\_res\\_%%' "
            "UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'cvy\\_res\\_%%'"
        ).fetchall()
    assert [r for r in left if any(r[0].startswith(h.state["database"]) for h in made)] == []


def _fill(url: str, rows: int) -> None:
    with connect_url(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id int primary key, body text)")
        conn.execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, %s) g "
            "ON CONFLICT DO NOTHING",
            (rows,),
        )


def _count(url: str) -> int:
    with connect_url(url) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


def test_provision_connect_and_isolation(backend: PostgresShared, ident: str) -> None:
    a = backend.provision(ident, {"connection_limit": 5})
    b = backend.provision(ident + "b", {})
    url = a.env["DATABASE_URL"]
    assert url.startswith(f"postgresql://{a.state['role']}:")
    _fill(url, 10)
    assert _count(url) == 10
    # a's role cannot open b's database (CONNECT is not PUBLIC's).
    other = url.rsplit("/", 1)[0] + "/" + b.state["database"]
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        connect_url(other)
    m = backend.metrics(a)
    assert m["connection_limit"] == 5 and m["size_bytes"] > 0


def test_rotation_old_login_fails(backend: PostgresShared, ident: str) -> None:
    h = backend.provision(ident, {})
    old_url = h.env["DATABASE_URL"]
    _fill(old_url, 5)
    held = connect_url(old_url)
    rotated = backend.rotate(h)
    assert rotated.state["role"] != h.state["role"]
    # The server trusts local connections, yet the old login is gone.
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect_url(old_url)
    # The old role's open session was ended too.
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()
    assert _count(rotated.env["DATABASE_URL"]) == 5
    _fill(rotated.env["DATABASE_URL"], 8)  # new role owns the table


def test_backup_verify_restore(backend: PostgresShared, ident: str) -> None:
    h = backend.provision(ident, {})
    _fill(h.env["DATABASE_URL"], 500)
    result = backend.backup(h, "b1")
    assert result.fingerprint["public.items"]["rows"] == 500
    assert result.size_bytes > 0
    verified = backend.verify(h, result)
    assert verified.ok, verified.mismatches
    # A tampered expectation fails verification.
    bad = type(result)(
        **{**result.__dict__, "fingerprint": {"public.items": {"rows": 1, "checksum": "0"}}}
    )
    assert not backend.verify(h, bad).ok
    # Delete the data, restore into a new resource, compare.
    with connect_url(h.env["DATABASE_URL"]) as conn:
        conn.execute("DELETE FROM items")
    restored = backend.restore(result, h, ident + "r")
    assert restored.state["database"] != h.state["database"]
    assert _count(restored.env["DATABASE_URL"]) == 500
    _fill(restored.env["DATABASE_URL"], 600)  # owned by the restored resource's role


def test_branch_by_template_is_isolated(backend: PostgresShared, ident: str) -> None:
    h = backend.provision(ident, {})
    _fill(h.env["DATABASE_URL"], 20)
    br = backend.branch(h, ident + "br")
    assert br.state["branch_method"] == "template"
    assert _count(br.env["DATABASE_URL"]) == 20
    _fill(br.env["DATABASE_URL"], 30)
    assert _count(br.env["DATABASE_URL"]) == 30
    assert _count(h.env["DATABASE_URL"]) == 20
    # The parent keeps its owner, so rotating it still works.
    backend.rotate(h)


def test_branch_with_busy_source_never_kills_sessions(backend: PostgresShared, ident: str) -> None:
    h = backend.provision(ident, {})
    _fill(h.env["DATABASE_URL"], 15)
    with connect_url(h.env["DATABASE_URL"]) as held:
        br = backend.branch(h, ident + "br")
        assert held.execute("SELECT count(*) FROM items").fetchone() == (15,)
    assert br.state["branch_method"] == "dump"
    assert _count(br.env["DATABASE_URL"]) == 15


def test_fingerprint_falls_back_to_text_for_unhashable_types(
    backend: PostgresShared, ident: str
) -> None:
    h = backend.provision(ident, {})
    with connect_url(h.env["DATABASE_URL"]) as conn:
        conn.execute("CREATE TABLE docs (id int, body json)")
        conn.execute("INSERT INTO docs VALUES (1, '{\"a\": 1}'), (2, '[]')")
        conn.execute("CREATE TABLE plain (id int)")
        conn.execute("INSERT INTO plain VALUES (1)")
    result = backend.backup(h, "b1")
    assert result.fingerprint["public.docs"]["hash"] == "text"
    assert result.fingerprint["public.plain"]["hash"] == "record"
    assert backend.verify(h, result).ok
