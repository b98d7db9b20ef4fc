"""The local backend of app projects: a git checkout and a venv per commit, the Procfile's
process types as real processes on this machine, Conveyor's HTTP router in front.

Layout under the runtime directory (``CONVEYOR_PROJECTS_RUNTIME_DIR``, default
``<data dir>/projects``)::

    builds/<project>/mirror.git          a bare mirror of the repository (fetched per build)
    builds/<project>/<commit>/src        the checkout at the commit
    builds/<project>/<commit>/venv       its venv (kept: a rollback starts in seconds)
    envs/<slug>-<env>/state.json         the environment's replicas (pid + start time; their env
                                         vars encrypted with the credentials' key) and proxies
    envs/<slug>-<env>/logs/<deployment>/<service>.<n>.log
    volumes/<slug>-<env>/<name>          persistent volumes (survive deploys and restarts)
    routes/<slug>-<env>.json             what the router sends traffic to (atomically replaced)

Replicas run in their own session (process group), so an API or worker restart does not take
them down; their pid and process start time are verified (``process_matches``, as for model
deployments) before anything is signalled. The environment's ``state.json`` is the authority
(under a file lock), so the API, the workers and the supervisor see the same replicas; the
``BackendState`` stored on the environment row mirrors it.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, field_serializer, field_validator

from deployments.backends.local import free_port, process_matches, tail_lines
from projects.backends.base import (
    Artifact,
    Backend,
    BackendState,
    BuildSpec,
    CrashEvent,
    EnvironmentRef,
    LogLine,
    LogQuery,
    LogSink,
    Observation,
    ObservedStatus,
    ProcessType,
    ProjectBackendError,
    ReasonCode,
    ReleaseSpec,
    ServiceObservation,
    ServiceSpec,
    SourceSpec,
    TcpProxySpec,
    UnsupportedBuild,
    decrypt_env,
    encrypt_env,
    reason,
)

KUBERNETES_HINT = (
    "the local backend builds only the `procfile` build pack from a git repository; "
    "{what} needs the `kubernetes` backend (CONVEYOR_PROJECTS_BACKEND=kubernetes)"
)


@dataclass(frozen=True)
class LocalProjectsConfig:
    runtime_dir: Path
    host: str = "127.0.0.1"
    python: str = sys.executable
    drain_s: float = 1.0
    stop_grace_s: float = 5.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    health_timeout_s: float = 2.0
    base_env: dict[str, str] = field(default_factory=dict)


#: Between two health probes of a starting replica (a local connection: cheap; traffic
#: switches this much sooner after the app listens).
HEALTH_POLL_S = 0.01


class Replica(BaseModel):
    id: str
    deployment_id: str
    service: str
    index: int
    command: str
    cwd: str
    env: dict[str, str]
    port: int
    log_path: str
    pid: int | None = None
    start_time: float | None = None
    status: str = "starting"  # starting | running | crashed | stopped
    crashes: int = 0
    restarts: int = 0
    next_restart_at: float | None = None
    started_at: float = 0.0
    health_path: str | None = None  # web: probed before a restarted replica gets traffic

    # The environment's variables (secrets among them) are encrypted in ``state.json`` with
    # the credentials' key, as in the database; the replica's restart decrypts them.
    @field_serializer("env")
    def _seal_env(self, env: dict[str, str]) -> str:
        return encrypt_env(env)

    @field_validator("env", mode="before")
    @classmethod
    def _open_env(cls, value: Any) -> Any:
        return decrypt_env(value) if isinstance(value, str) else value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ProxyRecord(BaseModel):
    id: str
    service: str
    external_port: int
    target_port: int
    allow: list[str]
    pid: int | None = None
    start_time: float | None = None


class EnvState(BaseModel):
    active: str | None = None
    replicas: list[Replica] = []
    proxies: list[ProxyRecord] = []
    desired: dict[str, int] = {}


def _git(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if proc.returncode != 0:
        raise ProjectBackendError(
            ReasonCode.BUILD_FAILED, f"git {args[0]} failed: {(proc.stderr or proc.stdout)[-500:]}"
        )
    return proc.stdout.strip()


def parse_procfile(text: str) -> list[ProcessType]:
    found: list[ProcessType] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _, command = line.partition(":")
        if name.strip() and command.strip():
            found.append(ProcessType(name=name.strip(), command=command.strip()))
    return found


def _requirements(src: Path) -> list[str]:
    path = src / "requirements.txt"
    if not path.exists():
        return []
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


class LocalProjectsBackend(Backend):
    name = "local"

    def __init__(self, config: LocalProjectsConfig) -> None:
        self.config = config
        for sub in ("builds", "envs", "volumes", "routes"):
            (config.runtime_dir / sub).mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------------- paths ---
    def env_dir(self, env: EnvironmentRef) -> Path:
        return self.config.runtime_dir / "envs" / env.key

    def route_path(self, key: str) -> Path:
        return self.config.runtime_dir / "routes" / f"{key}.json"

    def volume_dir(self, env: EnvironmentRef, name: str) -> Path:
        return self.config.runtime_dir / "volumes" / env.key / name

    # ---------------------------------------------------------------------- checks ---
    def check_source(self, source: SourceSpec) -> None:
        if source.docker_image is not None:
            raise UnsupportedBuild(KUBERNETES_HINT.format(what="`docker_image`"))
        if source.build_pack != "procfile":
            raise UnsupportedBuild(KUBERNETES_HINT.format(what=f"`{source.build_pack}`"))
        if not source.git_repository:
            raise UnsupportedBuild("a git_repository is required")

    def provision_environment(
        self, env: EnvironmentRef, state: BackendState | None
    ) -> BackendState:
        (self.env_dir(env) / "logs").mkdir(parents=True, exist_ok=True)
        with self._locked(env):
            st = self._load(env)
            self._save(env, st)
            self._write_route(env, st)
        return self._mirror(st)

    # ----------------------------------------------------------------------- build ---
    def build(self, spec: BuildSpec, log: LogSink) -> Artifact:
        self.check_source(spec.source)
        repo = str(spec.source.git_repository)
        base = self.config.runtime_dir / "builds" / spec.env.project_id
        base.mkdir(parents=True, exist_ok=True)
        with _file_lock(base / "build.lock"):
            commit = spec.source.git_commit
            if commit is None or len(commit) < 40:
                commit = self._resolve(repo, spec.source, log)
            if commit is not None and (base / commit / ".ready").exists():
                log(f"reusing the artifact built for {commit[:12]}")
                target = base / commit
                return self._artifact(commit, target / "src", target / "venv", reused=True)
            scratch = base / f".build-{uuid.uuid4().hex[:8]}"
            log(f"cloning {repo}")
            _git("clone", "--quiet", "--no-checkout", repo, str(scratch / "src"))
            wanted = commit or spec.source.git_commit or "HEAD"
            _git("checkout", "--quiet", wanted, cwd=scratch / "src")
            # a resolved commit is already the full SHA checked out
            commit = wanted if len(wanted) == 40 else _git("rev-parse", "HEAD", cwd=scratch / "src")
            log(f"commit {commit}")
            target = base / commit
            if (target / ".ready").exists():
                shutil.rmtree(scratch, ignore_errors=True)
                log(f"reusing the artifact built for {commit[:12]}")
                return self._artifact(commit, target / "src", target / "venv", reused=True)
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
            src, venv = target / "src", target / "venv"
            procfile = src / "Procfile"
            if not procfile.exists() or not parse_procfile(procfile.read_text()):
                raise ProjectBackendError(
                    ReasonCode.BUILD_FAILED, "no Procfile (or no process type in it) at the root"
                )
            reqs = _requirements(src)
            has_project = (src / "pyproject.toml").exists()
            # With a pyproject.toml the project itself is installed: one venv per commit; with
            # only requirements.txt, commits with the same requirements share one (a dependency
            # layer cache, as build packs keep).
            venv = target / "venv" if has_project else base / "venvs" / self._requirements_key(src)
            if not (venv / ".ready").exists():
                self._build_venv(venv, src, reqs, has_project, log, spec)
            else:
                log(f"reusing the venv of these requirements ({venv.name[:12]})")
            (target / ".ready").write_text(commit)
            (target / "venv-path").write_text(str(venv))
            log("build finished")
            return self._artifact(commit, src, venv, reused=False)

    def _requirements_key(self, src: Path) -> str:
        import hashlib

        digest = hashlib.sha256(self.config.python.encode())
        path = src / "requirements.txt"
        digest.update(path.read_bytes() if path.exists() else b"")
        return digest.hexdigest()[:32]

    def _build_venv(
        self,
        venv: Path,
        src: Path,
        reqs: list[str],
        has_project: bool,
        log: LogSink,
        spec: BuildSpec,
    ) -> None:
        shutil.rmtree(venv, ignore_errors=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        log("creating the venv")
        venv_args = [self.config.python, "-m", "venv", "--system-site-packages"]
        if not reqs and not has_project:
            venv_args.append("--without-pip")
        self._run_logged([*venv_args, str(venv)], src, log, spec)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        if reqs:
            log("installing requirements.txt")
            self._run_logged([*pip, "-r", "requirements.txt"], src, log, spec)
        if has_project:
            log("installing the project (pyproject.toml)")
            self._run_logged([*pip, "."], src, log, spec)
        (venv / ".ready").write_text("ok")

    def _resolve(self, repo: str, source: SourceSpec, log: LogSink) -> str | None:
        """The commit a branch (or HEAD) points at, without cloning; None for a short SHA."""
        if source.git_commit is not None:
            return None
        ref = f"refs/heads/{source.git_branch}" if source.git_branch else "HEAD"
        out = _git("ls-remote", repo, ref)
        if not out:
            raise ProjectBackendError(ReasonCode.BUILD_FAILED, f"{ref} not found in {repo}")
        return out.split()[0]

    def _run_logged(self, args: list[str], cwd: Path, log: LogSink, spec: BuildSpec) -> None:
        env = {**self.config.base_env, **spec.build_env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            log(line.rstrip("\n"))
            tail = [*tail, line.rstrip()][-10:]
        if proc.wait() != 0:
            raise ProjectBackendError(
                ReasonCode.BUILD_FAILED,
                f"{Path(args[0]).name} {' '.join(args[1:3])} failed: {' | '.join(tail)}",
            )

    def _artifact(self, commit: str, src: Path, venv: Path, *, reused: bool) -> Artifact:
        types = parse_procfile((src / "Procfile").read_text())
        recorded = src.parent / "venv-path"
        if recorded.exists():
            venv = Path(recorded.read_text())
        return Artifact(
            kind="venv",
            git_commit=commit,
            checkout_path=str(src),
            venv_path=str(venv),
            process_types=types,
            reused=reused,
        )

    # --------------------------------------------------------------------- rollout ---
    def rollout(
        self, release: ReleaseSpec, state: BackendState | None, *, timeout_s: float
    ) -> Observation:
        env = release.env
        self.provision_environment(env, None)
        with self._locked(env):
            st = self._load(env)
            new = self._start_release(env, release, st)
            failure = self._wait_healthy(release, new, timeout_s)
            if failure is not None:
                self._stop(new)
                self._save(env, st)
                obs = self._observe(env, st, restart=False)
                obs.status = "failed"
                obs.reason = failure
                return obs
            old = [r for r in st.replicas]
            for r in new:
                r.status = "running"
            st.replicas = old + new
            st.active = release.deployment_id
            st.desired = {s.name: s.replicas for s in release.services}
            self._save(env, st)
            self._write_route(env, st)  # the switch: the router reads this file per request
            self._apply_proxies(env, st, release.tcp_proxies)
            self._save(env, st)
        time.sleep(self.config.drain_s)  # requests already sent to the old replicas finish
        with self._locked(env):
            st = self._load(env)
            keep = {r.id for r in new}
            self._stop([r for r in st.replicas if r.id not in keep])
            st.replicas = [r for r in st.replicas if r.id in keep]
            self._save(env, st)
            return self._observe(env, st, restart=False)

    def _start_release(
        self, env: EnvironmentRef, release: ReleaseSpec, st: EnvState
    ) -> list[Replica]:
        artifact = release.artifact
        if artifact.kind != "venv" or not artifact.checkout_path or not artifact.venv_path:
            raise UnsupportedBuild(KUBERNETES_HINT.format(what="an image artifact"))
        if not Path(artifact.venv_path).exists():
            raise ProjectBackendError(
                ReasonCode.BUILD_FAILED, f"the artifact of {artifact.git_commit} is gone"
            )
        commands = {p.name: p.command for p in artifact.process_types}
        venv_bin = str(Path(artifact.venv_path) / "bin")
        base_env = dict(self.config.base_env)
        base_env.pop("VIRTUAL_ENV", None)
        base_env.pop("PYTHONPATH", None)
        volumes = {}
        for vol in release.volumes:
            path = self.volume_dir(env, vol.name)
            path.mkdir(parents=True, exist_ok=True)
            volumes[f"VOLUME_{vol.name.upper().replace('-', '_')}_PATH"] = str(path)
            volumes.setdefault("RAILWAY_VOLUME_MOUNT_PATH", str(path))
        taken = self._ports_in_use()
        new: list[Replica] = []
        for service in release.services:
            command = service.command or commands.get(service.name)
            if not command:
                continue
            for index in range(service.replicas):
                port = self._allocate_port(taken)
                replica_id = f"{service.name}.{index}-{uuid.uuid4().hex[:6]}"
                log_path = self.env_dir(env) / "logs" / release.deployment_id / f"{replica_id}.log"
                env_vars = {
                    **base_env,
                    **release.env_vars,
                    **volumes,
                    "PORT": str(port),
                    "PATH": f"{venv_bin}:{base_env.get('PATH', os.defpath)}",
                    "VIRTUAL_ENV": str(artifact.venv_path),
                    "PYTHONUNBUFFERED": "1",
                    "CONVEYOR_PROJECT": env.project_slug,
                    "CONVEYOR_ENVIRONMENT": env.environment,
                    "CONVEYOR_DEPLOYMENT_ID": release.deployment_id,
                    "CONVEYOR_SERVICE": service.name,
                    "CONVEYOR_REPLICA_ID": replica_id,
                }
                replica = Replica(
                    id=replica_id,
                    deployment_id=release.deployment_id,
                    service=service.name,
                    index=index,
                    command=command,
                    cwd=str(artifact.checkout_path),
                    env=env_vars,
                    port=port,
                    log_path=str(log_path),
                    health_path=release.health_check_path if service.serves_http else None,
                )
                self._spawn(replica)
                new.append(replica)
        return new

    def _wait_healthy(
        self, release: ReleaseSpec, new: list[Replica], timeout_s: float
    ) -> str | None:
        """None once every new web replica answers its health check and every other one is
        alive; else the failure reason (with the last log lines)."""
        deadline = time.monotonic() + timeout_s
        pending = {r.id for r in new if r.service == "web"}
        while True:
            for r in new:
                if not self._alive(r):
                    return self._failure(
                        new, f"replica {r.id} exited ({self._exit_code(r)}) before serving"
                    )
            for r in new:
                if r.id not in pending:
                    continue
                if self._healthy(r.port, release.health_check_path):
                    pending.discard(r.id)
            if not pending:
                return None  # every web replica answers; the others are alive
            if time.monotonic() > deadline:
                return self._failure(
                    new,
                    f"{release.health_check_path} did not answer 2xx/3xx within {timeout_s:.0f}s",
                )
            time.sleep(HEALTH_POLL_S)

    def _healthy(self, port: int, path: str) -> bool:
        """One health probe: a 2xx/3xx answer to GET ``path`` (a plain connection, no client
        set-up per probe)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.config.health_timeout_s)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            return conn.getresponse().status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _failure(self, new: list[Replica], what: str) -> str:
        lines: list[str] = []
        for r in new:
            lines += [f"[{r.service}] {ln}" for ln in tail_lines(Path(r.log_path), 5)]
        return reason(
            ReasonCode.HEALTH_CHECK_FAILED, f"{what}; last log lines: " + " | ".join(lines[-10:])
        )

    # ---------------------------------------------------------------- observation ---
    def status(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        with self._locked(env, wait=False) as locked:
            st = self._load(env)
            obs = self._observe(env, st, restart=locked)
            if locked:
                self._save(env, st)
                if obs.crashes or obs.events:
                    self._write_route(env, st)
            return obs

    def _observe(self, env: EnvironmentRef, st: EnvState, *, restart: bool) -> Observation:
        now = time.time()
        crashes: list[CrashEvent] = []
        events: list[str] = []
        per: dict[str, ServiceObservation] = {
            name: ServiceObservation(name=name, desired=n) for name, n in st.desired.items()
        }
        for r in st.replicas:
            alive = self._alive(r)
            if not alive and r.status in ("running", "starting"):
                r.status = "crashed"
                r.crashes += 1
                delay = min(
                    self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (r.crashes - 1)
                )
                r.next_restart_at = now + delay
                crashes.append(
                    CrashEvent(
                        service=r.service,
                        replica=r.id,
                        exit_code=self._exit_code(r),
                        restarts=r.restarts,
                        deployment_id=r.deployment_id,
                        message=" | ".join(tail_lines(Path(r.log_path), 3)),
                    )
                )
            if restart and r.status == "crashed" and (r.next_restart_at or 0) <= now:
                r.restarts += 1
                self._spawn(r)  # "starting": traffic only once it answers again
                alive = True
                events.append(f"replica {r.id} restarted (restart {r.restarts})")
            if (
                alive
                and r.status == "starting"
                and st.active == r.deployment_id
                and (r.health_path is None or self._healthy(r.port, r.health_path))
            ):
                r.status = "running"
                events.append(f"replica {r.id} ready")
            obs = per.setdefault(r.service, ServiceObservation(name=r.service))
            if alive and r.status == "running":
                obs.ready += 1
        ready = sum(o.ready for o in per.values())
        desired = sum(o.desired for o in per.values())
        status: ObservedStatus
        if st.active is None:
            status = "stopped"
        elif ready >= desired:
            status = "running"
        else:
            status = "degraded"
        return Observation(
            status=status,
            ready_replicas=ready,
            desired_replicas=desired,
            services=list(per.values()),
            active_deployment_id=st.active,
            url=f"/apps/{env.project_slug}/{env.environment}/",
            state=self._mirror(st),
            crashes=crashes,
            events=events,
        )

    # ------------------------------------------------------------------------ logs ---
    def _log_files(self, env: EnvironmentRef, query: LogQuery) -> list[Path]:
        root = self.env_dir(env) / "logs"
        pattern = f"{query.deployment_id}/*.log" if query.deployment_id else "*/*.log"
        files = list(root.glob(pattern))
        if query.service:
            files = [f for f in files if f.name.split(".", 1)[0] == query.service]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> list[LogLine]:
        found: list[LogLine] = []
        for path in self._log_files(env, query):
            mtime = path.stat().st_mtime
            lines = tail_lines(path, query.tail)
            for n, text in enumerate(lines):
                found.append(self._line(path, text, mtime - (len(lines) - n) * 1e-6))
        found.sort(key=lambda ln: ln.ts)
        return found[-query.tail :] if query.tail else []

    def _line(self, path: Path, text: str, ts: float) -> LogLine:
        error = any(w in text for w in ("Traceback", "ERROR", "Error"))
        return LogLine(
            ts=ts,
            level="error" if error else "info",
            service=path.name.split(".", 1)[0],
            msg=text,
            stream="runtime",
            deployment_id=path.parent.name,
        )

    def follow_logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> Iterator[list[LogLine]]:
        offsets = {p: p.stat().st_size for p in self._log_files(env, query)}
        partial: dict[Path, bytes] = {}
        while True:
            out: list[LogLine] = []
            for path in self._log_files(env, query):
                offset = offsets.get(path, 0)
                with contextlib.suppress(FileNotFoundError):
                    size = path.stat().st_size
                    if size <= offset:
                        continue
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        data = partial.pop(path, b"") + handle.read(size - offset)
                    offsets[path] = size
                    complete, _, rest = data.rpartition(b"\n")
                    if rest:
                        partial[path] = rest
                    if complete:
                        for raw in complete.split(b"\n"):
                            out.append(
                                self._line(path, raw.decode("utf-8", "replace"), time.time())
                            )
            yield out

    # -------------------------------------------------------------------- stopping ---
    def stop(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        """Every replica stopped and the route emptied (the router answers 503); the venvs,
        volumes and proxies stay for the next rollout."""
        with self._locked(env):
            st = self._load(env)
            self._stop(st.replicas)
            st.replicas = []
            st.active = None
            self._save(env, st)
            self._write_route(env, st)
            return self._observe(env, st, restart=False)

    # -------------------------------------------------------------------- teardown ---
    def teardown(self, env: EnvironmentRef, state: BackendState | None) -> None:
        with self._locked(env):
            st = self._load(env)
            self._stop(st.replicas)
            self._stop_proxies(st.proxies)
            with contextlib.suppress(FileNotFoundError):
                self.route_path(env.key).unlink()
        shutil.rmtree(self.env_dir(env), ignore_errors=True)
        shutil.rmtree(self.config.runtime_dir / "volumes" / env.key, ignore_errors=True)

    # ------------------------------------------------------------------- tcp proxy ---
    def apply_tcp_proxies(
        self, env: EnvironmentRef, proxies: list[TcpProxySpec], state: BackendState | None
    ) -> BackendState | None:
        (self.env_dir(env) / "logs").mkdir(parents=True, exist_ok=True)
        with self._locked(env):
            st = self._load(env)
            self._apply_proxies(env, st, proxies)
            self._save(env, st)
            return self._mirror(st)

    def _apply_proxies(
        self, env: EnvironmentRef, st: EnvState, proxies: list[TcpProxySpec]
    ) -> None:
        wanted = {p.id: p for p in proxies}
        keep: list[ProxyRecord] = []
        for rec in st.proxies:
            if rec.id not in wanted or not self._proxy_alive(rec):
                self._stop_proxies([rec])
            else:
                keep.append(rec)
        have = {r.id for r in keep}
        for spec in proxies:
            if spec.id not in have:
                rec = ProxyRecord(
                    id=spec.id,
                    service=spec.service,
                    external_port=spec.external_port,
                    target_port=spec.target_port,
                    allow=spec.allow,
                )
                keep.append(rec)
            else:
                rec = next(r for r in keep if r.id == spec.id)
                rec.allow = spec.allow
            self._write_proxy_config(env, rec)
            if rec.pid is None or not self._proxy_alive(rec):
                self._spawn_proxy(env, rec)
        st.proxies = keep

    def _proxy_config_path(self, env: EnvironmentRef, rec: ProxyRecord) -> Path:
        return self.env_dir(env) / f"tcp-{rec.id}.json"

    def _write_proxy_config(self, env: EnvironmentRef, rec: ProxyRecord) -> None:
        config = {
            "listen_host": "0.0.0.0",
            "listen_port": rec.external_port,
            "route": str(self.route_path(env.key)),
            "service": rec.service,
            "allow": rec.allow,
        }
        _atomic_write(self._proxy_config_path(env, rec), json.dumps(config))

    def _spawn_proxy(self, env: EnvironmentRef, rec: ProxyRecord) -> None:
        log_path = self.env_dir(env) / f"tcp-{rec.id}.log"
        project_root = Path(__file__).resolve().parents[2]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    self.config.python,
                    "-m",
                    "projects.tcpproxy",
                    str(self._proxy_config_path(env, rec)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(project_root),
                env={**os.environ, "PYTHONPATH": str(project_root)},
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        rec.pid = proc.pid
        rec.start_time = psutil.Process(proc.pid).create_time()
        # Listening before the caller returns: a connection right after POST must be refused
        # or proxied by us, never by nothing.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _listening(rec.external_port):
                return
            time.sleep(0.05)

    def _proxy_alive(self, rec: ProxyRecord) -> bool:
        return (
            rec.pid is not None
            and rec.start_time is not None
            and process_matches(rec.pid, rec.start_time)
        )

    def _stop_proxies(self, recs: list[ProxyRecord]) -> None:
        for rec in recs:
            if self._proxy_alive(rec):
                assert rec.pid is not None
                self._terminate(rec.pid)

    # -------------------------------------------------------------------- processes ---
    def _spawn(self, r: Replica) -> None:
        log_path = Path(r.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {r.command}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=r.env,
                cwd=r.cwd,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        r.pid = proc.pid
        r.start_time = psutil.Process(proc.pid).create_time()
        r.started_at = time.time()
        r.status = "starting"

    def _alive(self, r: Replica) -> bool:
        self._reap()
        return (
            r.pid is not None and r.start_time is not None and process_matches(r.pid, r.start_time)
        )

    def _exit_code(self, r: Replica) -> int | None:
        child = self._children.get(r.pid or -1)
        return child.poll() if child is not None else None

    def _reap(self) -> None:
        for child in list(self._children.values()):
            child.poll()  # reaps an exited child (its exit code stays on the Popen)

    def _stop(self, replicas: list[Replica]) -> None:
        pids = [r.pid for r in replicas if r.pid is not None and self._alive(r)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_grace_s
        for r in replicas:
            while r.pid is not None and self._alive(r) and time.monotonic() < deadline:
                time.sleep(0.05)
            if r.pid is not None and self._alive(r):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.pid, signal.SIGKILL)
                killed = time.monotonic() + 2.0
                while self._alive(r) and time.monotonic() < killed:
                    time.sleep(0.01)
            r.status = "stopped"
        for pid in pids:  # a replica this process started, by another backend object: reap it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(self.config.stop_grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            child.poll()

    def _ports_in_use(self) -> set[int]:
        ports: set[int] = set()
        for path in (self.config.runtime_dir / "envs").glob("*/state.json"):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(path.read_text())
                ports |= {int(r["port"]) for r in data.get("replicas", [])}
                ports |= {int(p["external_port"]) for p in data.get("proxies", [])}
        return ports

    def _allocate_port(self, taken: set[int]) -> int:
        while True:
            port = free_port(self.config.host)
            if port not in taken:
                taken.add(port)
                return port

    # ------------------------------------------------------------------------ state ---
    @contextlib.contextmanager
    def _locked(self, env: EnvironmentRef, *, wait: bool = True) -> Iterator[bool]:
        path = self.env_dir(env)
        path.mkdir(parents=True, exist_ok=True)
        with (path / "lock").open("a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _load(self, env: EnvironmentRef) -> EnvState:
        path = self.env_dir(env) / "state.json"
        try:
            return EnvState.model_validate_json(path.read_text())
        except (FileNotFoundError, ValueError):
            return EnvState()

    def _save(self, env: EnvironmentRef, st: EnvState) -> None:
        _atomic_write(self.env_dir(env) / "state.json", st.model_dump_json())

    def _mirror(self, st: EnvState) -> BackendState:
        data: dict[str, Any] = {
            "active": st.active,
            "replicas": [
                {"id": r.id, "service": r.service, "pid": r.pid, "port": r.port, "status": r.status}
                for r in st.replicas
            ],
            "proxies": [
                {"id": p.id, "external_port": p.external_port, "pid": p.pid} for p in st.proxies
            ],
        }
        return BackendState(backend=self.name, data=data)

    def _write_route(self, env: EnvironmentRef, st: EnvState) -> None:
        services: dict[str, list[str]] = {}
        for r in st.replicas:
            if r.deployment_id == st.active and r.status == "running":
                services.setdefault(r.service, []).append(f"127.0.0.1:{r.port}")
        route = {
            "key": env.key,
            "slug": env.project_slug,
            "environment": env.environment,
            "domain": env.domain,
            "deployment_id": st.active,
            "services": services,
        }
        _atomic_write(self.route_path(env.key), json.dumps(route))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def service_specs(
    artifact: Artifact, env_replicas: int, port: int, overrides: dict[str, Any]
) -> list[ServiceSpec]:
    """The services of a release: the artifact's process types (``web`` gets the port and the
    environment's replicas; the others one replica), with per-service overrides applied."""
    out: list[ServiceSpec] = []
    for ptype in artifact.process_types:
        over = overrides.get(ptype.name, {})
        out.append(
            ServiceSpec(
                name=ptype.name,
                command=over.get("command") or ptype.command,
                port=over.get("port") or (port if ptype.name == "web" else None),
                replicas=over.get("replicas", env_replicas if ptype.name == "web" else 1),
            )
        )
    return out
