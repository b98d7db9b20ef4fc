"""A stateful fake Kubernetes API server for the Kubernetes backend's tests.

It is the edge that cannot run here (no kube-apiserver ships on PyPI): a real HTTP server on
127.0.0.1 that the official client talks to. It stores what is server-side applied (rejecting
requests that are not `application/apply-patch+yaml` with a field manager, and objects that fail
`kubernetes-validate`), plays a Deployment controller that creates pods, and advances every pod
through a scripted list of phases each time pods are listed, emitting the events a kubelet or
scheduler would.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

K8S_VERSION = "1.33"

SCRIPTS: dict[str, list[str]] = {
    "success": ["pending", "starting", "ready"],
    "unschedulable": ["unschedulable"],
    "image_pull": ["pending", "err_image_pull", "image_pull_backoff"],
    "oom": ["pending", "starting", "oom"],
    "crash_loop": ["pending", "starting", "crash_loop"],
    "slow": ["pending"] + ["starting"] * 10 + ["ready"],
}


@dataclass
class FakePod:
    name: str
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
}


class FakeKube:
    """The fake API's state; `scenario` picks the script of newly created pods."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: dict[str, FakePod] = {}
        self.events: list[dict[str, Any]] = []
        self.scenario = "success"
        self.replacement_scenario = "success"
        self.deadline_exceeded = False
        self.applied: list[dict[str, Any]] = []
        self.bad_requests: list[str] = []
        self.versions = 0
        self.watches = 0

    # ------------------------------------------------------------------ controllers ---
    def tick(self) -> None:
        with self.lock:
            for (plural, _ns, name), obj in list(self.objects.items()):
                if plural == "deployments":
                    self._control(name, obj)
            for pod in self.pods.values():
                pod.step += 1
                self._emit(pod)

    def _control(self, name: str, deployment: dict[str, Any]) -> None:
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
                deployment=name,
                labels=dict(template_labels),
                script=list(script),
                step=-1,
            )
            self.pods[pod.name] = pod
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
        if pod.phase in EVENTS:
            reason, message = EVENTS[pod.phase]
            self.events.append(
                {
                    "metadata": {"name": f"{pod.name}.{uuid.uuid4().hex[:6]}", "namespace": "x"},
                    "involvedObject": {"kind": "Pod", "name": pod.name},
                    "reason": reason,
                    "message": message,
                    "type": "Warning",
                }
            )

    def log(self, deployment_name: str, text: str) -> None:
        """Append a line (timestamped now) to every pod of a deployment."""
        from datetime import UTC, datetime

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

    def pod_json(self, pod: FakePod, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": namespace, "labels": pod.labels},
            "spec": {"containers": [{"name": "model", "image": "vllm/vllm-openai:v0.11.0"}]},
            "status": pod_status(pod.phase),
        }

    # ----------------------------------------------------------------------- verbs ---
    def apply(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        with self.lock:
            self.applied.append(body)
            key = (plural, ns, name)
            previous = self.objects.get(key)
            obj = json.loads(json.dumps(body))
            meta = obj.setdefault("metadata", {})
            meta["uid"] = previous["metadata"]["uid"] if previous else str(uuid.uuid4())
            meta["resourceVersion"] = str(len(self.applied))
            if previous is not None and "status" in previous:
                obj["status"] = previous["status"]
            if previous is not None and previous.get("_replaced"):
                obj["_replaced"] = True
            self.objects[key] = obj
            if plural == "deployments":
                self._control(name, obj)
            return self._public(obj)

    def delete(self, plural: str, ns: str, name: str) -> bool:
        with self.lock:
            obj = self.objects.pop((plural, ns, name), None)
            if obj is None:
                return False
            if plural == "deployments":
                uid = obj["metadata"]["uid"]
                for pod in [p for p in self.pods.values() if p.deployment == name]:
                    del self.pods[pod.name]
                for key, other in list(self.objects.items()):
                    refs = other["metadata"].get("ownerReferences") or []
                    if any(ref.get("uid") == uid for ref in refs):
                        del self.objects[key]  # the garbage collector
            return True

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def kinds(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (p, _ns, name) in self.objects if p == plural)


def _handler(fake: FakeKube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
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
            # /api/v1/namespaces/ns/plural[/name[/sub]] or /apis/apps/v1/namespaces/...
            offset = 2 if parts[0] == "api" else 3
            ns, plural = parts[offset + 1], parts[offset + 2]
            name = parts[offset + 3] if len(parts) > offset + 3 else None
            sub = parts[offset + 4] if len(parts) > offset + 4 else None
            return plural, ns, name, sub, parse_qs(url.query)

        def do_GET(self) -> None:
            plural, ns, name, sub, query = self._route()
            if plural == "pods" and name is None:
                fake.tick()
                selector = query.get("labelSelector", [""])[0]
                key, _, value = selector.partition("=")
                with fake.lock:
                    fake.versions += 1
                    items = [
                        fake.pod_json(p, ns)
                        for p in fake.pods.values()
                        if not key or p.labels.get(key) == value
                    ]
                if query.get("watch", [""])[0].lower() == "true":
                    fake.watches += 1
                    if not query.get("resourceVersion"):
                        self._status(400, "BadRequest", "watch without resourceVersion")
                        return
                    lines = [json.dumps({"type": "MODIFIED", "object": item}) for item in items]
                    self._send(200, "".join(line + "\n" for line in lines))
                    return
                meta = {"resourceVersion": str(fake.versions)}
                body = {"apiVersion": "v1", "kind": "PodList", "metadata": meta, "items": items}
                self._send(200, body)
            elif plural == "pods" and sub == "log":
                pod = fake.pods.get(name or "")
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
            elif plural == "events":
                with fake.lock:
                    items = list(fake.events)
                self._send(200, {"apiVersion": "v1", "kind": "EventList", "items": items})
            else:
                obj = fake.objects.get((plural, ns, name or ""))
                if obj is None:
                    self._status(404, "NotFound", f"{plural} {name!r} not found")
                else:
                    self._send(200, fake._public(obj))

        def do_PATCH(self) -> None:
            plural, ns, name, _sub, query = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
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

        def do_DELETE(self) -> None:
            plural, ns, name, _sub, _query = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if fake.delete(plural, ns, name or ""):
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            else:
                self._status(404, "NotFound", f"{plural} {name!r} not found")

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def running_fake_kube() -> Iterator[tuple[FakeKube, str]]:
    fake = FakeKube()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
