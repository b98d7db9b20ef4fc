"""The local backend: each replica is a real model-server process on this machine.

A replica runs `vllm serve` when vLLM and a GPU are present, otherwise Conveyor's own
OpenAI-compatible server (`python -m inference.server`) on the transformers engine. Replicas
run in their own session (process group) so an API or worker restart does not take them down;
their pid and process start time live in the store (`BackendState`) and in a pid file under
the runtime directory, and are verified before anything is signalled, so a recycled pid is never
killed. `sweep_orphans` kills replicas the store does not know (e.g. a worker died between
spawning a process and committing its record).

Lifecycle of a replica record: `starting` (spawned, health check not passed yet) → `ready`
(GET /v1/models answered and a 1-token completion succeeded) → `crashed` (process gone; restarted
after an exponential backoff) → after `max_crashes` consecutive crashes the deployment is
`failed` with the last log lines as its reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import httpx
import psutil
from pydantic import BaseModel

from config import default
from deployments.backends.base import (
    Backend,
    BackendState,
    DeploymentSpec,
    LogFollower,
    Observation,
    ObservedStatus,
    ReasonCode,
    reason,
)
from deployments.masking import mask_secrets

ReplicaStatus = Literal["starting", "ready", "crashed"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalBackendConfig:
    """Knobs of the local backend: the ``deploy_*`` settings narrowed (``deployments.runtime.
    local_config``), with the settings' own defaults."""

    runtime_dir: Path
    host: str = default("deploy_local_host")
    python: str = sys.executable
    startup_timeout_s: float = default("deploy_startup_timeout_seconds")
    stop_grace_s: float = default("deploy_stop_grace_seconds")
    max_crashes: int = default("deploy_max_crashes")
    backoff_base_s: float = default("deploy_backoff_base_seconds")
    backoff_max_s: float = default("deploy_backoff_max_seconds")
    health_timeout_s: float = default("deploy_health_timeout_seconds")
    orphan_grace_s: float = default("deploy_orphan_grace_seconds")
    stable_s: float = default("deploy_stable_seconds")  # ready this long: crash count reset
    # A command template replacing the model server, e.g. for tests:
    # ["python", "server.py", "--port", "{port}"]; placeholders: port host name model_path.
    command: Sequence[str] | None = None
    base_env: dict[str, str] = field(default_factory=dict)


class ReplicaRecord(BaseModel):
    """One replica as stored in the deployment's backend state."""

    id: str
    index: int
    revision: int
    status: ReplicaStatus = "starting"
    pid: int | None = None
    start_time: float | None = None
    port: int | None = None
    log_path: str
    started_at: float | None = None
    ready_at: float | None = None
    crashes: int = 0
    restarts: int = 0
    next_restart_at: float | None = None
    last_exit_code: int | None = None
    last_error: str | None = None

    @property
    def identity(self) -> tuple[int, float] | None:
        if self.pid is None or self.start_time is None:
            return None
        return self.pid, self.start_time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def gpu_present() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def vllm_available() -> bool:
    return shutil.which("vllm") is not None


def process_matches(pid: int, start_time: float) -> bool:
    """True when `pid` is alive (not a zombie) and is the process started at `start_time`."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - start_time) > 0.05:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def tail_lines(path: Path, count: int, block: int = 8192) -> list[str]:
    """The last `count` lines of a file, reading from its end (constant memory)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            data = b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


class LocalBackend(Backend):
    """Replicas as supervised local processes."""

    name = "local"

    def __init__(self, config: LocalBackendConfig) -> None:
        self.config = config
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._http = httpx.Client(timeout=config.health_timeout_s, trust_env=False)
        config.runtime_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- public interface ---
    def reconcile(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        with self._locked(spec.id):
            self._reap_finished()
            records = self._load(state)
            events: list[str] = []
            now = time.time()
            self._detect_crashes(records, events, now)
            current = [r for r in records if r.revision == spec.revision]
            old = [r for r in records if r.revision != spec.revision]

            for record in sorted(current, key=lambda r: r.index, reverse=True):
                if record.index >= spec.replicas:
                    self._stop_records([record])
                    current.remove(record)
                    events.append(f"replica {record.index} stopped (scaled down)")
            have = {r.index for r in current}
            for index in range(spec.replicas):
                if index not in have:
                    record = self._new_record(spec, index)
                    self._spawn(spec, record)
                    current.append(record)
                    events.append(f"replica {index} started (pid {record.pid})")

            for record in current:
                if (
                    record.status == "ready"
                    and now - (record.ready_at or now) >= self.config.stable_s
                ):
                    record.crashes = 0
            failed = self._restart_crashed(spec, current, events, now)
            if failed is None:
                self._check_starting(spec, current, events)
            ready = [r for r in current if r.status == "ready"]
            if failed is None and len(ready) >= spec.replicas and old:
                self._stop_records(old)
                events.append(f"{len(old)} replica(s) of older revisions stopped")
                old = []
            if failed is not None:
                self._stop_records([r for r in current if r.status != "crashed"])
                for r in current:
                    r.status = "crashed"

            status: ObservedStatus
            if failed is not None:
                status = "failed"
            elif len(ready) >= spec.replicas:
                status = "running"
            else:
                status = "deploying"
            serving = ready + [r for r in old if r.status == "ready"]
            return Observation(
                status=status,
                reason=failed or self._pending_reason(current, spec.replicas),
                ready_replicas=len(ready),
                desired_replicas=spec.replicas,
                endpoints=[self._url(r) for r in sorted(serving, key=lambda r: r.index)],
                state=self._dump(current + old),
                events=events,
            )

    def stop(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        with self._locked(spec.id):
            records = self._load(state)
            self._stop_records(records)
        return Observation(
            status="stopped",
            desired_replicas=0,
            state=self._dump([]),
            events=[f"{len(records)} replica(s) stopped"],
        )

    def delete(self, spec: DeploymentSpec, state: BackendState | None) -> None:
        self.stop(spec, state)
        for pid_file in self._pid_dir(spec.id).glob("*.json"):
            self._kill_pid_file(pid_file)
        shutil.rmtree(self._dir(spec.id), ignore_errors=True)

    def read_logs(
        self, spec: DeploymentSpec, state: BackendState | None, tail: int = 200
    ) -> list[str]:
        lines: list[tuple[float, int, str]] = []
        for path in self.log_files(spec.id):
            prefix = f"[{path.stem}] "
            mtime = path.stat().st_mtime
            for n, line in enumerate(tail_lines(path, tail)):
                lines.append((mtime, n, prefix + line))
        lines.sort(key=lambda item: (item[0], item[1]))
        secrets = spec.secret_values()
        return [mask_secrets(text, secrets) for _, _, text in lines[-tail:]] if tail else []

    def reset_failures(self, state: BackendState | None) -> BackendState | None:
        records = self._load(state)
        if not records:
            return state
        for record in records:
            record.crashes = 0
            record.next_restart_at = None
        return self._dump(records)

    def follow_logs(self, spec: DeploymentSpec, state: BackendState | None) -> LogFollower:
        return FileLogFollower(self._dir(spec.id) / "logs", spec.secret_values())

    def log_files(self, deployment_id: str) -> list[Path]:
        """Log files of a deployment, oldest first (one per replica process lineage)."""
        files = list((self._dir(deployment_id) / "logs").glob("*.log"))
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def release_failed(
        self, spec: DeploymentSpec, state: BackendState | None
    ) -> Observation | None:
        """A failed rollout keeps no replica process."""
        return self.stop(spec, state)

    def remove_orphans(self, stored: Iterable[BackendState | None]) -> list[str]:
        known: set[str] = set()
        for state in stored:
            known |= replica_ids(state)
        return self.sweep_orphans(known)

    def sweep_orphans(self, known_replica_ids: set[str]) -> list[str]:
        """Kill replica processes that no stored deployment knows; return their ids."""
        killed: list[str] = []
        now = time.time()
        for pid_file in self.config.runtime_dir.glob("*/pids/*.json"):
            if pid_file.stem in known_replica_ids:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - pid_file.stat().st_mtime < self.config.orphan_grace_s:
                    continue
                self._kill_pid_file(pid_file)
                killed.append(pid_file.stem)
        return killed

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ replica handling ---
    def _new_record(self, spec: DeploymentSpec, index: int) -> ReplicaRecord:
        replica_id = f"r{spec.revision}-{index}-{uuid.uuid4().hex[:8]}"
        log_path = self._dir(spec.id) / "logs" / f"{replica_id}.log"
        return ReplicaRecord(
            id=replica_id, index=index, revision=spec.revision, log_path=str(log_path)
        )

    def command(self, spec: DeploymentSpec, port: int) -> list[str]:
        """The replica's command line: vLLM on a GPU machine, else Conveyor's model server."""
        host = self.config.host
        if self.config.command is not None:
            values = {"port": port, "host": host, "name": spec.name, "model_path": spec.model_path}
            return [part.format(**values) for part in self.config.command]
        options = spec.runtime_options
        if spec.runtime == "vllm" and vllm_available() and gpu_present():
            cmd = ["vllm", "serve", spec.model_path, "--served-model-name", spec.name]
            cmd += ["--host", host, "--port", str(port)]
            if spec.gpu_count > 1:
                cmd += ["--tensor-parallel-size", str(spec.gpu_count)]
            max_len = options.get("max_model_len") or spec.context_length
            if max_len:
                cmd += ["--max-model-len", str(max_len)]
            for arg in options.get("extra_args", []):
                cmd.append(str(arg))
            return cmd
        cmd = [self.config.python, "-m", "inference.server"]
        cmd += ["--model", f"{spec.name}={spec.model_path}", "--host", host, "--port", str(port)]
        return cmd

    def _spawn(self, spec: DeploymentSpec, record: ReplicaRecord) -> None:
        port = free_port(self.config.host)
        log_path = Path(record.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.config.base_env)
        env.update(spec.env)
        env.update(
            PYTHONUNBUFFERED="1",
            CONVEYOR_DEPLOYMENT_ID=spec.id,
            CONVEYOR_REPLICA_ID=record.id,
        )
        pythonpath = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = f"{PROJECT_ROOT}:{pythonpath}" if pythonpath else str(PROJECT_ROOT)
        cmd = self.command(spec, port)
        with log_path.open("ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                f"starting replica {record.index} on port {port}\n".encode()
            )
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(PROJECT_ROOT),
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        record.pid = proc.pid
        record.start_time = psutil.Process(proc.pid).create_time()
        record.port = port
        record.status = "starting"
        record.started_at = time.time()
        record.ready_at = None
        pid_file = self._pid_dir(spec.id) / f"{record.id}.json"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(json.dumps({"pid": record.pid, "start_time": record.start_time}))

    def _detect_crashes(self, records: list[ReplicaRecord], events: list[str], now: float) -> None:
        for record in records:
            if record.status == "crashed" or record.identity is None:
                continue
            if process_matches(*record.identity):
                continue
            record.last_exit_code = self._reap(record.pid)
            self._mark_crashed(record, now, f"process exited (code {record.last_exit_code})")
            events.append(f"replica {record.index} crashed: {record.last_error}")

    def _mark_crashed(self, record: ReplicaRecord, now: float, why: str) -> None:
        record.status = "crashed"
        record.crashes += 1
        record.last_error = why
        delay = min(
            self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (record.crashes - 1)
        )
        record.next_restart_at = now + delay
        with contextlib.suppress(FileNotFoundError):
            (Path(record.log_path).parent.parent / "pids" / f"{record.id}.json").unlink()

    def _restart_crashed(
        self,
        spec: DeploymentSpec,
        current: list[ReplicaRecord],
        events: list[str],
        now: float,
    ) -> str | None:
        for record in current:
            if record.status != "crashed":
                continue
            if record.crashes >= self.config.max_crashes:
                last = " | ".join(tail_lines(Path(record.log_path), 5))
                message = (
                    f"replica {record.index} crashed {record.crashes} times "
                    f"({record.last_error}); last log lines: {last}"
                )
                return mask_secrets(
                    reason(ReasonCode.REPLICA_CRASHED, message)[:2000], spec.secret_values()
                )
            if record.next_restart_at is None or now >= record.next_restart_at:
                self._spawn(spec, record)
                record.restarts += 1
                events.append(f"replica {record.index} restarted (attempt {record.crashes})")
        return None

    def _check_starting(
        self, spec: DeploymentSpec, current: list[ReplicaRecord], events: list[str]
    ) -> None:
        for record in current:
            if record.status != "starting":
                continue
            error = self._health_error(spec, record)
            if error is None:
                record.status = "ready"
                record.ready_at = time.time()
                record.last_error = None
                events.append(f"replica {record.index} ready on port {record.port}")
                continue
            record.last_error = error
            started = record.started_at or time.time()
            if time.time() - started > self.config.startup_timeout_s:
                self._stop_records([record])
                self._mark_crashed(
                    record, time.time(), f"not healthy after startup budget: {error}"
                )
                events.append(f"replica {record.index} failed its startup budget")

    def _health_error(self, spec: DeploymentSpec, record: ReplicaRecord) -> str | None:
        """None when /v1/models answers and a 1-token completion succeeds."""
        base = self._url(record)
        try:
            models = self._http.get(f"{base}/v1/models", timeout=2.0)
            if models.status_code != 200:
                return f"GET /v1/models answered {models.status_code}"
            completion = self._http.post(
                f"{base}/v1/completions",
                json={"model": spec.name, "prompt": "Hello", "max_tokens": 1},
            )
            if completion.status_code != 200:
                return f"1-token completion answered {completion.status_code}"
            if not completion.json().get("choices"):
                return "1-token completion returned no choices"
        except (httpx.HTTPError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _stop_records(self, records: Sequence[ReplicaRecord]) -> None:
        """SIGTERM every live replica's process group, SIGKILL whatever outlives the grace."""
        alive = [r for r in records if r.identity is not None and process_matches(*r.identity)]
        for record in alive:
            self._signal_group(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_grace_s
        while alive and time.monotonic() < deadline:
            for record in alive:
                self._reap(record.pid)
            alive = [r for r in alive if r.identity is not None and process_matches(*r.identity)]
            if alive:
                time.sleep(0.05)
        for record in alive:
            self._signal_group(record.pid, signal.SIGKILL)
        for record in records:
            # Wait even for processes that look gone: a multi-threaded server's leader shows as
            # a zombie before its other threads exit, and only then can it be reaped.
            self._reap(record.pid, wait=True)
            with contextlib.suppress(FileNotFoundError):
                (Path(record.log_path).parent.parent / "pids" / f"{record.id}.json").unlink()

    def _kill_pid_file(self, pid_file: Path) -> None:
        try:
            info = json.loads(pid_file.read_text())
            pid, start_time = int(info["pid"]), float(info["start_time"])
        except (OSError, ValueError, KeyError):
            pid_file.unlink(missing_ok=True)
            return
        if process_matches(pid, start_time):
            self._signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.config.stop_grace_s
            while process_matches(pid, start_time) and time.monotonic() < deadline:
                self._reap(pid)
                time.sleep(0.05)
            if process_matches(pid, start_time):
                self._signal_group(pid, signal.SIGKILL)
            self._reap(pid, wait=True)
        pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal_group(pid: int | None, sig: signal.Signals) -> None:
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the replica leads its own session: pgid == pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)

    def _reap(self, pid: int | None, wait: bool = False) -> int | None:
        """Collect the exit status of a replica we spawned in this process (avoids zombies)."""
        if pid is None:
            return None
        proc = self._children.get(pid)
        if proc is None:
            return None
        try:
            code = proc.wait(timeout=5) if wait else proc.poll()
        except subprocess.TimeoutExpired:
            return None
        if code is not None:
            self._children.pop(pid, None)
        return code

    def _reap_finished(self) -> None:
        """Reap every child of ours that has exited since we last looked."""
        for pid in list(self._children):
            self._reap(pid)

    # ------------------------------------------------------------------------- helpers ---
    def _pending_reason(self, current: list[ReplicaRecord], wanted: int) -> str | None:
        ready = sum(1 for r in current if r.status == "ready")
        if ready >= wanted:
            return None
        waiting = [r for r in current if r.status != "ready" and r.last_error]
        detail = f"; replica {waiting[0].index}: {waiting[0].last_error}" if waiting else ""
        return reason(ReasonCode.REPLICAS_NOT_READY, f"{ready}/{wanted} replicas ready{detail}")

    def _url(self, record: ReplicaRecord) -> str:
        return f"http://{self.config.host}:{record.port}"

    def _dir(self, deployment_id: str) -> Path:
        return self.config.runtime_dir / deployment_id

    def _pid_dir(self, deployment_id: str) -> Path:
        return self._dir(deployment_id) / "pids"

    @contextlib.contextmanager
    def _locked(self, deployment_id: str) -> Iterator[None]:
        """Serialise reconciles of one deployment across processes on this machine."""
        directory = self._dir(deployment_id)
        directory.mkdir(parents=True, exist_ok=True)
        handle: IO[bytes]
        with (directory / ".lock").open("ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load(self, state: BackendState | None) -> list[ReplicaRecord]:
        if state is None or state.backend != self.name:
            return []
        return [ReplicaRecord.model_validate(r) for r in state.data.get("replicas", [])]

    def _dump(self, records: list[ReplicaRecord]) -> BackendState:
        ordered = sorted(records, key=lambda r: (r.revision, r.index))
        return BackendState(backend=self.name, data={"replicas": [r.model_dump() for r in ordered]})


def replica_ids(state: BackendState | None) -> set[str]:
    """The replica ids recorded in a stored local-backend state (for `sweep_orphans`)."""
    if state is None or state.backend != LocalBackend.name:
        return set()
    return {str(r["id"]) for r in state.data.get("replicas", [])}


class FileLogFollower(LogFollower):
    """Follows every replica log file of a deployment from its current end (like `tail -F`)."""

    def __init__(self, directory: Path, secrets: list[str]) -> None:
        self.directory = directory
        self.secrets = secrets
        self.offsets: dict[Path, int] = {
            path: path.stat().st_size for path in directory.glob("*.log")
        }
        self.partial: dict[Path, bytes] = {}

    def poll(self) -> list[str]:
        lines: list[str] = []
        for path in sorted(self.directory.glob("*.log")):
            offset = self.offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size < offset:  # truncated: start again
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = self.partial.pop(path, b"") + handle.read(size - offset)
            except FileNotFoundError:
                continue
            self.offsets[path] = size
            complete, _, rest = data.rpartition(b"\n")
            if rest:
                self.partial[path] = rest
            if complete or data.endswith(b"\n"):
                for raw in complete.split(b"\n"):
                    text = raw.decode("utf-8", errors="replace")
                    lines.append(mask_secrets(f"[{path.stem}] {text}", self.secrets))
        return lines
