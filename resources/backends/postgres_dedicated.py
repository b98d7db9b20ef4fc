"""Dedicated-tier PostgreSQL: one server instance per resource, started from the machine's
PostgreSQL binaries (``initdb``/``pg_ctl``, own data directory, port and socket).

WAL is archived continuously (``archive_command`` into the resource's archive, with
``archive_timeout`` so quiet databases stay restorable). A backup is a ``pg_basebackup`` plus
a named restore point whose data is fingerprinted; verification and restores replay the base
backup and the archive into a new data directory (``restore_command`` + a recovery target),
then promote. Archive failures come from ``pg_stat_archiver`` and are never silent.

Apps connect over TCP with a password (``scram-sha-256``); the platform administers through
the instance's Unix socket as the ``postgres`` superuser.
"""

from __future__ import annotations

import gzip
import re
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from resources.backends import pg
from resources.backends.base import (
    BackupResult,
    Handle,
    VerifyResult,
    Window,
    compare_fingerprints,
    free_port,
)
from resources.backends.proc import chown_tree, ensure_reachable, run
from resources.errors import BackendError, NotSupported, OutsideWindow
from resources.settings import ResourceSettings

DB = "app"
DEFAULT_CONNECTION_LIMIT = 50
_SEGMENT = re.compile(r"^([0-9A-F]{24})\.gz$")
_START_WAL = re.compile(r"START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)")
_COMMIT = re.compile(r"COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")


def _conf(lines: dict[str, str | int]) -> str:
    out = []
    for key, value in lines.items():
        text = str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"
        out.append(f"{key} = {text}")
    return "\n".join(out) + "\n"


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


class PostgresDedicated:
    type = "postgres"
    tier = "dedicated"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings
        self.user = settings.pg_os_user
        self._reachable = False

    # -- paths and plumbing -------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(self.settings.pg_bin_dir / name)

    def _instance_dir(self, ident: str) -> Path:
        return (self.settings.instances_dir / f"pg_{ident}").resolve()

    def _archive_dir(self, ident: str) -> Path:
        return (self.settings.backups_dir / ident / "wal").resolve()

    def _mkdirs(self, *paths: Path) -> None:
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            chown_tree(path, self.user)

    @staticmethod
    def admin_dsn(state: dict[str, Any]) -> str:
        return f"host={state['socket_dir']} port={state['port']} user=postgres dbname=postgres"

    def _start(self, data: Path, log: Path) -> None:
        run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(self.settings.start_timeout_s)),
                "start",
            ],
            user=self.user,
            timeout=self.settings.start_timeout_s + 10,
        )

    def _stop(self, data: Path, mode: str = "fast") -> None:
        if (data / "postmaster.pid").exists():
            run(
                [self._bin("pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"],
                user=self.user,
                ok_codes=(0, 1),
            )

    def _server_conf(
        self, port: int, socket_dir: Path, archive: Path, limit: int
    ) -> dict[str, str | int]:
        return {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "unix_socket_directories": str(socket_dir),
            "max_connections": limit + 10,
            "shared_buffers": self.settings.pg_shared_buffers,
            "wal_level": "replica",
            "max_wal_senders": 4,
            "archive_mode": "on",
            # gzip: archive_timeout pads quiet segments to 16 MB with zeros; they shrink to KBs.
            "archive_command": (
                f"test ! -f '{archive}/%f.gz' && gzip -1 -c '%p' > '{archive}/%f.gz.tmp' "
                f"&& mv '{archive}/%f.gz.tmp' '{archive}/%f.gz'"
            ),
            "archive_timeout": self.settings.pg_archive_timeout_s,
            "logging_collector": "off",
        }

    def _handle(
        self, ident: str, port: int, role: str, generation: int, password: str, limit: int
    ) -> Handle:
        inst = self._instance_dir(ident)
        host = self.settings.pg_public_host
        return Handle(
            state={
                "ident": ident,
                "host": host,
                "port": port,
                "database": DB,
                "role": role,
                "generation": generation,
                "connection_limit": limit,
                "data_dir": str(inst / "data"),
                "socket_dir": str(inst / "sock"),
                "archive_dir": str(self._archive_dir(ident)),
            },
            secret={
                "password": password,
                "env": {"DATABASE_URL": pg.public_url(role, password, host, port, DB)},
            },
        )

    # -- lifecycle ----------------------------------------------------------------------
    def preflight(self) -> None:
        """Before a resource or job exists: the server's OS user can reach its directories
        (parents made enterable when we are root; else 503 saying what to change)."""
        if self._reachable:
            return
        for root in (self.settings.instances_dir, self.settings.backups_dir):
            root.mkdir(parents=True, exist_ok=True)
            ensure_reachable(root / "x", self.user)
        self._reachable = True

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        inst, archive = self._instance_dir(ident), self._archive_dir(ident)
        if inst.exists():
            raise BackendError(f"instance directory {inst} already exists")
        self.preflight()
        limit = int(limits.get("connection_limit", DEFAULT_CONNECTION_LIMIT))
        self._mkdirs(inst, inst / "sock", archive)
        data, port = inst / "data", free_port()
        try:
            run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ],
                user=self.user,
            )
            with (data / "postgresql.conf").open("a") as fh:
                fh.write(_conf(self._server_conf(port, inst / "sock", archive, limit)))
            self._start(data, inst / "server.log")
            role, password = f"{DB}_u1", pg.new_password()
            handle = self._handle(ident, port, role, 1, password, limit)
            with pg.connect(self.admin_dsn(handle.state)) as conn:
                pg.create_role(conn, role, password, limit)
            pg.create_database(self.admin_dsn(handle.state), DB, role)
        except BaseException:
            self._destroy(inst)
            raise
        return handle

    def _destroy(self, inst: Path) -> None:
        self._stop(inst / "data", "immediate")
        shutil.rmtree(inst, ignore_errors=True)

    def deprovision(self, handle: Handle) -> None:
        """Stop the server and delete its data. The WAL archive and base backups stay (they
        are backups, kept for their retention); ``purge_backups`` removes them."""
        self._destroy(self._instance_dir(handle.state["ident"]))

    def purge_backups(self, handle: Handle) -> None:
        shutil.rmtree(
            self.settings.backups_dir.resolve() / handle.state["ident"], ignore_errors=True
        )

    def ensure_running(self, handle: Handle) -> None:
        """Start the instance again after a machine restart (a no-op when it runs)."""
        data = Path(handle.state["data_dir"])
        if not (data / "postmaster.pid").exists():
            self._start(data, data.parent / "server.log")

    def rotate(self, handle: Handle) -> Handle:
        st = handle.state
        generation = int(st["generation"]) + 1
        role = f"{DB}_u{generation}"
        password = pg.rotate_role(
            self.admin_dsn(st), DB, st["role"], role, int(st["connection_limit"])
        )
        return self._handle(
            st["ident"], st["port"], role, generation, password, st["connection_limit"]
        )

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """``connection_limit``: the app role's CONNECTION LIMIT at once, and the server's
        ``max_connections`` (limit + 10 for the platform) by ALTER SYSTEM; that setting needs
        a restart, done here (clients reconnect) only when the server must allow more
        connections than it runs with — a lower limit is enforced by the role alone."""
        st = handle.state
        limit = int(limits.get("connection_limit", st["connection_limit"]))
        dsn = self.admin_dsn(st)
        pg.set_connection_limit(dsn, st["role"], limit)
        with pg.connect(dsn) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(limit + 10))
            )
            row = conn.execute("SHOW max_connections").fetchone()
        running = int(row[0]) if row else 0
        if running < limit + 10:
            data = Path(st["data_dir"])
            self._stop(data)
            self._start(data, data.parent / "server.log")
        return {"connection_limit": limit}

    def usage_bytes(self, handle: Handle) -> int:
        return int(pg.database_metrics(self.admin_dsn(handle.state), DB)["size_bytes"])

    def metrics(self, handle: Handle) -> dict[str, Any]:
        metrics = pg.database_metrics(self.admin_dsn(handle.state), DB)
        return {
            **metrics,
            "connection_limit": handle.state["connection_limit"],
            "archiver": self.health(handle),
        }

    # -- archiving ------------------------------------------------------------------------
    def health(self, handle: Handle) -> dict[str, Any]:
        """WAL archiving status from ``pg_stat_archiver``: ``failing`` when the last attempt
        failed (the resource is then ``degraded`` and an alert goes out)."""
        with pg.connect(self.admin_dsn(handle.state)) as conn:
            row = conn.execute(
                "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
                "last_failed_wal, last_failed_time FROM pg_stat_archiver"
            ).fetchone()
        assert row is not None
        archived, last_wal, last_time, failed, failed_wal, failed_time = row
        failing = failed_time is not None and (last_time is None or failed_time > last_time)
        return {
            "status": "failing" if failing else "ok",
            "archived_count": archived,
            "last_archived_wal": last_wal,
            "last_archived_time": last_time.isoformat() if last_time else None,
            "failed_count": failed,
            "last_failed_wal": failed_wal,
            "last_failed_time": failed_time.isoformat() if failed_time else None,
        }

    def heartbeat(self, handle: Handle) -> None:
        """Commit a transaction (in the ``postgres`` database, never the app's) so the archive
        holds a recent commit: a recovery target needs a commit after it to stop at."""
        with pg.connect(self.admin_dsn(handle.state)) as conn:
            conn.execute("SELECT txid_current()")

    def _switch_and_wait(self, conn: psycopg.Connection[Any], timeout: float = 60) -> None:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = str(row[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = conn.execute(
                "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
            ).fetchone()
            assert st is not None
            if st[0] is not None and str(st[0])[:24] >= segment:
                return
            if st[1] is not None and str(st[1]) >= segment:
                raise BackendError(
                    f"WAL archiving is failing (segment {st[1]}): see pg_stat_archiver"
                )
            time.sleep(0.1)
        raise BackendError(f"WAL segment {segment} was not archived within {timeout}s")

    # -- backups ----------------------------------------------------------------------------
    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        """Base backup, then a restore point taken while writers are briefly held off (SHARE
        locks, milliseconds), so the fingerprint read in a snapshot taken under those locks
        is exactly the data at the restore point."""
        st = handle.state
        dest = self.settings.backups_dir.resolve() / st["ident"] / backup_id
        self._mkdirs(dest)
        base = dest / "base"
        run(
            [
                self._bin("pg_basebackup"),
                "-D",
                str(base),
                "-Fp",
                "-X",
                "stream",
                "-c",
                "fast",
                "-d",
                self.admin_dsn(st),
            ],
            user=self.user,
        )
        end_time = datetime.now(UTC)
        restore_point = f"cvy_{dest.name}_{secrets.token_hex(4)}"
        dsn = pg.dsn_for(self.admin_dsn(st), DB)
        with psycopg.connect(dsn) as locker, psycopg.connect(dsn) as reader:
            locker.execute("SET lock_timeout = '60s'")
            tables = [f"{s}.{t}" for s, t in locker.execute(pg.TABLES_QUERY).fetchall()]
            if tables:
                locker.execute(
                    sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                        sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables)
                    )
                )
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            reader.execute("SELECT 1")  # the snapshot is taken here, under the locks
            locker.execute("SELECT pg_create_restore_point(%s)", (restore_point,))
            locker.commit()
            fp = pg.fingerprint(reader)
        with pg.connect(self.admin_dsn(st)) as conn:
            self._switch_and_wait(conn)
        size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
        return BackupResult(
            location=str(base),
            size_bytes=size,
            fingerprint=fp,
            method="pg_basebackup",
            meta={
                "restore_point": restore_point,
                "end_time": end_time.isoformat(),
                "archive_dir": st["archive_dir"],
                "role": st["role"],
            },
        )

    def _recover(
        self, ident: str, base: Path, archive_from: str, target: dict[str, str], limit: int
    ) -> tuple[Path, int]:
        """Copy ``base`` into a new data directory, replay ``archive_from`` up to ``target``
        and promote. Returns (instance dir, port)."""
        inst = self._instance_dir(ident)
        if inst.exists():
            raise BackendError(f"instance directory {inst} already exists")
        archive = self._archive_dir(ident)
        self._mkdirs(inst, inst / "sock", archive)
        data, port = inst / "data", free_port()
        try:
            run(["cp", "-a", str(base), str(data)])
            (data / "recovery.signal").touch()
            conf = self._server_conf(port, inst / "sock", archive, limit)
            conf |= {
                "restore_command": f"gunzip -c '{archive_from}/%f.gz' > '%p'",
                "recovery_target_action": "promote",
                **target,
            }
            with (data / "postgresql.auto.conf").open("a") as fh:
                fh.write(_conf(conf))
            chown_tree(inst, self.user)
            self._start(data, inst / "server.log")
            self._wait_promoted(inst, port)
        except BaseException as exc:
            log = inst / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            self._destroy(inst)
            if isinstance(exc, BackendError):
                fatal = [ln for ln in tail.splitlines() if "FATAL" in ln or "ERROR" in ln]
                raise BackendError(
                    f"recovery failed: {exc.message}; server log: {' | '.join(fatal[-3:])}"
                ) from exc
            raise
        return inst, port

    def _wait_promoted(self, inst: Path, port: int) -> None:
        dsn = f"host={inst / 'sock'} port={port} user=postgres dbname=postgres"
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if not (inst / "data" / "postmaster.pid").exists():
                raise BackendError("the server stopped during recovery")
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        return
            except psycopg.OperationalError:
                pass
            time.sleep(0.1)
        raise BackendError(f"recovery did not finish within {self.settings.start_timeout_s}s")

    def _adopt(self, ident: str, port: int, source: Handle, limit: int) -> Handle:
        """The recovered instance is a new resource: its app role gets a fresh password."""
        role, generation = source.state["role"], int(source.state["generation"])
        password = pg.new_password()
        handle = self._handle(ident, port, role, generation, password, limit)
        with pg.connect(self.admin_dsn(handle.state)) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
        return handle

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        base = Path(backup.location)
        if (base / "backup_manifest").exists():
            run([self._bin("pg_verifybackup"), "-n", str(base)])
        scratch = f"scratch_{secrets.token_hex(6)}"
        inst, port = self._recover(
            scratch,
            base,
            backup.meta["archive_dir"],
            {"recovery_target_name": backup.meta["restore_point"]},
            DEFAULT_CONNECTION_LIMIT,
        )
        try:
            dsn = f"host={inst / 'sock'} port={port} user=postgres dbname=postgres"
            actual = pg.database_fingerprint(dsn, DB)
        finally:
            self._destroy(inst)
            shutil.rmtree(self._archive_dir(scratch).parent, ignore_errors=True)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        limit = int(source.state["connection_limit"])
        _, port = self._recover(
            ident,
            Path(backup.location),
            backup.meta["archive_dir"],
            {"recovery_target_name": backup.meta["restore_point"]},
            limit,
        )
        return self._adopt(ident, port, source, limit)

    # -- point in time ---------------------------------------------------------------------
    def last_archived_commit(self, archive_dir: str) -> datetime | None:
        """The newest commit timestamp in the archive (pg_waldump over the last segments,
        decompressed into a scratch directory one at a time)."""
        names = sorted(
            m.group(1) for p in Path(archive_dir).iterdir() if (m := _SEGMENT.match(p.name))
        )
        with tempfile.TemporaryDirectory(prefix="cvy_wal_") as scratch:
            for segment in reversed(names[-8:]):
                with gzip.open(Path(archive_dir) / f"{segment}.gz") as src:
                    (Path(scratch) / segment).write_bytes(src.read())
                # `env TZ=UTC`: pg_waldump prints commit times in its own time zone.
                waldump = [self._bin("pg_waldump"), "-p", scratch, "-r", "Transaction"]
                out = run(["env", "TZ=UTC", *waldump, segment, segment], ok_codes=(0, 1)).stdout
                (Path(scratch) / segment).unlink()
                stamps = _COMMIT.findall(out)
                if stamps:
                    return max(datetime.fromisoformat(s).replace(tzinfo=UTC) for s in stamps)
        return None

    def prune_archive(self, handle: Handle, base_backups: list[BackupResult]) -> None:
        """Drop archived WAL older than the oldest kept base backup (nothing can replay it),
        so the archive does not grow forever; keep everything when there is no base backup."""
        starts = []
        for b in base_backups:
            label = Path(b.location) / "backup_label"
            if label.exists() and (m := _START_WAL.search(label.read_text())):
                starts.append(m.group(1))
        if starts:
            run(
                [
                    self._bin("pg_archivecleanup"),
                    "-x",
                    ".gz",
                    handle.state["archive_dir"],
                    min(starts),
                ],
                user=self.user,
            )

    def window(self, handle: Handle, base_backups: list[BackupResult]) -> Window:
        if not base_backups:
            raise OutsideWindow("no base backup yet: point-in-time restore starts at the first one")
        start = min(_ts(b.meta["end_time"]) for b in base_backups)
        until = self.last_archived_commit(handle.state["archive_dir"])
        if until is None or until < start:
            raise OutsideWindow(
                f"no commit archived since the first base backup ({start.isoformat()})"
            )
        return Window(start, until)

    def pitr(
        self, source: Handle, base_backups: list[BackupResult], target: datetime, ident: str
    ) -> Handle:
        """Restore into a NEW instance at ``target``. A target outside the window is refused
        before any work starts, with the window in the message."""
        if target.tzinfo is None:
            raise NotSupported("target_time needs a timezone")
        self.window(source, base_backups).require(target)
        base = max(
            (b for b in base_backups if _ts(b.meta["end_time"]) <= target),
            key=lambda b: _ts(b.meta["end_time"]),
        )
        limit = int(source.state["connection_limit"])
        _, port = self._recover(
            ident,
            Path(base.location),
            source.state["archive_dir"],
            {"recovery_target_time": target.isoformat(), "recovery_target_inclusive": "on"},
            limit,
        )
        return self._adopt(ident, port, source, limit)

    def branch(self, handle: Handle, ident: str) -> Handle:
        """A copy of the data now: a fresh base backup recovered to its end into a new
        instance (a branch at ``from_time`` goes through ``pitr``)."""
        tmp = self.settings.backups_dir.resolve() / "branch" / f"{ident}_{secrets.token_hex(4)}"
        self._mkdirs(tmp)
        try:
            base = tmp / "base"
            run(
                [
                    self._bin("pg_basebackup"),
                    "-D",
                    str(base),
                    "-Fp",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-d",
                    self.admin_dsn(handle.state),
                ],
                user=self.user,
            )
            limit = int(handle.state["connection_limit"])
            _, port = self._recover(
                ident, base, handle.state["archive_dir"], {"recovery_target": "immediate"}, limit
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self._adopt(ident, port, handle, limit)
