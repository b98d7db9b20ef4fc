"""The app-project backend interface: what every backend (local processes, Kubernetes) offers.

Like the model deployments' backends (``deployments.backends.base``), a backend is stateless
between calls: the caller (a ``deploy``-queue job) keeps the backend's bookkeeping of one
environment as JSON in the store (``BackendState``, on the environment row), passes it to every
call and stores what comes back, so an API or worker restart resumes from the store.

One deploy is two calls: ``build`` (source at a commit → an ``Artifact``: a checkout plus a venv
on the local backend, an image reference on Kubernetes) and ``rollout`` (start the new replicas of
a ``ReleaseSpec``, wait for their health check, switch traffic atomically, drain and stop the old
ones). ``rollout`` blocks until the release serves or has failed (with a deadline); a failed
rollout leaves the previous release serving. A rollback is a rollout of a stored release (its
artifact and env snapshot, never a rebuild): ``rollback`` defaults to ``rollout``.

Everything a backend reports is observed (processes alive and answering, pods ready), never
the database's wish.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.errors import ErrorCode

BuildPack = Literal["procfile", "dockerfile", "nixpacks"]
ObservedStatus = Literal["provisioning", "deploying", "running", "degraded", "failed", "stopped"]
LogStream = Literal["build", "runtime"]

#: Called by ``build`` with each build-output line (the caller masks secrets and stores them).
LogSink = Callable[[str], None]


class ReasonCode:
    """Machine-readable prefixes of a deployment's ``status_reason`` (``"<code>: <message>"``)."""

    BUILD_FAILED = ErrorCode.BUILD_FAILED.value
    UNSUPPORTED_BUILD = ErrorCode.UNSUPPORTED_BUILD.value
    IMAGE_PULL_FAILED = ErrorCode.IMAGE_PULL_FAILED.value
    CRASH_LOOP = ErrorCode.CRASH_LOOP.value
    REPLICA_CRASHED = ErrorCode.REPLICA_CRASHED.value
    HEALTH_CHECK_FAILED = ErrorCode.HEALTH_CHECK_FAILED.value
    ROLLOUT_TIMEOUT = ErrorCode.ROLLOUT_TIMEOUT.value
    BACKEND_ERROR = ErrorCode.BACKEND_ERROR.value


def reason(code: str, message: str) -> str:
    """Format a status_reason: a stable code, then a message for people."""
    message = " ".join(message.split())
    return f"{code}: {message}" if message else code


class ProjectBackendError(Exception):
    """A backend operation failed; ``code`` is a ``ReasonCode`` value. Jobs turn it into a
    failed deployment whose reason is ``reason(code, message)``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnsupportedBuild(ProjectBackendError):
    """This backend cannot build or run this source (``docker_image``/``dockerfile``/
    ``nixpacks`` on the local backend); the message names the backend that can."""

    def __init__(self, message: str) -> None:
        super().__init__(ReasonCode.UNSUPPORTED_BUILD, message)


# ------------------------------------------------------------------------------- inputs ---
class EnvironmentRef(BaseModel):
    """One environment of one project: what names a backend's namespace, route and files."""

    org_id: str
    project_id: str
    project_slug: str
    environment_id: str
    environment: str = Field(description="The environment's name, e.g. `production`.")
    domain: str | None = Field(default=None, description="Host header the router matches, if any.")

    @property
    def key(self) -> str:
        """A stable, DNS- and path-safe name for the environment: ``{slug}-{environment}``."""
        return f"{self.project_slug}-{self.environment}"


class SourceSpec(BaseModel):
    """Where a build takes its input from: exactly one of a git repository or an image."""

    git_repository: str | None = None
    git_branch: str | None = None
    git_commit: str | None = Field(
        default=None, description="A full SHA; None = the branch's head."
    )
    build_pack: BuildPack = "procfile"
    dockerfile_path: str | None = None
    docker_image: str | None = None


class BuildSpec(BaseModel):
    """One build: the environment it is for, the deployment asking and the source."""

    deployment_id: str
    env: EnvironmentRef
    source: SourceSpec
    build_env: dict[str, str] = Field(
        default_factory=dict, description="Env vars visible to the build (secrets included)."
    )
    secret_keys: list[str] = Field(default_factory=list)


class ProcessType(BaseModel):
    """A process type found in the source (a Procfile line, an image's default command)."""

    name: str
    command: str


class Artifact(BaseModel):
    """What a build produced; stored on the deployment row, so a rollback reuses it as is."""

    kind: Literal["venv", "image"]
    git_commit: str | None = None
    checkout_path: str | None = Field(default=None, description="local: the source checked out.")
    venv_path: str | None = Field(default=None, description="local: the venv built for the commit.")
    image: str | None = Field(
        default=None, description="kubernetes: the image reference (by digest)."
    )
    process_types: list[ProcessType] = Field(default_factory=list)
    built_at: float = Field(default_factory=time.time)
    reused: bool = Field(default=False, description="True when an existing artifact was reused.")


class ServiceResources(BaseModel):
    """Requests/limits in Kubernetes quantity notation (``500m``, ``512Mi``); the local backend
    ignores them."""

    cpu: str | None = None
    memory: str | None = None


class ServiceSpec(BaseModel):
    """One process type as it runs in one environment (per-environment overrides applied)."""

    id: str | None = None
    name: str = Field(description="`web` is the one the router sends HTTP to.")
    command: str | None = Field(
        default=None, description="None: the artifact's process type's command."
    )
    port: int | None = Field(
        default=None, description="The port the process listens on (web: PORT)."
    )
    replicas: int = Field(default=1, ge=0)
    resources: ServiceResources = Field(default_factory=ServiceResources)

    @property
    def serves_http(self) -> bool:
        return self.name == "web"


class VolumeSpec(BaseModel):
    """Persistent storage mounted into every replica; survives deploys and restarts."""

    id: str
    name: str
    mount_path: str = Field(description="k8s: the mount path; local: env var VOLUME_<NAME>_PATH.")
    size_gb: int = 1


class TcpProxySpec(BaseModel):
    """A raw TCP entry point to a service; only sources in ``allow`` (CIDRs) may connect, an
    empty list refuses everyone."""

    id: str
    service: str
    external_port: int
    target_port: int
    allow: list[str] = Field(default_factory=list)


class ReleaseSpec(BaseModel):
    """Everything one rollout runs: built once, stored on the deployment, replayed on rollback."""

    deployment_id: str
    env: EnvironmentRef
    artifact: Artifact
    services: list[ServiceSpec]
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="The env-var snapshot (plain values; injected)."
    )
    secret_keys: list[str] = Field(default_factory=list, description="Keys whose values mask.")
    health_check_path: str = "/"
    port: int = Field(default=8000, description="Default port of the `web` service.")
    volumes: list[VolumeSpec] = Field(default_factory=list)
    tcp_proxies: list[TcpProxySpec] = Field(default_factory=list)
    rollback_of: str | None = Field(default=None, description="The deployment id this one replays.")

    def secret_values(self) -> list[str]:
        """Values to mask wherever this release's output is shown."""
        return [v for k, v in self.env_vars.items() if k in self.secret_keys and v]


# ------------------------------------------------------------------------------ outputs ---
class BackendState(BaseModel):
    """A backend's own bookkeeping for one environment, stored as JSON on its row."""

    backend: str
    data: dict[str, Any] = Field(default_factory=dict)


class ServiceObservation(BaseModel):
    name: str
    ready: int = 0
    desired: int = 0


class CrashEvent(BaseModel):
    """A replica found dead (and restarted or scheduled for restart): ``project.crashed``."""

    service: str
    replica: str
    exit_code: int | None = None
    restarts: int = 0
    deployment_id: str | None = None
    message: str = ""


class Observation(BaseModel):
    """What a backend saw (and did) in one call."""

    status: ObservedStatus
    reason: str | None = None
    ready_replicas: int = 0
    desired_replicas: int = 0
    services: list[ServiceObservation] = Field(default_factory=list)
    active_deployment_id: str | None = Field(
        default=None, description="The release traffic goes to."
    )
    url: str | None = None
    state: BackendState
    crashes: list[CrashEvent] = Field(default_factory=list)
    events: list[str] = Field(default_factory=list, description="Notable changes, for logs.")


class LogLine(BaseModel):
    ts: float
    level: Literal["info", "error"] = "info"
    service: str
    msg: str
    stream: LogStream = "runtime"
    deployment_id: str | None = None


class LogQuery(BaseModel):
    tail: int = Field(default=200, ge=0, le=1000)
    deployment_id: str | None = None
    service: str | None = None


class Backend(abc.ABC):
    """One way of running app projects. Implementations: `local`, `kubernetes`."""

    name: str

    def check_source(self, source: SourceSpec) -> None:  # noqa: B027 - optional hook
        """Raise ``UnsupportedBuild`` when this backend cannot build/run ``source`` (called at
        request time so the API answers 422 before any job exists)."""

    @abc.abstractmethod
    def provision_environment(
        self, env: EnvironmentRef, state: BackendState | None
    ) -> BackendState:
        """Create what an environment needs before its first release (namespace, secrets,
        route, directories). Idempotent."""

    @abc.abstractmethod
    def build(self, spec: BuildSpec, log: LogSink) -> Artifact:
        """Fetch the source at the commit and build an artifact (reused when one exists for the
        commit). Raise ``ProjectBackendError`` (``build_failed``) on failure."""

    @abc.abstractmethod
    def rollout(
        self, release: ReleaseSpec, state: BackendState | None, *, timeout_s: float
    ) -> Observation:
        """Start ``release``'s replicas, pass the health check, switch traffic, drain and stop the
        old ones; return when it serves (``running``) or has failed (``failed`` with the last log
        lines as reason, the previous release still serving)."""

    def rollback(
        self, release: ReleaseSpec, state: BackendState | None, *, timeout_s: float
    ) -> Observation:
        """Run a stored release again (its artifact and env snapshot as they were)."""
        return self.rollout(release, state, timeout_s=timeout_s)

    @abc.abstractmethod
    def status(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        """Observe the environment (and, locally, restart crashed replicas with backoff: the
        crashes restarted are in ``Observation.crashes``)."""

    @abc.abstractmethod
    def stop(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        """Stop every replica of the environment (``stopped``: nothing serves it) while its
        artifacts, volumes, secrets, routes and TCP proxies stay; a deploy or a rollback starts
        it again. Billing's suspension of an organisation out of credit. Idempotent."""

    @abc.abstractmethod
    def logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> list[LogLine]:
        """The last ``query.tail`` runtime log lines (oldest first). Secrets are masked by the
        caller."""

    @abc.abstractmethod
    def follow_logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> Iterator[list[LogLine]]:
        """An endless iterator of new runtime log lines (each ``next`` returns what arrived
        since the previous one, possibly nothing; callers sleep between calls)."""

    @abc.abstractmethod
    def teardown(self, env: EnvironmentRef, state: BackendState | None) -> None:
        """Remove everything the environment owns (processes, routes, ports, volumes, secrets,
        namespace). Idempotent."""

    def apply_tcp_proxies(
        self, env: EnvironmentRef, proxies: list[TcpProxySpec], state: BackendState | None
    ) -> BackendState | None:
        """Make the environment's TCP proxies (and their allow-lists) match ``proxies`` now,
        without a rollout (an allow-list change takes effect at once). Default: nothing (a
        backend that applies them only with ``rollout``)."""
        return state

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients held by the backend."""


def encrypt_env(values: dict[str, str]) -> str:
    """A project's env vars (secrets among them) sealed with the resources' credentials key:
    a deployment's snapshot in the database, a replica's variables in the local state file."""
    from resources.service import credential_box

    return credential_box().encrypt({"env": values})


def decrypt_env(token: str | None) -> dict[str, str]:
    if not token:
        return {}
    from resources.service import credential_box

    return {k: str(v) for k, v in credential_box().decrypt(token).get("env", {}).items()}
