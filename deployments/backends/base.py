"""The deployment backend interface: what every backend (local processes, Kubernetes) offers.

A backend is stateless between calls. The caller (the deploy task or the reconciler) keeps the
backend's state as JSON in the store (`BackendState`), passes it to every call and stores what
comes back, so an API or worker restart resumes from the store. Each call makes reality match
the spec as far as it can right now and reports what it observed (`Observation`); it never
waits for a rollout to finish: waiting (with a deadline) is the deploy task's job.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.errors import ErrorCode

Runtime = Literal["vllm", "transformers"]
ObservedStatus = Literal["deploying", "running", "degraded", "failed", "stopped"]


class ReasonCode:
    """Machine-readable prefixes of `status_reason` (`"<code>: <human message>"`); a failed
    deployment's code is its deploy job's error code, so those are `ErrorCode` values."""

    UNSCHEDULABLE = ErrorCode.UNSCHEDULABLE.value
    IMAGE_PULL_FAILED = ErrorCode.IMAGE_PULL_FAILED.value
    OOM_KILLED = ErrorCode.OOM_KILLED.value
    CRASH_LOOP = ErrorCode.CRASH_LOOP.value
    REPLICA_CRASHED = ErrorCode.REPLICA_CRASHED.value
    HEALTH_CHECK_FAILED = ErrorCode.HEALTH_CHECK_FAILED.value
    ROLLOUT_TIMEOUT = ErrorCode.ROLLOUT_TIMEOUT.value
    REPLICAS_NOT_READY = ErrorCode.REPLICAS_NOT_READY.value
    BACKEND_ERROR = ErrorCode.BACKEND_ERROR.value
    SCALED_TO_ZERO = "scaled_to_zero"
    SCALING_FROM_ZERO = "scaling_from_zero"


def reason(code: str, message: str) -> str:
    """Format a status_reason: a stable code, then a message for people."""
    message = " ".join(message.split())
    return f"{code}: {message}" if message else code


class DeploymentSpec(BaseModel):
    """The desired state of one deployment revision, as a backend needs it."""

    id: str
    name: str = Field(description="The deployment's name; also the served model name.")
    model: str = Field(description="Catalogue name of the model.")
    model_path: str = Field(description="Local directory or hub id/URI of the weights.")
    runtime: Runtime = "transformers"
    gpu_type: str | None = None
    gpu_count: int = 0
    replicas: int = Field(1, ge=0, description="How many ready replicas are wanted.")
    env: dict[str, str] = Field(default_factory=dict)
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    context_length: int | None = None
    revision: int = 1
    org_id: str | None = None

    def secret_values(self) -> list[str]:
        """Values to mask wherever this deployment's output is shown."""
        return [v for v in self.env.values() if len(v) >= 4]


class BackendState(BaseModel):
    """A backend's own bookkeeping, stored as JSON next to the deployment row."""

    backend: str
    data: dict[str, Any] = Field(default_factory=dict)


class Observation(BaseModel):
    """What a backend saw (and did) in one call."""

    status: ObservedStatus
    reason: str | None = None
    ready_replicas: int = 0
    desired_replicas: int = 0
    endpoints: list[str] = Field(default_factory=list)
    state: BackendState
    events: list[str] = Field(default_factory=list, description="Notable changes, for logs.")

    @property
    def endpoint(self) -> str | None:
        return self.endpoints[0] if self.endpoints else None


def derive_status(previous: str | None, obs: Observation) -> ObservedStatus:
    """Turn an observation into the deployment status, given the status it had before.

    A deployment that has been running and lost replicas is `degraded`; one that is still
    coming up is `deploying`. Backends report `deploying` for both; history decides.
    """
    if obs.status in ("failed", "stopped", "running"):
        return obs.status
    if previous in ("running", "degraded") and obs.desired_replicas > 0:
        return "degraded"
    return obs.status


class LogFollower:
    """Yields log lines written after it was created (`poll` returns what is new)."""

    def poll(self) -> list[str]:
        return []


class Backend(abc.ABC):
    """One way of running deployments. Implementations: `local`, `kubernetes`."""

    name: str

    @abc.abstractmethod
    def reconcile(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        """Start, restart, replace or stop replicas so that reality moves towards `spec`."""

    @abc.abstractmethod
    def stop(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        """Stop every replica (the deployment keeps its configuration and logs)."""

    @abc.abstractmethod
    def delete(self, spec: DeploymentSpec, state: BackendState | None) -> None:
        """Remove everything the deployment owns. Idempotent."""

    @abc.abstractmethod
    def read_logs(
        self, spec: DeploymentSpec, state: BackendState | None, tail: int = 200
    ) -> list[str]:
        """The last `tail` log lines of the deployment's replicas, secrets masked."""

    def reset_failures(self, state: BackendState | None) -> BackendState | None:
        """Forget crash counts: an explicit operation (create, start, update) tries afresh."""
        return state

    def release_failed(
        self, spec: DeploymentSpec, state: BackendState | None
    ) -> Observation | None:
        """Free what a failed rollout still holds and return what is left; None (the default)
        when the backend holds nothing worth freeing (a Kubernetes Deployment stays for its
        events and logs). The local backend stops the replica processes."""
        return None

    def remove_orphans(self, stored: Iterable[BackendState | None]) -> list[str]:
        """Remove what this backend runs that no stored state knows (``stored``: the states of
        every live deployment on it); return what was removed. The default removes nothing."""
        return []

    def wait_for_change(self, spec: DeploymentSpec, timeout_s: float) -> None:
        """Block until the deployment's replicas may have changed, at most `timeout_s`.

        The default just sleeps; a backend with a watch (Kubernetes) returns on the first event.
        """
        time.sleep(timeout_s)

    def follow_logs(self, spec: DeploymentSpec, state: BackendState | None) -> LogFollower:
        """A follower of new log lines (secrets masked); the default follows nothing."""
        return LogFollower()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients held by the backend."""
