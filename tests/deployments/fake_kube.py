"""A stateful fake Kubernetes API server for the Kubernetes backends' tests.

It is the edge that cannot run here (no kube-apiserver ships on PyPI): a real HTTP/1.1 server on
127.0.0.1 that the official client talks to. It stores what is server-side applied (rejecting
requests that are not `application/apply-patch+yaml` with a field manager, core objects that
fail `kubernetes-validate` and CloudNativePG objects that fail the CNPG CRD schema kept in
`tests/resources/schemas`), and plays the controllers:

- a Deployment controller that creates pods, and a kubelet/scheduler that advances every pod
  through a scripted list of phases (`SCRIPTS`), emitting the Events they would;
- a CloudNativePG operator that moves a `Cluster` through its phases to "Cluster in healthy
  state" (or to a failing phase) and a `Backup` through started/running to completed (or
  failed); a StatefulSet controller and a volume binder.

JSON merge patches (`application/merge-patch+json`) are applied to the live object, validated
the same way and recorded in `patches`; like the real API server (and the CNPG webhook) it
refuses to shrink a PVC's storage request or a Cluster's `spec.storage.size`. A node's kubelet
`stats/summary` (through the API server's node proxy) is whatever a test puts in `node_stats`.

Like the real API server, every change gets a new `resourceVersion` and lands in a change log;
`?watch=true` streams the changes after the given `resourceVersion` as chunked JSON lines
(`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` at the end when asked for), honouring label and field
selectors and `timeoutSeconds`. A watch from a version older than the compaction horizon
(`compact()`) gets an `ERROR` event with a 410 `Expired` Status, as from a real server.

Pods advance one step on each list or watch of pods (`tick_on_read`, what the rollout tests use),
or only when a test calls `tick()`. CNPG objects, StatefulSets and PVCs advance one step each
time they are read (GET).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate

from resources.kubernetes import parse_quantity

K8S_VERSION = "1.33"
CNPG_API = "postgresql.cnpg.io/v1"
CNPG_SCHEMA = json.loads(
    (Path(__file__).parents[1] / "resources" / "schemas" / "cnpg_v1.json").read_text()
)

SCRIPTS: dict[str, list[str]] = {
    "success": ["pending", "starting", "ready"],
    "unschedulable": ["unschedulable"],
    "image_pull": ["pending", "err_image_pull", "image_pull_backoff"],
    "oom": ["pending", "starting", "oom"],
    "crash_loop": ["pending", "starting", "crash_loop"],
    "slow": ["pending"] + ["starting"] * 10 + ["ready"],
    "ready_then_oom": ["pending", "starting", "ready", "ready", "oom"],
}

HEALTHY = "Cluster in healthy state"
CLUSTER_SCRIPTS: dict[str, list[str]] = {
    "healthy": ["Setting up primary", "Waiting for the instances to become active", HEALTHY],
    "failing": ["Setting up primary", "Unable to create required cluster objects"],
    "stuck": ["Setting up primary"],
}
BACKUP_SCRIPTS: dict[str, list[str]] = {
    "completed": ["started", "running", "completed"],
    "failed": ["started", "failed"],
}


@dataclass
class FakePod:
    name: str
    namespace: str
    deployment: str
    labels: dict[str, str]
    script: list[str]
    step: int = 0
    logs: list[tuple[str, str]] = field(
        default_factory=lambda: [("2020-01-01T00:00:00.5Z", "INFO starting vLLM API server")]
    )

    @property
    def phase(self) -> str:
        return self.script[max(0, min(self.step, len(self.script) - 1))]


def _container(state: dict[str, Any], ready: bool, **extra: Any) -> dict[str, Any]:
    return {
        "name": "model",
        "image": "vllm/vllm-openai:v0.11.0",
        "imageID": "",
        "ready": ready,
        "restartCount": extra.pop("restartCount", 0),
        "started": ready,
        "state": state,
        **extra,
    }


def pod_status(phase: str) -> dict[str, Any]:
    scheduled = {"type": "PodScheduled", "status": "True"}
    not_ready = {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
    if phase == "unschedulable":
        return {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    if phase == "pending":
        waiting = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "phase": "Pending",
            "conditions": [scheduled, not_ready],
            "containerStatuses": [_container(waiting, False)],
        }
    if phase in ("err_image_pull", "image_pull_backoff"):
        why = "ErrImagePull" if phase == "err_image_pull" else "ImagePullBackOff"
        message = 'Back-off pulling image "vllm/vllm-openai:v0.11.0": not found'
        return {
            "phase": "Pending",
            "conditions": [scheduled, not_ready],
            "containerStatuses": [
                _container({"waiting": {"reason": why, "message": message}}, False)
            ],
        }
    if phase == "starting":
        running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        return {
            "phase": "Running",
            "conditions": [scheduled, not_ready],
            "containerStatuses": [_container(running, False)],
        }
    if phase == "ready":
        running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        return {
            "phase": "Running",
            "conditions": [scheduled, {"type": "Ready", "status": "True"}],
            "containerStatuses": [_container(running, True)],
        }
    if phase in ("oom", "crash_loop"):
        terminated = (
            {"reason": "OOMKilled", "exitCode": 137}
            if phase == "oom"
            else {"reason": "Error", "exitCode": 1}
        )
        waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}
        return {
            "phase": "Running",
            "conditions": [scheduled, not_ready],
            "containerStatuses": [
                _container(waiting, False, restartCount=3, lastState={"terminated": terminated})
            ],
        }
    raise ValueError(phase)


EVENTS = {
    "unschedulable": (
        "FailedScheduling",
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    ),
    "err_image_pull": ("Failed", 'Failed to pull image "vllm/vllm-openai:v0.11.0": not found'),
    "image_pull_backoff": ("BackOff", 'Back-off pulling image "vllm/vllm-openai:v0.11.0"'),
    "crash_loop": ("BackOff", "Back-off restarting failed container model"),
    "oom": ("BackOff", "Back-off restarting failed container model"),
}

PLURALS = {
    "deployments": "Deployment",
    "services": "Service",
    "secrets": "Secret",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "pods": "Pod",
    "events": "Event",
    "statefulsets": "StatefulSet",
    "clusters": "Cluster",
    "backups": "Backup",
    "scheduledbackups": "ScheduledBackup",
    "namespaces": "Namespace",
    "jobs": "Job",
    "networkpolicies": "NetworkPolicy",
    "httproutes": "HTTPRoute",
}
Key = tuple[str, str, str]  # (plural, namespace, name)
# Sizes the API server (PVCs) and the CNPG webhook (Clusters) refuse to make smaller.
SIZES = {
    "persistentvolumeclaims": ("spec.resources.requests.storage",),
    "clusters": ("spec.storage.size",),
}


class Shrunk(ValueError):
    pass


@dataclass
class Change:
    version: int
    plural: str
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dig(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def selector_matches(obj: dict[str, Any], labels: str, fields: str) -> bool:
    """`k=v`, `k!=v` and `k` (exists) label terms, `path=v` field terms; comma means AND."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, labels.split(",")):
        if "!=" in term:
            key, _, value = term.partition("!=")
            if have.get(key) == value:
                return False
        elif "=" in term:
            key, _, value = term.partition("=")
            if have.get(key) != value.lstrip("="):
                return False
        elif term not in have:
            return False
    for term in filter(None, fields.split(",")):
        path, _, value = term.partition("=")
        if str(_dig(obj, path)) != value.lstrip("="):
            return False
    return True


class FakeKube:
    """The fake API's state; `scenario` picks the script of newly created pods."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[Key, dict[str, Any]] = {}
        self.pods: dict[str, FakePod] = {}
        self.scenario = "success"
        self.replacement_scenario = "success"
        self.cluster_scenario = "healthy"
        self.backup_scenario = "completed"
        self.deadline_exceeded = False
        self.tick_on_read = True
        self.applied: list[dict[str, Any]] = []
        self.patches: list[tuple[str, str, dict[str, Any]]] = []  # merge patches (plural, name)
        self.node_stats: dict[str, dict[str, Any]] = {}  # node → kubelet stats/summary
        self.bad_requests: list[str] = []
        self.version = 0
        self.horizon = 0  # watches from an older resourceVersion get 410 Gone
        self.log_of_changes: list[Change] = []
        self.snapshot: dict[Key, str] = {}
        self.versions: dict[Key, int] = {}
        self.lists: dict[str, int] = {}  # plural → list requests served
        self.watches = 0  # watch requests on pods
        self.watch_requests: dict[str, int] = {}
        self.gone_sent = 0
        self.closing = False

    # ------------------------------------------------------------- change bookkeeping ---
    def _current(self) -> dict[Key, dict[str, Any]]:
        state = {key: self._public(obj) for key, obj in self.objects.items()}
        for pod in self.pods.values():
            state[("pods", pod.namespace, pod.name)] = self.pod_json(pod)
        return state

    def _publish(self) -> None:
        """Diff the state against the last snapshot; log each change under a new version."""
        with self.lock:
            state = self._current()
            for key, obj in state.items():
                body = json.dumps(obj, sort_keys=True)
                if self.snapshot.get(key) == body:
                    continue
                kind = "MODIFIED" if key in self.snapshot else "ADDED"
                self.snapshot[key] = body
                self._log(key, kind, obj)
            for key in [k for k in self.snapshot if k not in state]:
                last = json.loads(self.snapshot.pop(key))
                self._log(key, "DELETED", last)
                self.versions.pop(key, None)
            self.changed.notify_all()

    def _log(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        self.versions[key] = self.version
        stamped = json.loads(json.dumps(obj))
        stamped.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.log_of_changes.append(Change(self.version, key[0], key[1], kind, stamped))

    def stamped(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        out = json.loads(json.dumps(obj))
        out.setdefault("metadata", {})["resourceVersion"] = str(self.versions.get(key, 0))
        return out

    def compact(self) -> None:
        """The server moved on (other objects changed) and forgot its change log: watches from
        any version seen so far now get 410 Gone."""
        with self.lock:
            self.version += 1
            self.horizon = self.version
            self.log_of_changes.clear()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.changed.notify_all()

    # ------------------------------------------------------------------ controllers ---
    def tick(self) -> None:
        """One step of every controller: pods advance, Deployments get their status."""
        with self.lock:
            for (plural, ns, name), obj in list(self.objects.items()):
                if plural == "deployments":
                    self._control(ns, name, obj)
            for pod in self.pods.values():
                pod.step += 1
                self._emit(pod)
            for (plural, _ns, name), obj in list(self.objects.items()):
                if plural == "deployments":
                    self._deployment_status(obj, name)
            self._publish()

    def _control(self, ns: str, name: str, deployment: dict[str, Any]) -> None:
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        wanted = deployment["spec"].get("replicas", 1)
        mine = [p for p in self.pods.values() if p.deployment == name]
        for pod in mine:
            if pod.labels != template_labels:
                del self.pods[pod.name]
        mine = [p for p in self.pods.values() if p.deployment == name]
        for pod in mine[wanted:]:
            del self.pods[pod.name]
        for _ in range(wanted - len(mine)):
            script = SCRIPTS[
                self.scenario if not deployment.get("_replaced") else self.replacement_scenario
            ]
            pod = FakePod(
                name=f"{name}-{uuid.uuid4().hex[:5]}",
                namespace=ns,
                deployment=name,
                labels=dict(template_labels),
                script=list(script),
                step=-1,
            )
            self.pods[pod.name] = pod
        self._deployment_status(deployment, name)

    def _deployment_status(self, deployment: dict[str, Any], name: str) -> None:
        wanted = deployment["spec"].get("replicas", 1)
        ready = sum(1 for p in self.pods.values() if p.deployment == name and p.phase == "ready")
        conditions = []
        if self.deadline_exceeded and ready < wanted:
            conditions.append(
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            )
        deployment["status"] = {
            "replicas": wanted,
            "readyReplicas": ready,
            "conditions": conditions,
        }

    def _emit(self, pod: FakePod) -> None:
        if pod.phase in EVENTS and pod.step >= 0:
            reason, message = EVENTS[pod.phase]
            name = f"{pod.name}.{uuid.uuid4().hex[:6]}"
            self.objects[("events", pod.namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": pod.namespace},
                "involvedObject": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace},
                "reason": reason,
                "message": message,
                "type": "Warning",
                "lastTimestamp": _now(),
            }

    def advance(self, plural: str, obj: dict[str, Any]) -> None:
        """One step of the operator owning a CNPG object, StatefulSet or PVC (on each read)."""
        with self.lock:
            status = obj.setdefault("status", {})
            step = obj["_step"] = obj.get("_step", -1) + 1
            if plural == "clusters":
                self._cluster_step(obj, status, step)
            elif plural == "backups":
                script = BACKUP_SCRIPTS[obj.get("_script") or self.backup_scenario]
                obj["_script"] = obj.get("_script") or self.backup_scenario
                phase = script[min(step, len(script) - 1)]
                status.update(phase=phase, method="barmanObjectStore")
                if phase in ("running", "completed"):
                    status.setdefault("startedAt", _now())
                    status.setdefault("beginLSN", "0/2000028")
                if phase == "completed":
                    status.setdefault("stoppedAt", _now())
                    status.update(endLSN="0/3000100", backupId=f"2026{uuid.uuid4().hex[:6]}")
                    cluster = self.objects.get(
                        ("clusters", obj["metadata"]["namespace"], obj["spec"]["cluster"]["name"])
                    )
                    if cluster is not None:
                        cluster.setdefault("status", {}).setdefault(
                            "firstRecoverabilityPoint", status["stoppedAt"]
                        )
                        cluster["status"]["lastSuccessfulBackup"] = status["stoppedAt"]
                if phase == "failed":
                    status["error"] = "can't upload: S3 bucket not found"
            elif plural == "statefulsets":
                ready = 1 if step >= 1 else 0
                status.update(replicas=1, readyReplicas=ready, availableReplicas=ready)
            elif plural == "persistentvolumeclaims":
                status["phase"] = "Bound" if step >= 1 else "Pending"
            self._publish()

    def _cluster_step(self, obj: dict[str, Any], status: dict[str, Any], step: int) -> None:
        script = CLUSTER_SCRIPTS[obj.get("_script") or self.cluster_scenario]
        obj["_script"] = obj.get("_script") or self.cluster_scenario
        phase = script[min(step, len(script) - 1)]
        healthy = phase == HEALTHY
        name = obj["metadata"]["name"]
        status.update(
            phase=phase,
            instances=1,
            readyInstances=1 if healthy else 0,
            writeService=f"{name}-rw",
            readService=f"{name}-r",
        )
        if phase.startswith("Unable"):
            status["phaseReason"] = 'persistentvolumeclaims "x" is forbidden: exceeded quota'
        ready = {"type": "Ready", "status": "True" if healthy else "False", "reason": "x"}
        conditions = [ready]
        if healthy:
            archiving = obj.get("_archiving", True)
            conditions.append(
                {
                    "type": "ContinuousArchiving",
                    "status": "True" if archiving else "False",
                    "message": "" if archiving else "unexpected failure invoking barman-cloud",
                }
            )
            status["currentPrimary"] = f"{name}-1"
        status["conditions"] = conditions

    def log(self, deployment_name: str, text: str) -> None:
        """Append a line (timestamped now) to every pod of a deployment."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self.lock:
            for pod in self.pods.values():
                if pod.deployment == deployment_name:
                    pod.logs.append((stamp, text))

    def delete_pod_behind_our_back(self, deployment_name: str) -> None:
        with self.lock:
            for pod in [p for p in self.pods.values() if p.deployment == deployment_name]:
                del self.pods[pod.name]
            for (plural, _ns, name), obj in self.objects.items():
                if plural == "deployments" and name == deployment_name:
                    obj["_replaced"] = True
            self._publish()

    def pod_json(self, pod: FakePod) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": {"containers": [{"name": "model", "image": "vllm/vllm-openai:v0.11.0"}]},
            "status": pod_status(pod.phase),
        }

    # ----------------------------------------------------------------------- verbs ---
    def validate(self, body: dict[str, Any]) -> None:
        """Refuse what the API server would: core kinds against the Kubernetes schemas, CNPG
        kinds against the CNPG CRD schema (a subclass adds other CRDs)."""
        if body.get("apiVersion") == CNPG_API:
            schema = {**CNPG_SCHEMA[body["kind"]], "definitions": CNPG_SCHEMA["definitions"]}
            jsonschema.validate(body, schema)
        else:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)

    def apply(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.validate(body)
        with self.lock:
            self.applied.append(body)
            key = (plural, ns, name)
            previous = self.objects.get(key)
            obj = json.loads(json.dumps(body))
            meta = obj.setdefault("metadata", {})
            meta["uid"] = previous["metadata"]["uid"] if previous else str(uuid.uuid4())
            meta.setdefault("creationTimestamp", _now())
            if previous is not None:
                for kept in ("status", "_replaced", "_step", "_script", "_archiving"):
                    if kept in previous:
                        obj[kept] = previous[kept]
            self.objects[key] = obj
            if plural == "deployments":
                self._control(ns, name, obj)
            self._publish()
            return self.stamped(key, self._public(obj))

    def merge(self, plural: str, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of a live object, validated like an apply. KeyError
        when there is no such object."""
        with self.lock:
            key = (plural, ns, name)
            previous = self.objects[key]
            obj = _merged(previous, patch)
            for path in SIZES.get(plural, ()):
                old, new = _dig(previous, path), _dig(obj, path)
                if old and new and parse_quantity(str(new)) < parse_quantity(str(old)):
                    raise Shrunk(f"{path}: Forbidden: field can not be less than previous value")
            body = self._public(obj)
            body.pop("status", None)
            self.validate(body)
            self.patches.append((plural, name, patch))
            self.objects[key] = obj
            self._publish()
            return self.stamped(key, self._public(obj))

    def delete(self, plural: str, ns: str, name: str) -> bool:
        with self.lock:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return False
            if plural == "deployments":
                for pod in [p for p in self.pods.values() if p.deployment == name]:
                    del self.pods[pod.name]
            self._collect_garbage()
            self._publish()
            return True

    def _collect_garbage(self) -> None:
        """The garbage collector: objects whose owner is gone go too (transitively)."""
        while True:
            uids = {o["metadata"].get("uid") for o in self.objects.values()}
            orphans = [
                key
                for key, o in self.objects.items()
                if (refs := o["metadata"].get("ownerReferences"))
                and not any(ref.get("uid") in uids for ref in refs)
            ]
            if not orphans:
                return
            for key in orphans:
                del self.objects[key]

    def items(self, plural: str, ns: str, labels: str = "", fields: str = "") -> list[Any]:
        with self.lock:
            return [
                self.stamped(key, obj)
                for key, obj in self._current().items()
                if key[0] == plural and key[1] == ns and selector_matches(obj, labels, fields)
            ]

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def kinds(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (p, _ns, name) in self.objects if p == plural)

    def set_archiving(self, ns: str, cluster: str, ok: bool) -> None:
        with self.lock:
            self.objects[("clusters", ns, cluster)]["_archiving"] = ok

    # ----------------------------------------------------------------------- watch ---
    def watch(
        self,
        plural: str,
        ns: str,
        since: str,
        matches: Callable[[dict[str, Any]], bool],
        timeout_s: float,
        bookmarks: bool,
        write: Callable[[dict[str, Any]], None],
    ) -> None:
        """Stream the changes after `since` until `timeout_s` passes (or the server closes)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            if plural == "pods":
                self.watches += 1
                if self.tick_on_read:
                    self.tick()
            self.watch_requests[plural] = self.watch_requests.get(plural, 0) + 1
            if since in ("", "0"):
                sent = self.version
                initial = [
                    {"type": "ADDED", "object": obj}
                    for obj in self.items(plural, ns)
                    if matches(obj)
                ]
            elif int(since) < self.horizon:
                self.gone_sent += 1
                initial, sent = None, 0
            else:
                initial, sent = [], int(since)
        if initial is None:
            write(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": f"too old resource version: {since} ({self.horizon})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
            )
            return
        for line in initial:
            write(line)
        while True:
            with self.lock:
                fresh = [
                    c
                    for c in self.log_of_changes
                    if c.version > sent and c.plural == plural and c.namespace == ns
                ]
                if not fresh:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closing:
                        break
                    self.changed.wait(min(left, 0.5))
                    continue
                sent = fresh[-1].version
            for change in fresh:
                if matches(change.obj):
                    write({"type": change.type, "object": change.obj})
        if bookmarks:
            kind = PLURALS.get(plural, "Object")
            version = {"resourceVersion": str(sent)}
            write({"type": "BOOKMARK", "object": {"kind": kind, "metadata": version}})


def _merged(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "code": code,
                "reason": reason,
                "message": message,
            }
            self._send(code, body)

        def _route(self) -> tuple[str, str, str | None, str | None, dict[str, list[str]]]:
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            # /api/v1/namespaces/ns/plural[/name[/sub]] or /apis/group/v1/namespaces/...
            offset = 2 if parts[0] == "api" else 3
            ns, plural = parts[offset + 1], parts[offset + 2]
            name = parts[offset + 3] if len(parts) > offset + 3 else None
            sub = parts[offset + 4] if len(parts) > offset + 4 else None
            return plural, ns, name, sub, parse_qs(url.query)

        def _stream(self, plural: str, ns: str, query: dict[str, list[str]]) -> None:
            labels = query.get("labelSelector", [""])[0]
            fields = query.get("fieldSelector", [""])[0]
            timeout = float(query.get("timeoutSeconds", ["5"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write(event: dict[str, Any]) -> None:
                data = (json.dumps(event) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            try:
                fake.watch(
                    plural,
                    ns,
                    query.get("resourceVersion", [""])[0],
                    lambda obj: selector_matches(obj, labels, fields),
                    timeout,
                    query.get("allowWatchBookmarks", [""])[0].lower() == "true",
                    write,
                )
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client stopped watching
                self.close_connection = True

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path.startswith("/api/v1/nodes/") and path.endswith("/proxy/stats/summary"):
                stats = fake.node_stats.get(path.split("/")[4])
                if stats is None:
                    self._status(404, "NotFound", "node not found")
                else:
                    self._send(200, stats)
                return
            plural, ns, name, sub, query = self._route()
            if name is None and query.get("watch", [""])[0].lower() == "true":
                self._stream(plural, ns, query)
            elif name is None:
                fake.lists[plural] = fake.lists.get(plural, 0) + 1
                if plural == "pods" and fake.tick_on_read:
                    fake.tick()
                with fake.lock:
                    items = fake.items(
                        plural,
                        ns,
                        query.get("labelSelector", [""])[0],
                        query.get("fieldSelector", [""])[0],
                    )
                    meta = {"resourceVersion": str(fake.version)}
                kind = PLURALS.get(plural, "Object") + "List"
                self._send(
                    200, {"apiVersion": "v1", "kind": kind, "metadata": meta, "items": items}
                )
            elif plural == "pods" and sub == "log":
                pod = fake.pods.get(name)
                if pod is None:
                    self._status(404, "NotFound", "pod not found")
                else:
                    stamps = query.get("timestamps") == ["true"]
                    since = query.get("sinceTime", [""])[0]
                    shown = [
                        f"{ts} {text}" if stamps else text
                        for ts, text in pod.logs
                        if ts[:19] >= since[:19]
                    ]
                    self._send(200, "".join(line + "\n" for line in shown), "text/plain")
            else:
                key = (plural, ns, name)
                obj = fake.objects.get(key)
                if obj is None:
                    self._status(404, "NotFound", f"{plural} {name!r} not found")
                    return
                if plural in ("clusters", "backups", "statefulsets", "persistentvolumeclaims"):
                    fake.advance(plural, obj)
                with fake.lock:
                    self._send(200, fake.stamped(key, fake._public(obj)))

        def do_PATCH(self) -> None:
            plural, ns, name, _sub, query = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.headers.get("Content-Type") == "application/merge-patch+json":
                try:
                    self._send(200, fake.merge(plural, ns, name or "", json.loads(raw)))
                except KeyError:
                    self._status(404, "NotFound", f"{plural} {name!r} not found")
                except Shrunk as exc:
                    fake.bad_requests.append(f"shrink of {plural}/{name}: {exc}")
                    self._status(422, "Invalid", str(exc))
                except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
                    fake.bad_requests.append(f"invalid patch of {plural}/{name}: {exc.message}")
                    self._status(422, "Invalid", exc.message)
                return
            if self.headers.get("Content-Type") != "application/apply-patch+yaml":
                fake.bad_requests.append(f"content-type {self.headers.get('Content-Type')}")
                self._status(415, "UnsupportedMediaType", "only server-side apply is faked")
                return
            if not query.get("fieldManager"):
                fake.bad_requests.append("no fieldManager")
                self._status(422, "Invalid", "fieldManager is required for apply")
                return
            body = json.loads(raw)
            if body.get("kind") != PLURALS.get(plural) or body["metadata"]["name"] != name:
                self._status(400, "BadRequest", "kind/name do not match the path")
                return
            try:
                self._send(200, fake.apply(plural, ns, name or "", body))
            except kubernetes_validate.ValidationError as exc:
                fake.bad_requests.append(f"invalid {plural}/{name}: {exc.message}")
                self._status(422, "Invalid", exc.message)
            except jsonschema.ValidationError as exc:
                fake.bad_requests.append(f"invalid {plural}/{name}: {exc.message}")
                self._status(422, "Invalid", exc.message)

        def do_DELETE(self) -> None:
            plural, ns, name, _sub, query = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if name is None:  # a collection delete by label selector
                labels = query.get("labelSelector", [""])[0]
                with fake.lock:
                    doomed = [n["metadata"]["name"] for n in fake.items(plural, ns, labels)]
                    for doomed_name in doomed:
                        fake.delete(plural, ns, doomed_name)
                self._send(200, {"apiVersion": "v1", "kind": "List", "items": []})
            elif fake.delete(plural, ns, name):
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            else:
                self._status(404, "NotFound", f"{plural} {name!r} not found")

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def running_fake_kube(
    fake: FakeKube | None = None,
    handler: Callable[[Any], type[BaseHTTPRequestHandler]] = _handler,
) -> Iterator[tuple[FakeKube, str]]:
    """Serve ``fake`` (a new ``FakeKube`` by default) with ``handler``'s request handler (a
    subclass's handler adds routes)."""
    fake = fake if fake is not None else FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        fake.close()
        server.shutdown()
        server.server_close()
