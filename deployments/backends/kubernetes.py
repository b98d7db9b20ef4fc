"""The Kubernetes backend: a deployment is a `vllm serve` Deployment plus what it needs.

Rendered objects (all labelled `app.kubernetes.io/managed-by=conveyor` and
`conveyor.dev/deployment-id=<id>`): a Deployment (GPU limits, node selector and tolerations per
GPU type, startup/readiness/liveness probes on `/health`), a ClusterIP Service, a PVC mounted as
the model cache (`HF_HOME`) and a Secret with the deployment's env. The Service, PVC and Secret
carry an owner reference to the Deployment, so deleting it removes everything (we also delete
them by name, which is idempotent).

Objects are written with server-side apply (field manager `conveyor`) through the official
client's `ApiClient`; the typed `*Api.patch_*` methods cannot send `application/apply-patch+yaml`.
Observed state comes from the Deployment, its pods and their events: `Unschedulable`,
`ErrImagePull`/`ImagePullBackOff`, `OOMKilled` and `CrashLoopBackOff` become `status_reason`
codes, and `ProgressDeadlineExceeded` fails the rollout. In the `conveyor kube-watch` process they
are read from the watch cache (a `WatchCache`: `kubernetes_watch.ObservedCluster`) and every change
is reconciled at once; elsewhere (deploy jobs, the beat resync) they are listed, and a rollout
waits on a short watch of its pods between reconciles.

Connect with a kubeconfig (`CONVEYOR_KUBE_CONFIG`, `CONVEYOR_KUBE_CONTEXT`) or, inside a pod,
the in-cluster service account (`CONVEYOR_KUBE_IN_CLUSTER=true`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

from common.errors import BackendError
from common.kube import call_api, new_api_client
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

Manifest = dict[str, Any]

FIELD_MANAGER = "conveyor"
MANAGED_BY = "app.kubernetes.io/managed-by"
ID_LABEL = "conveyor.dev/deployment-id"
REVISION_LABEL = "conveyor.dev/revision"
CONTAINER_PORT = 8000
CACHE_MOUNT = "/models"

IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class KubernetesBackendConfig:
    """Knobs of the Kubernetes backend: the ``kube_*`` settings narrowed
    (``deployments.runtime.build_backend``), with the settings' own defaults."""

    namespace: str = default("kube_namespace")
    image: str = default("kube_image")
    image_pull_policy: str = default("kube_image_pull_policy")
    # GPU type → node selector; a type not listed selects on the GPU product label.
    gpu_node_selectors: dict[str, dict[str, str]] = field(default_factory=dict)
    gpu_product_label: str = default("kube_gpu_product_label")
    cache_size: str = default("kube_cache_size")
    cache_storage_class: str | None = default("kube_cache_storage_class") or None
    cache_access_mode: str = default("kube_cache_access_mode")
    startup_budget_s: int = default("kube_startup_budget_seconds")
    startup_initial_delay_s: int = default("kube_startup_initial_delay_seconds")
    startup_period_s: int = default("kube_startup_period_seconds")
    rollout_deadline_s: int = int(default("deploy_rollout_deadline_seconds"))
    shm_size: str = default("kube_shm_size")
    service_domain: str = default("kube_service_domain")
    kubeconfig: str | None = default("kube_config") or None
    context: str | None = default("kube_context") or None
    in_cluster: bool = default("kube_in_cluster")


class WatchCache(Protocol):
    """What the backend reads from a watch cache (``kubernetes_watch.ObservedCluster``)."""

    @property
    def synced(self) -> bool: ...

    def deployment(self, name: str) -> dict[str, Any] | None: ...

    def pods_of(self, slug: str) -> list[dict[str, Any]]: ...

    def events_for(self, pod_names: set[str]) -> list[dict[str, Any]]: ...

    def wait_for(self, slug: str, timeout_s: float) -> bool: ...


def id_slug(deployment_id: str) -> str:
    """The deployment id as its objects' `ID_LABEL` value (what watches map changes back by)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", deployment_id.lower()).strip("-")
    return f"cv-{slug}"[:63].rstrip("-")[3:]


def object_name(spec: DeploymentSpec) -> str:
    """A DNS-1123 name for the deployment's objects, stable for its lifetime."""
    return f"cv-{id_slug(spec.id)}"


def labels(spec: DeploymentSpec) -> dict[str, str]:
    instance = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name)[:63].strip("-._") or "deployment"
    return {
        "app.kubernetes.io/name": "conveyor-model",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": "inference",
        MANAGED_BY: "conveyor",
        ID_LABEL: id_slug(spec.id),
    }


class ManifestRenderer:
    """Renders the Kubernetes objects of a deployment (pure; no API calls)."""

    def __init__(self, config: KubernetesBackendConfig) -> None:
        self.config = config

    def render(self, spec: DeploymentSpec, owner_uid: str | None = None) -> list[Manifest]:
        """Deployment first (it owns the rest), then Secret, PVC and Service."""
        owned = [self.secret(spec), self.cache_claim(spec), self.service(spec)]
        if owner_uid:
            ref = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": object_name(spec),
                "uid": owner_uid,
                "blockOwnerDeletion": True,
            }
            for manifest in owned:
                manifest["metadata"]["ownerReferences"] = [ref]
        return [self.deployment(spec), *owned]

    def _metadata(self, spec: DeploymentSpec, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.config.namespace, "labels": labels(spec)}

    def secret(self, spec: DeploymentSpec) -> Manifest:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(spec, f"{object_name(spec)}-env"),
            "type": "Opaque",
            "stringData": dict(spec.env),
        }

    def cache_claim(self, spec: DeploymentSpec) -> Manifest:
        claim: Manifest = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self._metadata(spec, f"{object_name(spec)}-cache"),
            "spec": {
                "accessModes": [self.config.cache_access_mode],
                "resources": {"requests": {"storage": self.config.cache_size}},
            },
        }
        if self.config.cache_storage_class:
            claim["spec"]["storageClassName"] = self.config.cache_storage_class
        return claim

    def service(self, spec: DeploymentSpec) -> Manifest:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._metadata(spec, object_name(spec)),
            "spec": {
                "type": "ClusterIP",
                "selector": {ID_LABEL: labels(spec)[ID_LABEL]},
                "ports": [
                    {
                        "name": "http",
                        "port": CONTAINER_PORT,
                        "targetPort": "http",
                        "protocol": "TCP",
                    }
                ],
            },
        }

    def _args(self, spec: DeploymentSpec) -> list[str]:
        args = [spec.model_path, "--served-model-name", spec.name]
        args += ["--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
        args += ["--download-dir", f"{CACHE_MOUNT}/weights"]
        if spec.gpu_count > 1:
            args += ["--tensor-parallel-size", str(spec.gpu_count)]
        max_len = spec.runtime_options.get("max_model_len") or spec.context_length
        if max_len:
            args += ["--max-model-len", str(max_len)]
        args += [str(arg) for arg in spec.runtime_options.get("extra_args", [])]
        return args

    def _probe(self, period: int, failures: int, initial_delay: int = 0) -> dict[str, Any]:
        probe: dict[str, Any] = {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 5,
        }
        if initial_delay:
            probe["initialDelaySeconds"] = initial_delay
        return probe

    def deployment(self, spec: DeploymentSpec) -> Manifest:
        cfg = self.config
        name = object_name(spec)
        pod_labels = {**labels(spec), REVISION_LABEL: str(spec.revision)}
        resources: dict[str, Any] = {}
        pod_spec: dict[str, Any] = {}
        if spec.gpu_count > 0:
            resources = {"limits": {"nvidia.com/gpu": str(spec.gpu_count)}}
            pod_spec["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
            if spec.gpu_type:
                selector = cfg.gpu_node_selectors.get(spec.gpu_type) or {
                    cfg.gpu_product_label: spec.gpu_type
                }
                pod_spec["nodeSelector"] = dict(selector)
        startup_failures = max(1, math.ceil(cfg.startup_budget_s / cfg.startup_period_s))
        container = {
            "name": "model",
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "command": ["vllm", "serve"],
            "args": self._args(spec),
            "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
            "env": [{"name": "HF_HOME", "value": f"{CACHE_MOUNT}/hf"}],
            "envFrom": [{"secretRef": {"name": f"{name}-env"}}],
            "resources": resources,
            "volumeMounts": [
                {"name": "model-cache", "mountPath": CACHE_MOUNT},
                {"name": "shm", "mountPath": "/dev/shm"},
            ],
            "startupProbe": self._probe(
                cfg.startup_period_s, startup_failures, cfg.startup_initial_delay_s
            ),
            "readinessProbe": self._probe(5, 3),
            "livenessProbe": self._probe(10, 3),
        }
        pod_spec.update(
            containers=[container],
            volumes=[
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{name}-cache"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
            ],
        )
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                **self._metadata(spec, name),
                "annotations": {"conveyor.dev/revision": str(spec.revision)},
            },
            "spec": {
                "replicas": spec.replicas,
                "progressDeadlineSeconds": cfg.rollout_deadline_s,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": {ID_LABEL: labels(spec)[ID_LABEL]}},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            },
        }


_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
}


def load_api_client(config: KubernetesBackendConfig) -> k8s.ApiClient:
    """An API client from the in-cluster service account or a kubeconfig."""
    return cast(k8s.ApiClient, new_api_client(config.kubeconfig, config.context, config.in_cluster))


class KubernetesBackend(Backend):
    """Deployments as Kubernetes objects, observed through the API server."""

    name = "kubernetes"

    def __init__(
        self, config: KubernetesBackendConfig, api_client: k8s.ApiClient | None = None
    ) -> None:
        self.config = config
        self.renderer = ManifestRenderer(config)
        self.api = api_client or load_api_client(config)
        self._pods_version: dict[str, str] = {}  # deployment id → resourceVersion of its pods
        self.cache: WatchCache | None = None  # set by the watch process (`attach`)

    def attach(self, cache: WatchCache) -> None:
        """Observe from a watch cache (kept by `KubeWatcher`) instead of listing."""
        self.cache = cache

    def _cached(self) -> WatchCache | None:
        return self.cache if self.cache is not None and self.cache.synced else None

    # ---------------------------------------------------------------- API plumbing ---
    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        return call_api(self.api, method, path, query=query, body=body, content_type=content_type)

    def _path(self, kind: str, name: str | None = None) -> str:
        base = _PATHS[kind].format(ns=self.config.namespace)
        return f"{base}/{name}" if name else base

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply one object (create or update; conflicts forced to us)."""
        path = self._path(manifest["kind"], manifest["metadata"]["name"])
        return self._call(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(kind, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, kind: str, name: str) -> None:
        try:
            self._call("DELETE", self._path(kind, name), body={"propagationPolicy": "Foreground"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------ backend interface ---
    def reconcile(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        try:
            return self._reconcile(spec, state)
        except ApiException as exc:
            raise BackendError(
                f"Kubernetes API error {exc.status}: {exc.reason}", details={"body": exc.body}
            ) from exc

    def _reconcile(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        data = dict(state.data) if state and state.backend == self.name else {}
        name = object_name(spec)
        events: list[str] = []
        digest = self._digest(spec)
        cache = self._cached()
        current = cache.deployment(name) if cache is not None else None
        if current is None:  # not cached (or not seen by the watch yet): ask the API server
            current = self._get("Deployment", name)
        if current is None or data.get("applied") != digest:
            if current is None and data.get("applied"):
                events.append("Deployment missing from the cluster; re-applied")
            current = self._apply_all(spec)
            data.update(applied=digest, name=name, namespace=self.config.namespace)
            data["uid"] = current.get("metadata", {}).get("uid")
            events.append(f"applied revision {spec.revision} ({spec.replicas} replicas)")
        pods = self._pods(spec)
        return self._observe(
            spec, current, pods, BackendState(backend=self.name, data=data), events
        )

    def stop(self, spec: DeploymentSpec, state: BackendState | None) -> Observation:
        stopped = spec.model_copy(update={"replicas": 0})
        try:
            if self._get("Deployment", object_name(spec)) is not None:
                self.apply(self.renderer.deployment(stopped))
        except ApiException as exc:
            raise BackendError(f"Kubernetes API error {exc.status}: {exc.reason}") from exc
        data = dict(state.data) if state and state.backend == self.name else {}
        data["applied"] = None  # the next reconcile re-applies the wanted replicas
        return Observation(
            status="stopped", state=BackendState(backend=self.name, data=data), desired_replicas=0
        )

    def delete(self, spec: DeploymentSpec, state: BackendState | None) -> None:
        name = object_name(spec)
        try:
            self._delete("Deployment", name)
            self._delete("Service", name)
            self._delete("Secret", f"{name}-env")
            self._delete("PersistentVolumeClaim", f"{name}-cache")
        except ApiException as exc:
            raise BackendError(f"Kubernetes API error {exc.status}: {exc.reason}") from exc

    def read_logs(
        self, spec: DeploymentSpec, state: BackendState | None, tail: int = 200
    ) -> list[str]:
        lines: list[str] = []
        for pod in self._pods(spec):
            pod_name = pod["metadata"]["name"]
            try:
                text = self.pod_log(pod_name, [("tailLines", tail)])
            except ApiException:
                continue
            lines += [f"[{pod_name}] {line}" for line in text.splitlines()]
        secrets = spec.secret_values()
        return [mask_secrets(line, secrets) for line in lines[-tail:]] if tail else []

    def pod_log(self, pod_name: str, query: list[tuple[str, Any]]) -> str:
        text = self.api.call_api(
            f"/api/v1/namespaces/{self.config.namespace}/pods/{pod_name}/log",
            "GET",
            query_params=[("container", "model"), *query],
            header_params={"Accept": "text/plain"},
            response_type="str",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
        return str(text or "")

    def follow_logs(self, spec: DeploymentSpec, state: BackendState | None) -> LogFollower:
        return KubeLogFollower(self, spec)

    def endpoint(self, spec: DeploymentSpec) -> str:
        return (
            f"http://{object_name(spec)}.{self.config.namespace}."
            f"{self.config.service_domain}:{CONTAINER_PORT}"
        )

    def close(self) -> None:
        self.api.close()

    # -------------------------------------------------------------------- internals ---
    def _digest(self, spec: DeploymentSpec) -> str:
        rendered = json.dumps(self.renderer.render(spec), sort_keys=True)
        return hashlib.sha256(rendered.encode()).hexdigest()[:16]

    def _apply_all(self, spec: DeploymentSpec) -> dict[str, Any]:
        deployment = self.apply(self.renderer.deployment(spec))
        uid = deployment.get("metadata", {}).get("uid")
        for manifest in self.renderer.render(spec, owner_uid=uid)[1:]:
            self.apply(manifest)
        return deployment

    def _pods(self, spec: DeploymentSpec) -> list[dict[str, Any]]:
        cache = self._cached()
        if cache is not None:
            return cache.pods_of(id_slug(spec.id))
        selector = f"{ID_LABEL}={labels(spec)[ID_LABEL]}"
        listed = self._call(
            "GET",
            f"/api/v1/namespaces/{self.config.namespace}/pods",
            query=[("labelSelector", selector)],
        )
        version = (listed.get("metadata") or {}).get("resourceVersion")
        if version:
            self._pods_version[spec.id] = str(version)
        return cast(list[dict[str, Any]], listed.get("items") or [])

    def wait_for_change(self, spec: DeploymentSpec, timeout_s: float) -> None:
        """Return on the first change to the deployment's pods, at most `timeout_s`.

        With a synced watch cache (the `conveyor kube-watch` process) it waits on the cache;
        otherwise it watches the pods from the last list's resourceVersion. A 410 Gone forgets
        that version (the next reconcile lists afresh); a stream that ends or times out costs
        one poll interval.
        """
        cache = self._cached()
        if cache is not None:
            cache.wait_for(id_slug(spec.id), timeout_s)
            return
        version = self._pods_version.get(spec.id)
        if version is None or timeout_s <= 0:
            super().wait_for_change(spec, timeout_s)
            return
        watcher = k8s_watch.Watch(return_type="object")
        try:
            for _event in watcher.stream(
                k8s.CoreV1Api(self.api).list_namespaced_pod,
                self.config.namespace,
                label_selector=f"{ID_LABEL}={id_slug(spec.id)}",
                resource_version=version,
                timeout_seconds=max(1, math.ceil(timeout_s)),
                # The server's timeout is whole seconds; the client's read timeout is exact
                # (the client takes only an int or a (connect, read) pair here).
                _request_timeout=(10, max(timeout_s, 0.01)),
            ):
                watcher.stop()
                break
        except ApiException as exc:
            if exc.status != 410:
                raise BackendError(f"watching pods failed: {exc.status} {exc.reason}") from exc
            self._pods_version.pop(spec.id, None)
        except (ReadTimeoutError, ProtocolError):
            return
        except MaxRetryError as exc:
            raise BackendError(f"watching pods failed: {exc.reason}") from exc

    def _pod_events(self, pod_names: set[str]) -> list[dict[str, Any]]:
        cache = self._cached()
        if cache is not None:
            return cache.events_for(pod_names)
        listed = self._call(
            "GET",
            f"/api/v1/namespaces/{self.config.namespace}/events",
            query=[("fieldSelector", "involvedObject.kind=Pod")],
        )
        items = cast(list[dict[str, Any]], listed.get("items") or [])
        return [e for e in items if e.get("involvedObject", {}).get("name") in pod_names]

    def _observe(
        self,
        spec: DeploymentSpec,
        deployment: dict[str, Any],
        pods: list[dict[str, Any]],
        state: BackendState,
        events: list[str],
    ) -> Observation:
        live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
        current = [
            p
            for p in live
            if p.get("metadata", {}).get("labels", {}).get(REVISION_LABEL) == str(spec.revision)
        ]
        ready = sum(1 for p in current if _pod_ready(p))
        problems = [diagnosis for p in current if not _pod_ready(p) for diagnosis in [_diagnose(p)]]
        found = [d for d in problems if d is not None]
        if not found and len(current) > ready:
            found = self._from_events({p["metadata"]["name"] for p in current if not _pod_ready(p)})
        endpoints = [self.endpoint(spec)] if ready > 0 else []
        status: ObservedStatus
        why: str | None = None
        hard = [d for d in found if d[0] != ReasonCode.UNSCHEDULABLE]
        if ready >= spec.replicas:
            status = "running"
        elif _deadline_exceeded(deployment):
            status, why = (
                "failed",
                reason(
                    ReasonCode.ROLLOUT_TIMEOUT,
                    f"not ready within {self.config.rollout_deadline_s}s"
                    + (f"; {found[0][0]}: {found[0][1]}" if found else ""),
                ),
            )
        elif hard and ready == 0:
            status, why = "failed", reason(*hard[0])
        else:
            status = "deploying"
            why = (
                reason(*found[0])
                if found
                else reason(
                    ReasonCode.REPLICAS_NOT_READY, f"{ready}/{spec.replicas} replicas ready"
                )
            )
        if why:
            why = mask_secrets(why, spec.secret_values())
        return Observation(
            status=status,
            reason=why,
            ready_replicas=ready,
            desired_replicas=spec.replicas,
            endpoints=endpoints,
            state=state,
            events=events,
        )

    def _from_events(self, pod_names: set[str]) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for event in self._pod_events(pod_names):
            why, message = event.get("reason", ""), event.get("message", "")
            if why == "FailedScheduling":
                found.append((ReasonCode.UNSCHEDULABLE, message))
            elif why in ("Failed", "BackOff") and "pull" in message.lower():
                found.append((ReasonCode.IMAGE_PULL_FAILED, message))
            elif why == "OOMKilling":
                found.append((ReasonCode.OOM_KILLED, message))
        return found


def _pod_ready(pod: dict[str, Any]) -> bool:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _diagnose(pod: dict[str, Any]) -> tuple[str, str] | None:
    """The most telling reason why a pod is not ready, as (code, message), if any."""
    status = pod.get("status", {})
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return ReasonCode.UNSCHEDULABLE, condition.get("message") or "no node fits"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        now_terminated = (container.get("state") or {}).get("terminated") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return (
                ReasonCode.IMAGE_PULL_FAILED,
                f"{waiting['reason']}: {waiting.get('message', '')}",
            )
        for terminated in (now_terminated, last):
            if terminated.get("reason") == "OOMKilled":
                return (
                    ReasonCode.OOM_KILLED,
                    f"container {container.get('name')} was killed for exceeding its memory "
                    f"limit (exit code {terminated.get('exitCode')}, "
                    f"{container.get('restartCount', 0)} restarts)",
                )
        if waiting.get("reason") == "CrashLoopBackOff":
            return (
                ReasonCode.CRASH_LOOP,
                f"container {container.get('name')} keeps crashing (exit code "
                f"{last.get('exitCode')}, {container.get('restartCount', 0)} restarts): "
                f"{waiting.get('message', '')}",
            )
    return None


def _deadline_exceeded(deployment: dict[str, Any]) -> bool:
    for condition in deployment.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == (
            "ProgressDeadlineExceeded"
        ):
            return True
    return False


_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")


def _ts_key(stamp: str) -> tuple[str, str] | None:
    """Sortable form of a kubelet RFC3339Nano timestamp (fraction padded to nanoseconds)."""
    match = _TIMESTAMP.match(stamp)
    if match is None:
        return None
    return match.group(1), (match.group(2) or "").ljust(9, "0")


class KubeLogFollower(LogFollower):
    """Follows pod logs by polling with `timestamps=true&sinceTime=…`, dropping lines seen."""

    def __init__(self, backend: KubernetesBackend, spec: DeploymentSpec) -> None:
        from datetime import UTC, datetime

        self.backend = backend
        self.spec = spec
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        self.start: tuple[str, str] = (now, "0" * 9)
        self.seen: dict[str, tuple[str, str]] = {}

    def poll(self) -> list[str]:
        lines: list[str] = []
        try:
            pods = self.backend._pods(self.spec)
        except ApiException:
            return []
        for pod in pods:
            name = pod["metadata"]["name"]
            last = self.seen.get(name, self.start)
            try:
                text = self.backend.pod_log(
                    name, [("timestamps", "true"), ("sinceTime", f"{last[0]}Z")]
                )
            except ApiException:
                continue
            for raw in text.splitlines():
                stamp, _, line = raw.partition(" ")
                key = _ts_key(stamp)
                if key is None or key <= last:
                    continue
                last = key
                lines.append(f"[{name}] {line}")
            self.seen[name] = last
        secrets = self.spec.secret_values()
        return [mask_secrets(line, secrets) for line in lines]
