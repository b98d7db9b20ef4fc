"""PostgreSQL building blocks shared by the shared and dedicated tiers.

Roles and databases, rotation by a new role (old login removed), consistent ``pg_dump`` from
an exported snapshot with a fingerprint (row count + order-free checksum per table) computed
in that same snapshot, restore with ``pg_restore``, and branch copies.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from resources.backends.base import Fingerprint
from resources.backends.proc import run
from resources.errors import BackendError

# Every ordinary, permanent table outside the system schemas (unlogged tables do not survive
# a physical restore, so they are left out of the comparison on every tier alike).
TABLES_QUERY = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""


def new_password() -> str:
    return secrets.token_urlsafe(24)


def configured(admin_dsn: str) -> str:
    """``admin_dsn``, refusing an empty one: libpq would pick a local server on its own."""
    if not admin_dsn:
        raise BackendError(
            "No PostgreSQL server is configured for resources: set "
            "CONVEYOR_RESOURCES_PG_ADMIN_DSN (or run the store on PostgreSQL)."
        )
    return admin_dsn


def dsn_for(admin_dsn: str, dbname: str) -> str:
    return make_conninfo(configured(admin_dsn), dbname=dbname)


def connect(admin_dsn: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    dsn = dsn_for(admin_dsn, dbname) if dbname else configured(admin_dsn)
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def public_url(role: str, password: str, host: str, port: int, dbname: str) -> str:
    return f"postgresql://{role}:{password}@{host}:{port}/{dbname}"


def admin_port(admin_dsn: str) -> int:
    return int(conninfo_to_dict(admin_dsn).get("port") or 5432)


def create_role(conn: psycopg.Connection[Any], role: str, password: str, conn_limit: int) -> None:
    conn.execute(
        sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            "CONNECTION LIMIT {} PASSWORD {}"
        ).format(sql.Identifier(role), sql.Literal(conn_limit), sql.Literal(password))
    )


def set_connection_limit(admin_dsn: str, role: str, conn_limit: int) -> None:
    """The role's CONNECTION LIMIT, effective for the next login (sessions beyond it are not
    killed; a new login past the limit is refused with ``too many connections for role``)."""
    with connect(admin_dsn) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                sql.Identifier(role), sql.Literal(conn_limit)
            )
        )


def create_database(admin_dsn: str, dbname: str, owner: str, template: str | None = None) -> None:
    """Create ``dbname`` owned by ``owner``; only its owner may connect (CONNECT revoked
    from PUBLIC, which a template copy does not carry over)."""
    with connect(admin_dsn) as conn:
        query = sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(dbname), sql.Identifier(owner)
        )
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(query)
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname))
        )
    if template is None:
        with connect(admin_dsn, dbname) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))


def take_over(admin_dsn: str, dbname: str, old: str, new: str) -> None:
    """Give everything ``old`` owns inside ``dbname`` (and ``dbname`` itself) to ``new``, and
    revoke what was granted to ``old`` there. Shared objects ``old`` owns elsewhere (another
    database) are given back in the same transaction."""
    with connect(admin_dsn) as conn:
        owned = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE r.rolname = %s AND datname <> %s",
                (old, dbname),
            )
        ]
    with connect(admin_dsn, dbname) as conn, conn.transaction():
        conn.execute(
            sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(old), sql.Identifier(new))
        )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(old)))
        for other in owned:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(other), sql.Identifier(old)
                )
            )


def terminate_sessions(admin_dsn: str, *, role: str | None = None, db: str | None = None) -> None:
    with connect(admin_dsn) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND (%s::text IS NULL OR usename = %s) "
            "AND (%s::text IS NULL OR datname = %s)",
            (role, role, db, db),
        )


def rotate_role(admin_dsn: str, dbname: str, old: str, new: str, conn_limit: int) -> str:
    """New role ``new`` takes over ``dbname``; ``old`` loses its login, its sessions and is
    dropped. Returns the new password."""
    password = new_password()
    with connect(admin_dsn) as conn:
        create_role(conn, new, password, conn_limit)
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(old)))
    terminate_sessions(admin_dsn, role=old)
    take_over(admin_dsn, dbname, old, new)
    with connect(admin_dsn) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(old)))
    return password


def drop_database(admin_dsn: str, dbname: str) -> None:
    with connect(admin_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def drop_role(admin_dsn: str, role: str) -> None:
    with connect(admin_dsn) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
    if exists:
        terminate_sessions(admin_dsn, role=role)
        with connect(admin_dsn) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def fingerprint(conn: psycopg.Connection[Any]) -> Fingerprint:
    """Row count and an order-free checksum (the sum of 64-bit row hashes) per table, read in
    the connection's current transaction/snapshot. Rows hash by their columns' own hash
    functions (``hash_record_extended``); a table with a type that has none (json, point …)
    hashes its rows' text form instead."""
    result: Fingerprint = {}
    for schema, table in conn.execute(TABLES_QUERY).fetchall():
        name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        try:
            with conn.transaction():
                row = conn.execute(
                    sql.SQL(
                        "SELECT count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text "
                        "FROM {} AS t"
                    ).format(name)
                ).fetchone()
            method = "record"
        except psycopg.errors.UndefinedFunction:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
                    "FROM {} AS t"
                ).format(name)
            ).fetchone()
            method = "text"
        count, checksum = row or (0, "0")
        result[f"{schema}.{table}"] = {
            "rows": int(count),
            "checksum": str(checksum),
            "hash": method,
        }
    return result


def database_fingerprint(admin_dsn: str, dbname: str) -> Fingerprint:
    with psycopg.connect(dsn_for(admin_dsn, dbname)) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return fingerprint(conn)


def dump_with_fingerprint(
    bin_dir: Path, admin_dsn: str, dbname: str, dest: Path, compress: int = 1
) -> Fingerprint:
    """``pg_dump -Fc -Z<compress>`` of ``dbname`` into ``dest`` and the fingerprint of exactly
    the data it dumped: both read one exported snapshot, computed side by side. Level 1 (not
    pg_dump's default 6) because compression, not reading, bounds a dump's speed: ~2-3x faster
    for ~10% larger files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn_for(admin_dsn, dbname)) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        proc = subprocess.Popen(
            [
                str(bin_dir / "pg_dump"),
                "-Fc",
                f"-Z{compress}",
                f"--snapshot={row[0]}",
                "-f",
                str(dest),
                f"--dbname={dsn_for(admin_dsn, dbname)}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            fp = fingerprint(conn)
        finally:
            _, err = proc.communicate()
        if proc.returncode != 0:
            raise BackendError(f"pg_dump failed (exit {proc.returncode}): {err.strip()[-800:]}")
    return fp


def restore_dump(bin_dir: Path, admin_dsn: str, dbname: str, src: Path, role: str | None) -> None:
    args = [
        str(bin_dir / "pg_restore"),
        "--no-owner",
        "--no-acl",
        "--exit-on-error",
        "--single-transaction",
        f"--dbname={dsn_for(admin_dsn, dbname)}",
    ]
    if role:
        args.append(f"--role={role}")
    run([*args, str(src)])


def database_metrics(admin_dsn: str, dbname: str) -> dict[str, Any]:
    with connect(admin_dsn) as conn:
        row = conn.execute(
            "SELECT pg_database_size(d.datname), s.numbackends "
            "FROM pg_database d LEFT JOIN pg_stat_database s ON s.datname = d.datname "
            "WHERE d.datname = %s",
            (dbname,),
        ).fetchone()
    if row is None:
        raise BackendError(f"database {dbname} does not exist")
    return {"size_bytes": int(row[0]), "connections": int(row[1] or 0)}
