"""App projects on Kubernetes (``CONVEYOR_PROJECTS_BACKEND=kubernetes``).

The manifests of ``projects.kubernetes`` are server-side applied (field manager
``conveyor-projects``) through the official client (``common.kube``), one Namespace per
environment. Everything reported is read back from the API server (Deployments, pods, Jobs and
their logs), never the store's wish:

- ``build``: a ``docker_image`` is used as is; a ``dockerfile`` source is built by a Kaniko Job
  in the environment's namespace (the commit checked out by a git init container), pushed as
  ``<registry>/<project>:<commit sha>`` and recorded by digest; its log lines go to the caller
  as they come, and a failed Job fails the build with its last lines. A finished Job of the
  same source (repository, commit, Dockerfile, image) is reused.
- ``rollout``: an immutable Secret holding the release's env snapshot, PVCs, one Deployment per
  service (rolling update, ``maxUnavailable: 0``: old pods serve until the new ones pass their
  readiness probe), its Service, the domain's HTTPRoute and the TCP proxies. It waits for the
  new pods: an image that cannot be pulled or a container in a crash loop fails it at once,
  readiness that never passes fails it at the deadline. A failed rollout re-applies the
  previous release's Deployments (the failing pods go, the old ones never stopped serving); the
  first release's are scaled to zero. Rollback is a rollout of the stored release.
- ``status``: ready/desired replicas of the active release per service, crash loops, image
  pull failures and readiness as the pods report them; a Deployment deleted behind our back is
  re-applied from the state, a pod deleted behind our back is replaced by its controller (seen
  as ``degraded`` until the new one is ready); container restarts become ``crashes``.
- ``teardown``: deletes the Namespace (and with it everything in it).

The backend's state (``BackendState.data``) holds the namespace and the active release's
rendered Deployments (no secret values: the env lives in the Secrets), so a worker restart
resumes and a failed rollout can restore them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from common.kube import call_api, new_api_client, object_path, server_side_apply
from config import Settings, default
from deployments.backends.kubernetes import _deadline_exceeded, _diagnose, _pod_ready
from deployments.masking import mask_secrets
from projects import kubernetes as k
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
    ProjectBackendError,
    ReasonCode,
    ReleaseSpec,
    ServiceObservation,
    ServiceSpec,
    SourceSpec,
    TcpProxySpec,
    UnsupportedBuild,
    reason,
)

FIELD_MANAGER = "conveyor-projects"
_KINDS = {  # kind → (apiVersion, plural, namespaced)
    "Namespace": ("v1", "namespaces", False),
    "Secret": ("v1", "secrets", True),
    "Service": ("v1", "services", True),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims", True),
    "Pod": ("v1", "pods", True),
    "Deployment": ("apps/v1", "deployments", True),
    "Job": ("batch/v1", "jobs", True),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "HTTPRoute": (k.GATEWAY_API, "httproutes", True),
}
_SHA = re.compile(r"^[0-9a-f]{40}$")
LOG_TAIL_IN_REASON = 10


@dataclass(frozen=True)
class KubernetesProjectsConfig:
    """The ``projects_kube_*`` settings (and the Kubernetes connection), narrowed; the
    defaults are the settings' own."""

    namespace_prefix: str = default("projects_kube_namespace_prefix")
    registry: str = default("projects_kube_registry")
    registry_secret: str | None = default("projects_kube_registry_secret") or None
    secrets_namespace: str = default("projects_kube_secrets_namespace")
    kaniko_image: str = default("projects_kube_kaniko_image")
    git_image: str = default("projects_kube_git_image")
    gateway_name: str = default("projects_kube_gateway_name")
    gateway_namespace: str = default("projects_kube_gateway_namespace")
    url_scheme: str = default("projects_kube_url_scheme")
    tcp_service_type: str = default("projects_kube_tcp_service_type")
    storage_class: str | None = default("projects_kube_storage_class") or None
    volume_access_mode: str = default("projects_kube_volume_access_mode")
    resources: k.Resources = field(
        default_factory=lambda: k.Resources(
            default("projects_kube_cpu_request"),
            default("projects_kube_cpu_limit"),
            default("projects_kube_memory_request"),
            default("projects_kube_memory_limit"),
        )
    )
    build_timeout_s: int = default("projects_kube_build_timeout_seconds")
    poll_s: float = default("projects_kube_poll_seconds")
    kubeconfig: str | None = default("kube_config") or None
    context: str | None = default("kube_context") or None
    in_cluster: bool = default("kube_in_cluster")

    @classmethod
    def from_settings(cls, s: Settings) -> KubernetesProjectsConfig:
        return cls(
            namespace_prefix=s.projects_kube_namespace_prefix,
            registry=s.projects_kube_registry,
            registry_secret=s.projects_kube_registry_secret or None,
            secrets_namespace=s.projects_kube_secrets_namespace,
            kaniko_image=s.projects_kube_kaniko_image,
            git_image=s.projects_kube_git_image,
            gateway_name=s.projects_kube_gateway_name,
            gateway_namespace=s.projects_kube_gateway_namespace,
            url_scheme=s.projects_kube_url_scheme,
            tcp_service_type=s.projects_kube_tcp_service_type,
            storage_class=s.projects_kube_storage_class or None,
            volume_access_mode=s.projects_kube_volume_access_mode,
            resources=k.Resources(
                s.projects_kube_cpu_request,
                s.projects_kube_cpu_limit,
                s.projects_kube_memory_request,
                s.projects_kube_memory_limit,
            ),
            build_timeout_s=s.projects_kube_build_timeout_seconds,
            poll_s=s.projects_kube_poll_seconds,
            kubeconfig=s.kube_config or None,
            context=s.kube_context or None,
            in_cluster=s.kube_in_cluster,
        )


def _backend_error(what: str, exc: ApiException) -> ProjectBackendError:
    try:
        message = str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (TypeError, ValueError):
        message = str(exc.reason)
    return ProjectBackendError(ReasonCode.BACKEND_ERROR, f"{what}: {message}")


def _parse_ts(stamp: str) -> float | None:
    """Seconds of a kubelet RFC3339(Nano) timestamp."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", stamp)
    if match is None:
        return None
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{match.group(2) or 0}")


def _level(msg: str) -> str:
    return "error" if re.search(r"\b(ERROR|CRITICAL|FATAL|Traceback)\b", msg) else "info"


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return cast(dict[str, str], (obj.get("metadata") or {}).get("labels") or {})


def _image_artifact(image: str, commit: str | None, reused: bool = False) -> Artifact:
    return Artifact.model_validate(
        {"kind": "image", "image": image, "git_commit": commit, "reused": reused}
    )


def _live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


class KubernetesProjectBackend(Backend):
    """App projects as Kubernetes objects, one Namespace per environment."""

    name = "kubernetes"

    def __init__(self, config: KubernetesProjectsConfig, api_client: Any = None) -> None:
        self.config = config
        self.api = api_client or new_api_client(
            config.kubeconfig, config.context, config.in_cluster
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesProjectBackend:
        return cls(KubernetesProjectsConfig.from_settings(settings))

    def close(self) -> None:
        self.api.close()

    # ---------------------------------------------------------------- API plumbing ---
    def _path(self, kind: str, namespace: str, name: str | None = None) -> str:
        api_version, plural, namespaced = _KINDS[kind]
        return object_path(api_version, plural, namespace if namespaced else None, name)

    def _call(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        """One API call (``options``: ``common.kube.call_api``'s); a 404 stays an
        ``ApiException`` (callers treat it as absent), any other error is a backend error."""
        try:
            return call_api(self.api, method, path, **options)
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise _backend_error(
                f"Kubernetes API error {exc.status} on {method} {path}", exc
            ) from exc

    def apply(self, manifest: k.Manifest) -> dict[str, Any]:
        """Server-side apply (create or update; conflicts forced to us)."""
        meta = manifest["metadata"]
        path = self._path(manifest["kind"], meta.get("namespace", ""), meta["name"])
        try:
            return server_side_apply(self.api, path, manifest, FIELD_MANAGER)
        except ApiException as exc:  # a 404: the namespace is gone
            raise _backend_error(f"cannot apply {path}", exc) from exc

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(kind, namespace, name))
        except ApiException:
            return None

    def list_objects(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        try:
            listed = self._call("GET", self._path(kind, namespace), query=query)
        except ApiException:
            return []
        return cast(list[dict[str, Any]], listed.get("items") or [])

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self._call(
                "DELETE",
                self._path(kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException:
            return False
        return True

    def pod_log(
        self, namespace: str, pod: str, container: str, query: list[tuple[str, Any]]
    ) -> str:
        try:
            text = self.api.call_api(
                f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
                "GET",
                query_params=[("container", container), *query],
                header_params={"Accept": "text/plain"},
                response_type="str",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException:
            return ""  # not started yet, or gone
        return str(text or "")

    # ---------------------------------------------------------------------- naming ---
    def scope(self, env: EnvironmentRef) -> k.Scope:
        ns = k.environment_namespace(
            self.config.namespace_prefix, env.project_id, env.project_slug, env.environment
        )
        return k.Scope(namespace=ns, project_id=env.project_id, environment=env.environment)

    def _data(self, state: BackendState | None) -> dict[str, Any]:
        return dict(state.data) if state is not None and state.backend == self.name else {}

    def _url(self, env: EnvironmentRef) -> str | None:
        return f"{self.config.url_scheme}://{env.domain}" if env.domain else None

    # ------------------------------------------------------------------- interface ---
    def check_source(self, source: SourceSpec) -> None:
        if source.docker_image:
            return
        if source.build_pack != "dockerfile":
            raise UnsupportedBuild(
                f"the kubernetes backend builds `dockerfile` sources (Kaniko) and runs "
                f"`docker_image`s; build pack `{source.build_pack}` runs on the `local` backend"
                if source.build_pack == "procfile"
                else f"build pack `{source.build_pack}` is not supported by the kubernetes "
                "backend; use `dockerfile` or a `docker_image`"
            )
        if not source.git_repository:
            raise UnsupportedBuild("a `dockerfile` build needs a git_repository")

    def provision_environment(
        self, env: EnvironmentRef, state: BackendState | None
    ) -> BackendState:
        scope = self.scope(env)
        self.apply(k.namespace(scope, env.project_slug))
        if self.config.registry_secret:
            self._copy_registry_secret(scope)
        if env.domain:
            self.apply(self._route(scope, env.domain))
        data = self._data(state)
        data.update(namespace=scope.namespace, domain=env.domain)
        return BackendState(backend=self.name, data=data)

    def build(self, spec: BuildSpec, log: LogSink) -> Artifact:
        source = spec.source
        if source.docker_image:
            log(f"using image {source.docker_image} (no build)")
            return _image_artifact(source.docker_image, source.git_commit)
        self.check_source(source)
        assert source.git_repository is not None
        commit = self.resolve_commit(source)
        scope = self.scope(spec.env)
        self.provision_environment(spec.env, None)
        build = k.Build(
            deployment_id=spec.deployment_id,
            git_repository=source.git_repository,
            git_commit=commit,
            image=k.image_reference(self.config.registry, spec.env.project_slug, commit),
            dockerfile_path=source.dockerfile_path or "Dockerfile",
            kaniko_image=self.config.kaniko_image,
            git_image=self.config.git_image,
            push_secret=self.config.registry_secret,
            timeout_s=self.config.build_timeout_s,
        )
        secrets = [v for key, v in spec.build_env.items() if key in spec.secret_keys and v]
        for job in self.list_objects("Job", scope.namespace, f"{k.BUILD_KEY_LABEL}={build.key}"):
            image = (job["metadata"].get("annotations") or {}).get(k.IMAGE_ANNOTATION)
            if image and (job.get("status") or {}).get("succeeded"):
                log(f"reusing image {image} built by job {job['metadata']['name']}")
                return _image_artifact(image, commit, reused=True)
        log(f"building {build.image} from {source.git_repository}@{commit} with Kaniko")
        job = self.apply(k.build_job(scope, build))
        name = job["metadata"]["name"]
        outcome, lines = self._follow_build(scope.namespace, name, build, log, secrets)
        if outcome != "Complete":
            self.delete("Job", scope.namespace, name)  # stop a build past its deadline
            tail = " | ".join(lines[-LOG_TAIL_IN_REASON:])
            raise ProjectBackendError(
                ReasonCode.BUILD_FAILED,
                mask_secrets(f"Kaniko job {name} failed ({outcome}): {tail}", secrets),
            )
        image = build.image
        digest = self._build_digest(scope.namespace, spec.deployment_id)
        if digest:
            image = f"{build.image}@{digest}"
        self._call(
            "PATCH",
            self._path("Job", scope.namespace, name),
            body={"metadata": {"annotations": {k.IMAGE_ANNOTATION: image}}},
            content_type="application/merge-patch+json",
        )
        log(f"pushed {image}")
        return _image_artifact(image, commit)

    def rollout(
        self, release: ReleaseSpec, state: BackendState | None, *, timeout_s: float
    ) -> Observation:
        image = release.artifact.image
        if release.artifact.kind != "image" or not image:
            raise UnsupportedBuild(
                "the kubernetes backend runs image artifacts; this release's artifact is a "
                f"{release.artifact.kind} (built by the local backend)"
            )
        if not release.services:
            raise ProjectBackendError(
                ReasonCode.BACKEND_ERROR,
                "the release has no service to run: declare one (`web` with no command runs "
                "the image's own entrypoint)",
            )
        scope = self.scope(release.env)
        data = self.provision_environment(release.env, state).data
        secret = f"env-{k.deployment_tag(release.deployment_id)}"
        self.apply(k.env_secret(scope, secret, release.deployment_id, release.env_vars))
        for volume in release.volumes:
            self.apply(
                k.volume_claim(
                    scope,
                    volume.name,
                    volume.size_gb,
                    self.config.storage_class,
                    self.config.volume_access_mode,
                )
            )
        deadline_s = max(1, int(timeout_s))
        manifests = [
            k.recorded(k.deployment(scope, self._workload(release, svc, image, secret, deadline_s)))
            for svc in release.services
        ]
        previous = self._live_release(scope)  # what serves now: read back, not remembered
        for manifest in manifests:
            self.apply(manifest)
        for svc in release.services:
            if self._port(release, svc) is not None:
                self.apply(k.service(scope, svc.name))
        events = [f"applied release {release.deployment_id} ({len(manifests)} services)"]
        failure = self._wait_ready(scope, release, time.monotonic() + timeout_s)
        if failure is not None:
            return self._fail(scope, release, data, previous, manifests, failure, events)
        self._wait_drained(scope, release, time.monotonic() + max(1.0, timeout_s / 4))
        if release.env.domain:
            self.apply(self._route(scope, release.env.domain))
        self._apply_tcp_proxies(scope, release.tcp_proxies, self._ports(scope))
        self._prune(scope, release)
        data["active"] = {"deployment_id": release.deployment_id, "deployments": manifests}
        events.append(f"release {release.deployment_id} serving; previous replicas drained")
        obs = self._observe(scope, release.env, BackendState(backend=self.name, data=data))
        return obs.model_copy(update={"events": events + obs.events})

    def apply_tcp_proxies(
        self, env: EnvironmentRef, proxies: list[TcpProxySpec], state: BackendState | None
    ) -> BackendState | None:
        scope = self.scope(env)
        if self.get("Namespace", "", scope.namespace) is None:
            return state  # nothing runs yet: the first rollout applies them
        self._apply_tcp_proxies(scope, proxies, self._ports(scope))
        return state

    def status(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        scope = self.scope(env)
        data = self._data(state)
        if self.get("Namespace", "", scope.namespace) is None:
            return Observation(
                status="stopped",
                reason="the environment's namespace does not exist (not provisioned)",
                active_deployment_id=None,
                state=BackendState(backend=self.name, data=data),
            )
        return self._observe(scope, env, BackendState(backend=self.name, data=data))

    def logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> list[LogLine]:
        if query.tail == 0:
            return []
        scope = self.scope(env)
        lines: list[LogLine] = []
        for pod in self._app_pods(scope, query):
            lines += self._pod_lines(scope.namespace, pod, [("tailLines", query.tail)])
        lines.sort(key=lambda line: line.ts)
        return lines[-query.tail :]

    def follow_logs(
        self, env: EnvironmentRef, state: BackendState | None, query: LogQuery
    ) -> Iterator[list[LogLine]]:
        scope = self.scope(env)
        start = time.time()
        seen: dict[str, float] = {}
        while True:
            fresh: list[LogLine] = []
            for pod in self._app_pods(scope, query):
                name = pod["metadata"]["name"]
                last = seen.get(name, start)
                since = datetime.fromtimestamp(int(last), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                new = [
                    line
                    for line in self._pod_lines(scope.namespace, pod, [("sinceTime", since)])
                    if line.ts > last
                ]
                if new:
                    seen[name] = new[-1].ts
                    fresh += new
            fresh.sort(key=lambda line: line.ts)
            yield fresh

    def stop(self, env: EnvironmentRef, state: BackendState | None) -> Observation:
        """The release's Deployments deleted (their pods go) and forgotten by the state, so
        observing does not re-apply them; the namespace, Secrets, Services, route and PVCs stay,
        and the next rollout applies the Deployments again."""
        scope = self.scope(env)
        data = dict(self._data(state))
        for live in self.list_objects("Deployment", scope.namespace, k.SERVICE_LABEL):
            self.delete("Deployment", scope.namespace, live["metadata"]["name"])
        data["active"] = None
        return Observation(
            status="stopped",
            reason="stopped: a deploy or a rollback starts it again",
            state=BackendState(backend=self.name, data=data),
            url=self._url(env),
            active_deployment_id=None,
        )

    def teardown(self, env: EnvironmentRef, state: BackendState | None) -> None:
        self.delete("Namespace", "", self.scope(env).namespace)

    # ------------------------------------------------------------------ building ---
    def resolve_commit(self, source: SourceSpec) -> str:
        """The commit a build checks out: the given SHA, else the branch's head (``git
        ls-remote`` from the worker, so the image tag names exactly what was built)."""
        if source.git_commit and _SHA.match(source.git_commit):
            return source.git_commit
        assert source.git_repository is not None
        ref = source.git_commit or (
            f"refs/heads/{source.git_branch}" if source.git_branch else "HEAD"
        )
        # ext:: would run a command on the worker: refused whatever git's default.
        command = ["git", "-c", "protocol.ext.allow=never", "ls-remote"]
        try:
            out = subprocess.run(
                [*command, "--", source.git_repository, ref],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        except (subprocess.SubprocessError, OSError) as exc:
            raise ProjectBackendError(
                ReasonCode.BUILD_FAILED, f"cannot read {source.git_repository}: {exc}"
            ) from exc
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if _SHA.match(sha) and name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
                return sha
        raise ProjectBackendError(
            ReasonCode.BUILD_FAILED, f"{ref} not found in {source.git_repository}"
        )

    def _follow_build(
        self, namespace: str, name: str, build: k.Build, log: LogSink, secrets: list[str]
    ) -> tuple[str, list[str]]:
        """Stream the build pod's log lines to ``log`` until the Job completes or fails (or its
        deadline passes); return the outcome and every line seen."""
        deadline = time.monotonic() + build.timeout_s + 60
        selector = (
            f"{k.DEPLOYMENT_LABEL}={k.label_value(build.deployment_id)},{k.COMPONENT_LABEL}=build"
        )
        seen: dict[tuple[str, str], float] = {}
        lines: list[str] = []

        def drain() -> None:
            for pod in self.list_objects("Pod", namespace, selector):
                pod_name = pod["metadata"]["name"]
                for container in ("checkout", k.BUILD_CONTAINER):
                    last = seen.get((pod_name, container), 0.0)
                    text = self.pod_log(namespace, pod_name, container, [("timestamps", "true")])
                    for raw in text.splitlines():
                        stamp, _, msg = raw.partition(" ")
                        ts = _parse_ts(stamp)
                        if ts is None or ts <= last:
                            continue
                        last = ts
                        line = mask_secrets(msg, secrets)
                        lines.append(line)
                        log(line)
                    seen[(pod_name, container)] = last

        while True:
            job = self.get("Job", namespace, name)
            drain()
            if job is None:
                return "deleted", lines
            for condition in (job.get("status") or {}).get("conditions") or []:
                if condition.get("status") != "True":
                    continue
                if condition.get("type") == "Complete":
                    return "Complete", lines
                if condition.get("type") == "Failed":
                    return condition.get("reason") or "Failed", lines
            if time.monotonic() >= deadline:
                return f"not finished within {build.timeout_s}s", lines
            time.sleep(self.config.poll_s)

    def _build_digest(self, namespace: str, deployment_id: str) -> str | None:
        selector = f"{k.DEPLOYMENT_LABEL}={k.label_value(deployment_id)},{k.COMPONENT_LABEL}=build"
        for pod in self.list_objects("Pod", namespace, selector):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                done = (status.get("state") or {}).get("terminated") or {}
                message = str(done.get("message") or "").strip()
                if status.get("name") == k.BUILD_CONTAINER and message.startswith("sha256:"):
                    return message
        return None

    # ------------------------------------------------------------------ releasing ---
    def _port(self, release: ReleaseSpec, svc: ServiceSpec) -> int | None:
        return svc.port or (release.port if svc.serves_http else None)

    def _workload(
        self, release: ReleaseSpec, svc: ServiceSpec, image: str, secret: str, deadline_s: int
    ) -> k.Workload:
        command = svc.command or next(
            (p.command for p in release.artifact.process_types if p.name == svc.name), None
        )
        resources = self.config.resources
        if svc.resources.cpu:
            resources = replace(
                resources, cpu_request=svc.resources.cpu, cpu_limit=svc.resources.cpu
            )
        if svc.resources.memory:
            resources = replace(
                resources, memory_request=svc.resources.memory, memory_limit=svc.resources.memory
            )
        return k.Workload(
            service=svc.name,
            deployment_id=release.deployment_id,
            image=image,
            env_secret=secret,
            replicas=svc.replicas,
            port=self._port(release, svc),
            command=command,
            health_check_path=release.health_check_path,
            http=svc.serves_http,
            resources=resources,
            volumes=tuple((k.volume_claim_name(v.name), v.mount_path) for v in release.volumes),
            git_commit=release.artifact.git_commit,
            pull_secret=self.config.registry_secret,
            rollout_deadline_s=deadline_s,
        )

    def _route(self, scope: k.Scope, domain: str) -> k.Manifest:
        return k.http_route(
            scope, [domain], "web", self.config.gateway_name, self.config.gateway_namespace
        )

    def _copy_registry_secret(self, scope: k.Scope) -> None:
        name = self.config.registry_secret
        assert name is not None
        source = self.get("Secret", self.config.secrets_namespace, name)
        if source is None:
            raise ProjectBackendError(
                ReasonCode.BACKEND_ERROR,
                f"registry secret {self.config.secrets_namespace}/{name} not found "
                "(CONVEYOR_PROJECTS_KUBE_REGISTRY_SECRET)",
            )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": scope.meta(name),
                "type": source.get("type") or "kubernetes.io/dockerconfigjson",
                "data": source.get("data") or {},
            }
        )

    def _app_pods(self, scope: k.Scope, query: LogQuery | None = None) -> list[dict[str, Any]]:
        terms = [k.SERVICE_LABEL]  # app pods (build pods have no service)
        if query is not None and query.service:
            terms = [f"{k.SERVICE_LABEL}={k.label_value(query.service)}"]
        if query is not None and query.deployment_id:
            terms.append(f"{k.DEPLOYMENT_LABEL}={k.label_value(query.deployment_id)}")
        return _live(self.list_objects("Pod", scope.namespace, ",".join(terms)))

    def _pod_lines(
        self, namespace: str, pod: dict[str, Any], query: list[tuple[str, Any]]
    ) -> list[LogLine]:
        labels = _labels(pod)
        text = self.pod_log(
            namespace, pod["metadata"]["name"], k.APP_CONTAINER, [("timestamps", "true"), *query]
        )
        out: list[LogLine] = []
        for raw in text.splitlines():
            stamp, _, msg = raw.partition(" ")
            ts = _parse_ts(stamp)
            if ts is None:
                continue
            out.append(
                LogLine(
                    ts=ts,
                    level="error" if _level(msg) == "error" else "info",
                    service=labels.get(k.SERVICE_LABEL, "?"),
                    msg=msg,
                    deployment_id=labels.get(k.DEPLOYMENT_LABEL),
                )
            )
        return out

    def _release_pods(
        self, scope: k.Scope, deployment_id: str, service: str
    ) -> list[dict[str, Any]]:
        selector = (
            f"{k.SERVICE_LABEL}={k.label_value(service)},"
            f"{k.DEPLOYMENT_LABEL}={k.label_value(deployment_id)}"
        )
        return _live(self.list_objects("Pod", scope.namespace, selector))

    def _last_lines(self, namespace: str, pod: dict[str, Any], crashed: bool) -> str:
        query: list[tuple[str, Any]] = [("tailLines", LOG_TAIL_IN_REASON)]
        if crashed:  # the container that died, not the one waiting to restart
            query.append(("previous", "true"))
        text = self.pod_log(namespace, pod["metadata"]["name"], k.APP_CONTAINER, query)
        if crashed and not text:
            text = self.pod_log(namespace, pod["metadata"]["name"], k.APP_CONTAINER, query[:1])
        lines = [line for line in text.splitlines() if line.strip()][-LOG_TAIL_IN_REASON:]
        return " | ".join(lines)

    def _wait_ready(self, scope: k.Scope, release: ReleaseSpec, deadline: float) -> str | None:
        """Wait until every service's new pods are ready; the failure reason, or None."""
        while True:
            pending: list[tuple[ServiceSpec, int, list[dict[str, Any]]]] = []
            for svc in release.services:
                pods = self._release_pods(scope, release.deployment_id, svc.name)
                ready = sum(1 for p in pods if _pod_ready(p))
                if ready < svc.replicas:
                    pending.append((svc, ready, pods))
            if not pending:
                return None
            for svc, ready, pods in pending:
                for pod in pods:
                    if _pod_ready(pod):
                        continue
                    found = _diagnose(pod)
                    if found is not None and found[0] != "unschedulable" and ready == 0:
                        code, message = found
                        last = self._last_lines(scope.namespace, pod, code != "image_pull_failed")
                        return reason(
                            code,
                            f"service {svc.name}: {message}"
                            + (f"; last lines: {last}" if last else ""),
                        )
            timed_out = time.monotonic() >= deadline
            if timed_out or self._progress_deadline_exceeded(scope, release):
                svc, ready, pods = pending[0]
                running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
                if running:
                    last = self._last_lines(scope.namespace, running[0], False)
                    probe = f"GET {release.health_check_path}" if svc.serves_http else "TCP connect"
                    return reason(
                        ReasonCode.HEALTH_CHECK_FAILED,
                        f"service {svc.name}: readiness ({probe}) never passed "
                        f"({ready}/{svc.replicas} ready)"
                        + (f"; last lines: {last}" if last else ""),
                    )
                found = next((d for p in pods if (d := _diagnose(p)) is not None), None)
                return reason(
                    ReasonCode.ROLLOUT_TIMEOUT,
                    f"service {svc.name}: {ready}/{svc.replicas} ready"
                    + (f"; {found[0]}: {found[1]}" if found else ""),
                )
            time.sleep(self.config.poll_s)

    def _progress_deadline_exceeded(self, scope: k.Scope, release: ReleaseSpec) -> bool:
        for svc in release.services:
            live = self.get("Deployment", scope.namespace, k.service_name(svc.name))
            if live is not None and _deadline_exceeded(live):
                return True
        return False

    def _wait_drained(self, scope: k.Scope, release: ReleaseSpec, deadline: float) -> None:
        """Wait (bounded) until the previous release's pods are gone."""
        names = {k.label_value(s.name) for s in release.services}
        mine = k.label_value(release.deployment_id)
        while time.monotonic() < deadline:
            old = [
                p
                for p in _live(self.list_objects("Pod", scope.namespace, k.SERVICE_LABEL))
                if _labels(p).get(k.SERVICE_LABEL) in names
                and _labels(p).get(k.DEPLOYMENT_LABEL) != mine
            ]
            if not old:
                return
            time.sleep(self.config.poll_s)

    def _live_release(self, scope: k.Scope) -> dict[str, Any] | None:
        """The release the cluster runs now: the manifests its Deployments record."""
        manifests = [
            json.loads(text)
            for live in self.list_objects("Deployment", scope.namespace, k.SERVICE_LABEL)
            if (text := (live["metadata"].get("annotations") or {}).get(k.APPLIED_ANNOTATION))
        ]
        if not manifests:
            return None
        ids = [m["metadata"]["annotations"][k.DEPLOYMENT_LABEL] for m in manifests]
        return {"deployment_id": max(set(ids), key=ids.count), "deployments": manifests}

    def _fail(
        self,
        scope: k.Scope,
        release: ReleaseSpec,
        data: dict[str, Any],
        previous: dict[str, Any] | None,
        manifests: list[k.Manifest],
        why: str,
        events: list[str],
    ) -> Observation:
        """Put the previous release's Deployments back and remove those it did not have (all
        of them on a first release); report the failure. The previous replicas never stopped
        serving (``maxUnavailable: 0``)."""
        wanted: set[str] = set()
        if previous:
            for manifest in previous["deployments"]:
                self.apply(k.recorded(manifest))
                wanted.add(manifest["metadata"]["name"])
            events.append(f"restored release {previous['deployment_id']}")
            data["active"] = previous
        else:
            events.append("first release failed; its Deployments removed")
            data.pop("active", None)
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            if name not in wanted:
                self.delete("Deployment", scope.namespace, name)
                self.delete("Service", scope.namespace, name)
        obs = self._observe(scope, release.env, BackendState(backend=self.name, data=data))
        return obs.model_copy(
            update={
                "status": "failed",
                "reason": mask_secrets(why, release.secret_values()),
                "events": events + obs.events,
            }
        )

    def _ports(self, scope: k.Scope) -> dict[str, int]:
        """Each service's HTTP container port, read from its live Deployment."""
        ports: dict[str, int] = {}
        for live in self.list_objects("Deployment", scope.namespace, k.SERVICE_LABEL):
            service = _labels(live).get(k.SERVICE_LABEL, "")
            for container in live["spec"]["template"]["spec"]["containers"]:
                for port in container.get("ports") or []:
                    if port.get("name") == "http":
                        ports[service] = int(port["containerPort"])
        return ports

    def _apply_tcp_proxies(
        self, scope: k.Scope, proxies: list[TcpProxySpec], ports: dict[str, int]
    ) -> None:
        wanted: set[str] = set()
        for proxy in proxies:
            name = k.tcp_proxy_name(proxy.service)
            wanted.add(name)
            self.apply(
                k.tcp_proxy_service(
                    scope,
                    proxy.service,
                    proxy.external_port,
                    proxy.target_port,
                    self.config.tcp_service_type,
                )
            )
            self.apply(
                k.tcp_proxy_policy(
                    scope,
                    proxy.service,
                    proxy.target_port,
                    list(proxy.allow),
                    ports.get(k.label_value(proxy.service)),
                    self.config.gateway_namespace,
                )
            )
        for kind in ("Service", "NetworkPolicy"):
            for obj in self.list_objects(kind, scope.namespace, k.MANAGED_BY):
                name = obj["metadata"]["name"]
                if name.startswith("tcp-") and name not in wanted:
                    self.delete(kind, scope.namespace, name)

    def _prune(self, scope: k.Scope, release: ReleaseSpec) -> None:
        """Remove services the release no longer has and the Secrets of older releases."""
        services = {k.service_name(s.name) for s in release.services}
        for kind in ("Deployment", "Service"):
            for obj in self.list_objects(kind, scope.namespace, k.SERVICE_LABEL):
                name = obj["metadata"]["name"]
                if name.startswith("svc-") and name not in services:
                    self.delete(kind, scope.namespace, name)
        mine = k.label_value(release.deployment_id)
        for secret in self.list_objects("Secret", scope.namespace, k.DEPLOYMENT_LABEL):
            if _labels(secret).get(k.DEPLOYMENT_LABEL) != mine:
                self.delete("Secret", scope.namespace, secret["metadata"]["name"])

    # ------------------------------------------------------------------ observing ---
    def _observe(self, scope: k.Scope, env: EnvironmentRef, state: BackendState) -> Observation:
        """The environment as the cluster runs it. A Deployment of the last known release
        (``state``) that is missing is re-applied first."""
        data = state.data
        events: list[str] = []
        known = data.get("active") or {}
        live = {
            d["metadata"]["name"]: d
            for d in self.list_objects("Deployment", scope.namespace, k.SERVICE_LABEL)
        }
        for manifest in known.get("deployments") or []:
            name = manifest["metadata"]["name"]
            if name not in live:
                live[name] = self.apply(k.recorded(manifest))
                events.append(f"Deployment {name} missing from the cluster; re-applied")
        current = self._live_release(scope)
        if current is None:
            return Observation(
                status="stopped",
                reason="no release deployed yet",
                state=state,
                url=self._url(env),
                active_deployment_id=None,
                events=events,
            )
        restarts: dict[str, int] = dict(data.get("restarts") or {})
        crashes: list[CrashEvent] = []
        services: list[ServiceObservation] = []
        problems: list[str] = []
        serving: list[str] = []
        deploying = False
        pods = self._app_pods(scope)
        for manifest in current["deployments"]:
            service = manifest["spec"]["template"]["metadata"]["labels"][k.SERVICE_LABEL]
            wanted_id = manifest["metadata"]["annotations"][k.DEPLOYMENT_LABEL]
            desired = int(manifest["spec"]["replicas"])
            mine = [p for p in pods if _labels(p).get(k.SERVICE_LABEL) == service]
            older = [p for p in mine if _labels(p).get(k.DEPLOYMENT_LABEL) != wanted_id]
            mine = [p for p in mine if p not in older]
            if older:  # a rollout under way: the old replicas serve until it ends
                deploying = True
                serving += [_labels(p).get(k.DEPLOYMENT_LABEL, "") for p in older if _pod_ready(p)]
            ready = sum(1 for p in mine if _pod_ready(p))
            services.append(ServiceObservation(name=service, ready=ready, desired=desired))
            for pod in mine:
                crashes += self._crashes(pod, service, restarts)
                if not _pod_ready(pod) and (found := _diagnose(pod)) is not None:
                    problems.append(reason(found[0], f"service {service}: {found[1]}"))
            if ready < desired and not problems:
                problems.append(
                    reason("replicas_not_ready", f"service {service}: {ready}/{desired} ready")
                )
        live_pods = {p["metadata"]["name"] for p in pods}
        data["restarts"] = {pod: n for pod, n in restarts.items() if pod in live_pods}
        if not deploying:
            data["active"] = current
        ready_total = sum(s.ready for s in services)
        desired_total = sum(s.desired for s in services)
        status: ObservedStatus
        if deploying:
            status = "deploying"
        elif ready_total >= desired_total and not problems:
            status = "running"
        else:
            status = "degraded"
        active_id = max(set(serving), key=serving.count) if serving else current["deployment_id"]
        return Observation(
            status=status,
            reason=problems[0] if problems and status != "running" else None,
            ready_replicas=ready_total,
            desired_replicas=desired_total,
            services=services,
            active_deployment_id=active_id,
            url=self._url(env),
            state=BackendState(backend=self.name, data=data),
            crashes=crashes,
            events=events,
        )

    @staticmethod
    def _crashes(pod: dict[str, Any], service: str, restarts: dict[str, int]) -> list[CrashEvent]:
        """Container restarts since the last observation (each one a ``project.crashed``)."""
        name = pod["metadata"]["name"]
        count = sum(
            int(c.get("restartCount") or 0)
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        )
        before = restarts.get(name, 0)
        restarts[name] = count
        if count <= before:
            return []
        last: dict[str, Any] = {}
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            last = (container.get("lastState") or {}).get("terminated") or last
        code = last.get("exitCode")
        return [
            CrashEvent(
                service=service,
                replica=name,
                exit_code=int(code) if code is not None else None,
                restarts=count,
                deployment_id=_labels(pod).get(k.DEPLOYMENT_LABEL),
                message=str(last.get("reason") or "container restarted"),
            )
        ]


def build_backend(settings: Settings) -> KubernetesProjectBackend:
    """The backend ``projects.runtime`` builds for ``CONVEYOR_PROJECTS_BACKEND=kubernetes``."""
    return KubernetesProjectBackend.from_settings(settings)
