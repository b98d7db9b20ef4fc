"""Shared-tier PostgreSQL: a role and a database on the platform's server.

Isolation comes from roles: CONNECT on the database is revoked from PUBLIC and granted only
through ownership, and the role has no superuser/createdb/createrole rights. Passwords matter
only as far as the server's own ``pg_hba.conf`` asks for them (trust auth accepts any
password); rotation therefore swaps the role itself, so an old login stops working anyway.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import psycopg

from resources.backends import pg
from resources.backends.base import (
    BackupResult,
    Handle,
    NoPitr,
    VerifyResult,
    compare_fingerprints,
)
from resources.settings import ResourceSettings

DEFAULT_CONNECTION_LIMIT = 20


class PostgresShared(NoPitr):
    type = "postgres"
    tier = "shared"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings
        self.admin_dsn = settings.pg_admin_dsn

    # -- naming -------------------------------------------------------------------------
    def _names(self, ident: str, generation: int = 1) -> tuple[str, str]:
        base = f"{self.settings.name_prefix}{ident}"
        return base, f"{base}_u{generation}"

    def _handle(self, db: str, role: str, generation: int, password: str, limit: int) -> Handle:
        host, port = self.settings.pg_public_host, pg.admin_port(self.admin_dsn)
        return Handle(
            state={
                "host": host,
                "port": port,
                "database": db,
                "role": role,
                "generation": generation,
                "connection_limit": limit,
            },
            secret={
                "password": password,
                "env": {"DATABASE_URL": pg.public_url(role, password, host, port, db)},
            },
        )

    def _create(self, ident: str, limits: dict[str, Any], template: str | None = None) -> Handle:
        db, role = self._names(ident)
        limit = int(limits.get("connection_limit", DEFAULT_CONNECTION_LIMIT))
        password = pg.new_password()
        with pg.connect(self.admin_dsn) as conn:
            pg.create_role(conn, role, password, limit)
        try:
            pg.create_database(self.admin_dsn, db, role, template)
        except BaseException:
            pg.drop_role(self.admin_dsn, role)
            raise
        return self._handle(db, role, 1, password, limit)

    # -- lifecycle ----------------------------------------------------------------------
    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        return self._create(ident, limits)

    def deprovision(self, handle: Handle) -> None:
        """Drop the database and every role generation of it (a rotation that stopped half
        way may have left one behind). Idempotent."""
        db = handle.state["database"]
        pg.drop_database(self.admin_dsn, db)
        with pg.connect(self.admin_dsn) as conn:
            roles = [
                r[0]
                for r in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname ~ %s", (f"^{db}_u[0-9]+$",)
                )
            ]
        for role in roles:
            pg.drop_role(self.admin_dsn, role)

    def rotate(self, handle: Handle) -> Handle:
        st = handle.state
        generation = int(st["generation"]) + 1
        _, new_role = self._names(
            st["database"].removeprefix(self.settings.name_prefix), generation
        )
        password = pg.rotate_role(
            self.admin_dsn, st["database"], st["role"], new_role, int(st["connection_limit"])
        )
        return self._handle(st["database"], new_role, generation, password, st["connection_limit"])

    # -- backups ------------------------------------------------------------------------
    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        path = self.settings.backups_dir / handle.state["database"] / backup_id / "backup.dump"
        fp = pg.dump_with_fingerprint(
            self.settings.pg_bin_dir, self.admin_dsn, handle.state["database"], path
        )
        return BackupResult(
            str(path), path.stat().st_size, fp, "pg_dump", {"database": handle.state["database"]}
        )

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        scratch = f"{self.settings.name_prefix}scratch_{secrets.token_hex(6)}"
        with pg.connect(self.admin_dsn) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(scratch))
            )
        try:
            pg.restore_dump(
                self.settings.pg_bin_dir, self.admin_dsn, scratch, Path(backup.location), None
            )
            actual = pg.database_fingerprint(self.admin_dsn, scratch)
        finally:
            pg.drop_database(self.admin_dsn, scratch)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        handle = self._create(ident, source.state)
        try:
            pg.restore_dump(
                self.settings.pg_bin_dir,
                self.admin_dsn,
                handle.state["database"],
                Path(backup.location),
                handle.state["role"],
            )
        except BaseException:
            self.deprovision(handle)
            raise
        return handle

    def branch(self, handle: Handle, ident: str) -> Handle:
        """A copy by ``CREATE DATABASE … TEMPLATE``. PostgreSQL refuses while the source has
        other sessions (it waits ~5 s for them itself); we never kill the user's sessions but
        fall back to a snapshot dump + restore, which copies the same data without them."""
        st = handle.state
        try:
            new = self._create(ident, st, template=st["database"])
        except psycopg.errors.ObjectInUse:
            new = self._create(ident, st)
            try:
                result = self.backup(handle, f"branch_{ident}")
                pg.restore_dump(
                    self.settings.pg_bin_dir,
                    self.admin_dsn,
                    new.state["database"],
                    Path(result.location),
                    new.state["role"],
                )
                shutil.rmtree(Path(result.location).parent, ignore_errors=True)
            except BaseException:
                self.deprovision(new)
                raise
            new.state["branch_method"] = "dump"
            return new
        pg.take_over(self.admin_dsn, new.state["database"], st["role"], new.state["role"])
        new.state["branch_method"] = "template"
        return new

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """The role's CONNECTION LIMIT, at once. ``size_bytes`` has no PostgreSQL quota behind
        it: the usage check (beat) reports a database past it (``degraded``, an alert)."""
        limit = int(limits.get("connection_limit", handle.state["connection_limit"]))
        pg.set_connection_limit(self.admin_dsn, handle.state["role"], limit)
        return {"connection_limit": limit}

    def usage_bytes(self, handle: Handle) -> int:
        return int(pg.database_metrics(self.admin_dsn, handle.state["database"])["size_bytes"])

    def metrics(self, handle: Handle) -> dict[str, Any]:
        metrics = pg.database_metrics(self.admin_dsn, handle.state["database"])
        return {**metrics, "connection_limit": handle.state["connection_limit"]}
