"""Redis resources: an ACL user restricted to a key prefix on the platform's Redis (shared),
or a ``redis-server`` process of its own (dedicated).

Backups: the shared tier writes every key of its prefix with ``DUMP`` (and its TTL) to a
file and restores with ``RESTORE``; the dedicated tier takes an RDB snapshot (``BGSAVE`` while
writes are paused for the fork, so the key counts read under the pause are the snapshot's).
Verification restores into a scratch prefix / scratch server and compares.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from resources.backends.base import (
    BackupResult,
    Fingerprint,
    Handle,
    NoPitr,
    VerifyResult,
    compare_fingerprints,
    free_port,
)
from resources.backends.proc import run
from resources.errors import BackendError
from resources.settings import ResourceSettings

# Shared-tier users may use every command on their own keys, except those that reach past
# the prefix (KEYS/SCAN/RANDOMKEY list other tenants' names) or administer the server.
SHARED_RULES = ["+@all", "-@dangerous", "-@admin", "-scan", "-randomkey"]
DEDICATED_RULES = ["+@all", "-@admin"]
_BATCH = 500


def _cmd(client: redis.Redis, *args: str) -> Any:
    """A raw command (ACL SETUSER rules, CLIENT PAUSE WRITE) in Redis' own syntax."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _redis_url(user: str, password: str, host: str, port: int, db: int) -> str:
    return f"redis://{user}:{password}@{host}:{port}/{db}"


class RedisShared(NoPitr):
    type = "redis"
    tier = "shared"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings
        self._canonical: tuple[set[str], list[str]] | None = None

    def _admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_admin_url)

    def _handle(self, ident: str, generation: int, password: str) -> Handle:
        admin = self._admin().connection_pool.connection_kwargs
        user = f"{self.settings.name_prefix}{ident}_u{generation}"
        prefix = f"{self.settings.name_prefix}{ident}:"
        host, port, db = (
            self.settings.redis_public_host,
            int(admin.get("port", 6379)),
            int(admin.get("db", 0)),
        )
        return Handle(
            state={
                "ident": ident,
                "user": user,
                "key_prefix": prefix,
                "generation": generation,
                "host": host,
                "port": port,
                "db": db,
            },
            secret={
                "password": password,
                "key_prefix": prefix,
                "env": {
                    "REDIS_URL": _redis_url(user, password, host, port, db),
                    "REDIS_KEY_PREFIX": prefix,
                },
            },
        )

    def _set_user(self, handle: Handle) -> None:
        st = handle.state
        _cmd(
            self._admin(),
            "ACL",
            "SETUSER",
            st["user"],
            "reset",
            "on",
            f">{handle.secret['password']}",
            f"~{st['key_prefix']}*",
            f"&{st['key_prefix']}*",
            *SHARED_RULES,
        )

    def _canonical_rules(self) -> tuple[set[str], list[str]]:
        """How this server spells back (``ACL LIST`` canonicalises) a user made of SHARED_RULES:
        (its default flags, its command rules), read once from a disabled probe user, so a
        drifted user is told from a current one."""
        if self._canonical is None:
            probe = f"{self.settings.name_prefix}acl_probe_{secrets.token_hex(4)}"
            admin = self._admin()
            _cmd(admin, "ACL", "SETUSER", probe, "reset", "off", *SHARED_RULES)
            try:
                flags, commands = self._acl_rules(admin, probe)
            finally:
                admin.acl_deluser(probe)
            self._canonical = (flags - {"off"}, commands)
        return self._canonical

    @staticmethod
    def _acl_rules(admin: redis.Redis, user: str) -> tuple[set[str], list[str]]:
        """(every other rule, the command rules in order) of ``user``'s ``ACL LIST`` line."""
        for raw in _cmd(admin, "ACL", "LIST"):
            line = raw.decode() if isinstance(raw, bytes) else str(raw)
            words = line.split()
            if len(words) > 1 and words[1] == user:
                rules = words[2:]
                commands = [w for w in rules if w[:1] in "+-"]
                return {w for w in rules if w[:1] not in "+-"}, commands
        return set(), []

    def reconcile(self, handle: Handle) -> bool:
        """Make the server's ACL user exactly the stored one (it lives only in the server's
        memory: a Redis restart without an aclfile forgets it). Idempotent; a user that
        already matches is left alone, so its clients stay connected. Older generations left
        behind by an interrupted rotation are removed. True when the user was (re)written."""
        st = handle.state
        admin = self._admin()
        flags, commands = self._canonical_rules()
        password_hash = hashlib.sha256(handle.secret["password"].encode()).hexdigest()
        want = flags | {"on", f"#{password_hash}", f"~{st['key_prefix']}*", f"&{st['key_prefix']}*"}
        changed = self._acl_rules(admin, st["user"]) != (want, commands)
        if changed:
            self._set_user(handle)
        for stale in self._users(st["ident"]):
            if stale != st["user"]:
                admin.acl_deluser(stale)
        return changed

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        handle = self._handle(ident, 1, secrets.token_urlsafe(24))
        self.reconcile(handle)
        return handle

    def _users(self, ident: str) -> list[str]:
        base = f"{self.settings.name_prefix}{ident}_u"
        names = [u.decode() if isinstance(u, bytes) else str(u) for u in self._admin().acl_users()]
        return [u for u in names if u.startswith(base)]

    def deprovision(self, handle: Handle) -> None:
        admin = self._admin()
        for user in self._users(handle.state["ident"]):
            admin.acl_deluser(user)
        for batch in self._scan(handle.state["key_prefix"]):
            admin.unlink(*batch)

    def rotate(self, handle: Handle) -> Handle:
        """A new ACL user takes over the prefix; deleting the old one disconnects its clients."""
        new = self._handle(
            handle.state["ident"], int(handle.state["generation"]) + 1, secrets.token_urlsafe(24)
        )
        self._set_user(new)
        self._admin().acl_deluser(handle.state["user"])
        return new

    def _scan(self, prefix: str) -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        for key in self._admin().scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _dump_prefix(self, prefix: str) -> Iterator[tuple[bytes, bytes, int]]:
        admin = self._admin()
        for batch in self._scan(prefix):
            pipe = admin.pipeline(transaction=False)
            for key in batch:
                pipe.dump(key)
                pipe.pttl(key)
            values = pipe.execute()
            for i, key in enumerate(batch):
                dumped, ttl = values[2 * i], values[2 * i + 1]
                if dumped is not None:  # expired or deleted since the scan
                    yield key[len(prefix) :], dumped, int(ttl)

    @staticmethod
    def _fingerprint(
        items: Iterator[tuple[bytes, bytes, int]],
    ) -> tuple[Fingerprint, list[tuple[bytes, bytes, int]]]:
        count, total, kept = 0, 0, []
        for suffix, dumped, ttl in items:
            count += 1
            total += int.from_bytes(
                hashlib.blake2b(suffix + b"\0" + dumped, digest_size=8).digest(), "big"
            )
            kept.append((suffix, dumped, ttl))
        return {"keys": {"rows": count, "checksum": str(total % 2**64)}}, kept

    def _restore_items(self, prefix: str, path: Path) -> None:
        admin = self._admin()
        pipe = admin.pipeline(transaction=False)
        with path.open() as fh:
            for n, line in enumerate(fh, 1):
                rec = json.loads(line)
                key = prefix.encode() + base64.b64decode(rec["k"])
                pipe.restore(key, max(int(rec["ttl"]), 0), base64.b64decode(rec["v"]), replace=True)
                if n % _BATCH == 0:
                    pipe.execute()
        pipe.execute()

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        dest = self.settings.backups_dir / handle.state["ident"] / backup_id / "keys.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fp, items = self._fingerprint(self._dump_prefix(handle.state["key_prefix"]))
        with dest.open("w") as fh:
            for suffix, dumped, ttl in items:
                fh.write(
                    json.dumps(
                        {
                            "k": base64.b64encode(suffix).decode(),
                            "v": base64.b64encode(dumped).decode(),
                            "ttl": ttl,
                        }
                    )
                    + "\n"
                )
        return BackupResult(str(dest), dest.stat().st_size, fp, "dump-restore")

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        scratch = f"{self.settings.name_prefix}scratch_{secrets.token_hex(6)}:"
        try:
            self._restore_items(scratch, Path(backup.location))
            actual, _ = self._fingerprint(self._dump_prefix(scratch))
        finally:
            for batch in self._scan(scratch):
                self._admin().unlink(*batch)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        handle = self.provision(ident, {})
        self._restore_items(handle.state["key_prefix"], Path(backup.location))
        return handle

    def branch(self, handle: Handle, ident: str) -> Handle:
        tmp = self.backup(handle, f"branch_{ident}")
        try:
            return self.restore(tmp, handle, ident)
        finally:
            shutil.rmtree(Path(tmp.location).parent, ignore_errors=True)

    def metrics(self, handle: Handle) -> dict[str, Any]:
        keys = sum(len(b) for b in self._scan(handle.state["key_prefix"]))
        clients = self._admin().client_list()
        connections = sum(1 for c in clients if c.get("user") == handle.state["user"])
        return {"keys": keys, "connections": connections}


class RedisDedicated(NoPitr):
    type = "redis"
    tier = "dedicated"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings

    def _dir(self, ident: str) -> Path:
        return (self.settings.instances_dir / f"redis_{ident}").resolve()

    @staticmethod
    def _admin(state: dict[str, Any], secret: dict[str, Any]) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=state["port"],
            username="admin",
            password=secret["admin_password"],
            socket_timeout=30,
        )

    def _start(
        self,
        directory: Path,
        port: int,
        admin_password: str,
        user: str,
        password: str,
        maxmemory: str,
    ) -> None:
        (directory / "users.acl").write_text(
            "user default off\n"
            f"user admin on >{admin_password} ~* &* +@all\n"
            f"user {user} on >{password} ~* &* {' '.join(DEDICATED_RULES)}\n"
        )
        conf = directory / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\ndaemonize yes\n"
            f"pidfile {directory}/redis.pid\nlogfile {directory}/redis.log\n"
            f"dbfilename dump.rdb\nsave 3600 1 300 100\nappendonly no\n"
            f"aclfile {directory}/users.acl\nmaxmemory {maxmemory}\n"
        )
        run([str(self.settings.redis_server_bin), str(conf)])
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            username="admin",
            password=admin_password,
            retry=Retry(NoBackoff(), 0),
        )
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    log = (directory / "redis.log").read_text(errors="replace")[-600:]
                    raise BackendError(f"redis-server did not start: {log}") from None
                time.sleep(0.05)

    def _handle(
        self,
        ident: str,
        port: int,
        generation: int,
        password: str,
        admin_password: str,
        maxmemory: str,
    ) -> Handle:
        user, host = f"app_u{generation}", self.settings.redis_public_host
        return Handle(
            state={
                "ident": ident,
                "port": port,
                "host": host,
                "user": user,
                "generation": generation,
                "dir": str(self._dir(ident)),
                "maxmemory": maxmemory,
            },
            secret={
                "password": password,
                "admin_password": admin_password,
                "key_prefix": "",
                "env": {"REDIS_URL": _redis_url(user, password, host, port, 0)},
            },
        )

    def _create(
        self, ident: str, maxmemory: str, rdb: Path | None = None, generation: int = 1
    ) -> Handle:
        directory = self._dir(ident)
        directory.mkdir(parents=True)
        if rdb is not None:
            shutil.copyfile(rdb, directory / "dump.rdb")
        handle = self._handle(
            ident,
            free_port(),
            generation,
            secrets.token_urlsafe(24),
            secrets.token_urlsafe(24),
            maxmemory,
        )
        try:
            self._start(
                directory,
                handle.state["port"],
                handle.secret["admin_password"],
                handle.state["user"],
                handle.secret["password"],
                maxmemory,
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return handle

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        handle = self._create(ident, str(limits.get("maxmemory", "256mb")))
        if "maxmemory_policy" in limits:
            handle.state.update(self.apply_limits(handle, limits))
        return handle

    def deprovision(self, handle: Handle) -> None:
        # Already stopped is fine (SHUTDOWN also closes our own connection).
        client = self._admin(handle.state, handle.secret)
        client.connection_pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
        with contextlib.suppress(redis.ConnectionError):
            _cmd(client, "SHUTDOWN", "NOSAVE")
        shutil.rmtree(handle.state["dir"], ignore_errors=True)

    def rotate(self, handle: Handle) -> Handle:
        st = handle.state
        new = self._handle(
            st["ident"],
            st["port"],
            int(st["generation"]) + 1,
            secrets.token_urlsafe(24),
            handle.secret["admin_password"],
            st["maxmemory"],
        )
        admin = self._admin(st, handle.secret)
        _cmd(
            admin,
            "ACL",
            "SETUSER",
            new.state["user"],
            "on",
            f">{new.secret['password']}",
            "~*",
            "&*",
            *DEDICATED_RULES,
        )
        admin.acl_deluser(st["user"])
        admin.acl_save()
        return new

    @staticmethod
    def _keyspace(client: redis.Redis) -> Fingerprint:
        info = client.info("keyspace")
        return {
            db: {"rows": int(v["keys"]), "expires": int(v["expires"])} for db, v in info.items()
        }

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        admin = self._admin(handle.state, handle.secret)
        before = int(admin.lastsave().timestamp())
        while admin.info("persistence")["rdb_bgsave_in_progress"]:
            time.sleep(0.05)
        _cmd(admin, "CLIENT", "PAUSE", "30000", "WRITE")
        try:
            fp = self._keyspace(admin)
            admin.bgsave()  # forks here: the snapshot is the data read under the pause
        finally:
            _cmd(admin, "CLIENT", "UNPAUSE")
        deadline = time.monotonic() + 600
        while True:
            persistence = admin.info("persistence")
            if (
                not persistence["rdb_bgsave_in_progress"]
                and int(persistence["rdb_last_save_time"]) >= before
            ):
                if persistence["rdb_last_bgsave_status"] != "ok":
                    raise BackendError("BGSAVE failed: see the instance's redis.log")
                break
            if time.monotonic() > deadline:
                raise BackendError("BGSAVE did not finish within 600s")
            time.sleep(0.05)
        dest = self.settings.backups_dir / handle.state["ident"] / backup_id / "dump.rdb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(handle.state["dir"]) / "dump.rdb", dest)
        return BackupResult(str(dest), dest.stat().st_size, fp, "rdb")

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        scratch = self._create(f"scratch_{secrets.token_hex(6)}", "0", rdb=Path(backup.location))
        try:
            actual = self._keyspace(self._admin(scratch.state, scratch.secret))
        finally:
            self.deprovision(scratch)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        return self._create(ident, source.state["maxmemory"], rdb=Path(backup.location))

    def branch(self, handle: Handle, ident: str) -> Handle:
        tmp = self.backup(handle, f"branch_{ident}")
        try:
            return self.restore(tmp, handle, ident)
        finally:
            shutil.rmtree(Path(tmp.location).parent, ignore_errors=True)

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """``maxmemory`` and ``maxmemory_policy`` by CONFIG SET, at once, then CONFIG REWRITE
        so the instance's redis.conf keeps them over a restart."""
        admin = self._admin(handle.state, handle.secret)
        maxmemory = str(limits.get("maxmemory", handle.state["maxmemory"]))
        policy = str(
            limits.get("maxmemory_policy", handle.state.get("maxmemory_policy", "noeviction"))
        )
        admin.config_set("maxmemory", maxmemory)
        admin.config_set("maxmemory-policy", policy)
        _cmd(admin, "CONFIG", "REWRITE")
        return {"maxmemory": maxmemory, "maxmemory_policy": policy}

    def metrics(self, handle: Handle) -> dict[str, Any]:
        admin = self._admin(handle.state, handle.secret)
        keys = sum(v["rows"] for v in self._keyspace(admin).values())
        return {
            "keys": keys,
            "connections": int(admin.info("clients")["connected_clients"]) - 1,
            "used_memory_bytes": int(admin.info("memory")["used_memory"]),
        }
