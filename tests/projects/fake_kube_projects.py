"""The stateful fake Kubernetes API (``tests.deployments.fake_kube``) grown for app projects.

On top of the base fake: cluster-scoped Namespaces (deleting one deletes everything in it; a
namespaced object cannot be applied into a missing one: 404, as from the real API server),
HTTPRoutes validated against the Gateway API schema kept in ``schemas/``, a Deployment
controller that rolls like ``maxUnavailable: 0, maxSurge: 1`` (an old pod goes only when a new
one is ready, so a new revision that never gets ready leaves the old pods serving), per
namespace; and a Job controller that runs a Kaniko build pod through a scripted list of phases
(``BUILD_SCRIPTS``), writing its init container's and Kaniko's log lines as it goes and the
image digest as Kaniko's termination message.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

from tests.deployments.fake_kube import SCRIPTS, FakeKube, FakePod, _handler

GATEWAY_API = "gateway.networking.k8s.io/v1"
HTTPROUTE_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "gateway_httproute_v1.json").read_text()
)
APP_SCRIPTS = {**SCRIPTS, "never_ready": ["pending", "starting"]}
BUILD_SCRIPTS = {
    "success": ["build_pending", "checkout", "building", "pushed"],
    "failure": ["build_pending", "checkout", "building", "build_failed"],
}
DIGEST = "sha256:" + "ab" * 32
BUILD_LOGS: dict[str, list[tuple[str, str]]] = {  # phase → (container, line) written on entry
    "checkout": [("checkout", "Cloning into '/workspace'...")],
    "building": [
        ("kaniko", "INFO[0000] Retrieving image manifest python:3.11-slim"),
        ("kaniko", "INFO[0004] RUN pip install -r requirements.txt"),
    ],
    "pushed": [("kaniko", "INFO[0012] Pushing image to the registry"), ("kaniko", "INFO done")],
    "build_failed": [
        ("kaniko", "ERROR: No matching distribution found for nosuchpackage==9.9"),
        ("kaniko", "error building image: error building stage: exit status 1"),
    ],
}


class MissingNamespace(LookupError):
    pass


class ProjectsFakeKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.build_scenario = "success"
        self.container_logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._clock = datetime.now(UTC)

    # ------------------------------------------------------------------------ verbs ---
    def validate(self, body: dict[str, Any]) -> None:
        if body.get("apiVersion") == GATEWAY_API:
            jsonschema.validate(body, {**HTTPROUTE_SCHEMA})
        else:
            super().validate(body)

    def apply(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if plural != "namespaces" and ("namespaces", "", ns) not in self.objects:
                raise MissingNamespace(ns)
            previous = self.objects.get((plural, ns, name))
            out = super().apply(plural, ns, name, body)
            if previous is not None and "_pod" in previous:
                self.objects[(plural, ns, name)]["_pod"] = previous["_pod"]
            return out

    def delete(self, plural: str, ns: str, name: str) -> bool:
        with self.lock:
            if plural == "namespaces":
                if self.objects.pop(("namespaces", "", name), None) is None:
                    return False
                for key in [key for key in self.objects if key[1] == name]:
                    del self.objects[key]
                for pod in [p for p in self.pods.values() if p.namespace == name]:
                    del self.pods[pod.name]
                self._publish()
                return True
            found = self.objects.pop((plural, ns, name), None)
            if found is None:
                return False
            owner = name if plural == "deployments" else f"job:{name}" if plural == "jobs" else None
            for pod in self.pods_of(ns, owner or ""):
                del self.pods[pod.name]
            self._publish()
            return True

    def namespace_objects(self, ns: str) -> list[tuple[str, str]]:
        with self.lock:
            found = [(plural, name) for (plural, n, name) in self.objects if n == ns]
            found += [("pods", p.name) for p in self.pods.values() if p.namespace == ns]
            return sorted(found)

    def pods_of(self, ns: str, deployment: str) -> list[FakePod]:
        with self.lock:
            return [
                p for p in self.pods.values() if p.namespace == ns and p.deployment == deployment
            ]

    # ------------------------------------------------------------------ controllers ---
    def tick(self) -> None:
        with self.lock:
            super().tick()  # Deployments roll, pods (build pods too) advance one step
            for (plural, ns, name), job in list(self.objects.items()):
                if plural == "jobs":
                    self._job(ns, name, job)
            self._publish()

    def _control(self, ns: str, name: str, deployment: dict[str, Any]) -> None:
        """A rolling update with ``maxUnavailable: 0, maxSurge: 1``, in ``ns`` only."""
        template = deployment["spec"]["template"]["metadata"]["labels"]
        wanted = deployment["spec"].get("replicas", 1)
        mine = self.pods_of(ns, name)
        new = [p for p in mine if p.labels == template]
        old = sorted((p for p in mine if p.labels != template), key=lambda p: p.phase != "ready")
        for pod in new[wanted:]:
            del self.pods[pod.name]
        new = new[:wanted]
        ready_new = sum(1 for p in new if p.phase == "ready")
        kept_old = old[: max(0, wanted - ready_new)]
        for pod in old[len(kept_old) :]:
            del self.pods[pod.name]
        target = min(wanted, wanted + 1 - len(kept_old)) if kept_old else wanted
        for _ in range(target - len(new)):
            scenario = self.replacement_scenario if deployment.get("_replaced") else self.scenario
            pod = FakePod(
                name=f"{name}-{uuid.uuid4().hex[:5]}",
                namespace=ns,
                deployment=name,
                labels=dict(template),
                script=list(APP_SCRIPTS[scenario]),
                step=-1,
            )
            self.pods[pod.name] = pod
        self._deployment_status(deployment, name)

    def _deployment_status(self, deployment: dict[str, Any], name: str) -> None:
        ns = deployment["metadata"].get("namespace", "")
        template = deployment["spec"]["template"]["metadata"]["labels"]
        wanted = deployment["spec"].get("replicas", 1)
        pods = self.pods_of(ns, name)
        ready = sum(1 for p in pods if p.phase == "ready")
        updated = sum(1 for p in pods if p.labels == template)
        conditions = []
        if self.deadline_exceeded and ready < wanted:
            conditions.append(
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            )
        deployment["status"] = {
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "conditions": conditions,
        }

    def _stamp(self) -> str:
        self._clock = max(self._clock + timedelta(microseconds=1), datetime.now(UTC))
        return self._clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _job(self, ns: str, name: str, job: dict[str, Any]) -> None:
        pod = self.pods.get(job.get("_pod", ""))
        if pod is None and "_pod" not in job:
            labels = dict(job["spec"]["template"]["metadata"]["labels"])
            pod = FakePod(
                name=f"{name}-{uuid.uuid4().hex[:5]}",
                namespace=ns,
                deployment=f"job:{name}",
                labels={**labels, "job-name": name},
                script=list(BUILD_SCRIPTS[self.build_scenario]),
                step=0,
                logs=[],
            )
            self.pods[pod.name] = pod
            job["_pod"] = pod.name
        if pod is None:
            return
        if job.get("_phase") != pod.phase:
            job["_phase"] = pod.phase
            for container, line in BUILD_LOGS.get(pod.phase, []):
                key = (pod.name, container)
                self.container_logs.setdefault(key, []).append((self._stamp(), line))
        status: dict[str, Any] = {"active": 1}
        if pod.phase == "pushed":
            status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        elif pod.phase == "build_failed":
            failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
            status = {"failed": 1, "conditions": [failed]}
        job["status"] = status

    def pod_json(self, pod: FakePod) -> dict[str, Any]:
        if not pod.deployment.startswith("job:"):
            out = super().pod_json(pod)
            for status in out["status"].get("containerStatuses") or []:
                status["name"] = "app"
            return out
        running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        state: dict[str, Any] = running
        phase = "Running"
        if pod.phase == "build_pending":
            state, phase = {"waiting": {"reason": "PodInitializing"}}, "Pending"
        elif pod.phase == "pushed":
            state = {"terminated": {"exitCode": 0, "reason": "Completed", "message": DIGEST}}
            phase = "Succeeded"
        elif pod.phase == "build_failed":
            state = {"terminated": {"exitCode": 1, "reason": "Error"}}
            phase = "Failed"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": {"containers": [{"name": "kaniko", "image": "kaniko"}]},
            "status": {
                "phase": phase,
                "containerStatuses": [
                    {"name": "kaniko", "ready": False, "restartCount": 0, "state": state}
                ],
            },
        }


def projects_handler(fake: Any) -> type[BaseHTTPRequestHandler]:
    """The base fake's handler plus cluster-scoped Namespaces, the 404 for a missing
    namespace, and per-container logs of build pods."""
    base: Any = _handler(fake)

    class Handler(base):  # type: ignore[misc]
        def _route(self) -> tuple[str, str, str | None, str | None, dict[str, list[str]]]:
            url = urlsplit(self.path)
            parts = [p for p in url.path.split("/") if p]
            if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
                name = parts[3] if len(parts) == 4 else None
                return "namespaces", "", name, None, parse_qs(url.query)
            route: tuple[str, str, str | None, str | None, dict[str, list[str]]]
            route = super()._route()
            return route

        def do_GET(self) -> None:
            plural, _ns, name, sub, query = self._route()
            pod = fake.pods.get(name) if plural == "pods" and sub == "log" else None
            if pod is not None and pod.deployment.startswith("job:"):
                container = query.get("container", [""])[0]
                lines = fake.container_logs.get((pod.name, container), [])
                stamps = query.get("timestamps") == ["true"]
                text = "".join(f"{ts} {line}\n" if stamps else f"{line}\n" for ts, line in lines)
                self._send(200, text, "text/plain")
                return
            super().do_GET()

        def do_PATCH(self) -> None:
            try:
                super().do_PATCH()
            except MissingNamespace as exc:
                self._status(404, "NotFound", f'namespaces "{exc}" not found')

    return Handler
