"""Observed state of Conveyor's Kubernetes objects, kept by watches on pods, events and Deployments.

`KubeWatcher` runs one `ResourceStream` per kind. Each lists its kind once (taking the list's
`resourceVersion`), then watches from that version with `kubernetes.watch.Watch`, records the
version of every event (and of `BOOKMARK`s), reconnects from it when a stream ends (the server
closes watches after `timeoutSeconds`), and lists again when the server answers 410 Gone (the
version was compacted away). What the streams see lands in an `ObservedCluster`, and the ids of
the deployments whose pods, pod events or Deployment changed are handed, batched, to a callback.

Where it runs: `conveyor kube-watch` (`deployments.watch.serve_watch`), one long-lived process per
cluster (one replica, like any controller), whose callback reconciles each changed deployment at
once with the backend reading this cache instead of the API server. Not in the Celery workers: a
watch is a stream held for minutes, which would pin a worker slot (and every prefork child would
hold a duplicate); and not as a bounded watch inside the beat task, whose windows would either
overlap or leave gaps. The beat reconciler still re-lists every `CONVEYOR_DEPLOY_RECONCILE_SECONDS`
as the safety net (an informer's resync), and deploy jobs keep their own short watch of one
deployment's pods while they wait for a rollout. Two watch processes by mistake only duplicate
work: reconciling takes the deployment's row lock and is idempotent.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from deployments.backends.kubernetes import ID_LABEL, MANAGED_BY, id_slug

log = logging.getLogger(__name__)
KINDS = ("deployments", "pods", "events")
EVENTS_PER_POD = 20


class ObservedCluster:
    """What the watches have seen: Conveyor's Deployments and pods, and the pods' events."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self.synced_kinds: set[str] = set()
        self.generation: dict[str, int] = {}  # deployment slug → changes seen

    @property
    def synced(self) -> bool:
        """Every kind has been listed (and is being watched): the cache can stand for the API."""
        return self.synced_kinds == set(KINDS)

    # ---------------------------------------------------------------- written by streams ---
    def replace(self, kind: str, items: list[dict[str, Any]]) -> set[str]:
        """A fresh list of `kind`: returns the slugs touched (before and after)."""
        with self.lock:
            before = {self._slug(kind, o) for o in self.objects[kind].values()}
            self.objects[kind] = {_key(o): o for o in items}
            after = {self._slug(kind, o) for o in items}
            self.synced_kinds.add(kind)
            return self._bump((before | after) - {None})

    def update(self, kind: str, event_type: str, obj: dict[str, Any]) -> set[str]:
        """One watch event: returns the slug it concerns (if any)."""
        with self.lock:
            slug = self._slug(kind, obj)
            if event_type == "DELETED":
                self.objects[kind].pop(_key(obj), None)
                if kind == "pods":
                    self._drop_events_of(obj["metadata"]["name"])
            else:
                self.objects[kind][_key(obj)] = obj
                if kind == "events":
                    self._trim_events(obj)
            return self._bump({slug} - {None})

    def _bump(self, slugs: set[str | None]) -> set[str]:
        touched = {s for s in slugs if s}
        for slug in touched:
            self.generation[slug] = self.generation.get(slug, 0) + 1
        if touched:
            self.lock.notify_all()
        return touched

    def _slug(self, kind: str, obj: dict[str, Any]) -> str | None:
        if kind == "events":
            pod = self.objects["pods"].get(_involved(obj) or "")
            return None if pod is None else self._slug("pods", pod)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        slug = labels.get(ID_LABEL)
        return str(slug) if slug else None

    def _drop_events_of(self, pod_name: str) -> None:
        events = self.objects["events"]
        for key in [k for k, e in events.items() if _involved(e) == pod_name]:
            del events[key]

    def _trim_events(self, event: dict[str, Any]) -> None:
        pod_name = _involved(event)
        mine = [k for k, e in self.objects["events"].items() if _involved(e) == pod_name]
        for key in mine[:-EVENTS_PER_POD]:
            del self.objects["events"][key]

    # ------------------------------------------------------------------ read by backend ---
    def deployment(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects["deployments"].get(name)

    def pods_of(self, slug: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.objects["pods"].values() if self._slug("pods", p) == slug]

    def events_for(self, pod_names: set[str]) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.objects["events"].values() if _involved(e) in pod_names]

    def wait_for(self, slug: str, timeout_s: float) -> bool:
        """Block until the deployment `slug` changes; False after `timeout_s` without one."""
        with self.lock:
            seen = self.generation.get(slug, 0)
            return self.lock.wait_for(lambda: self.generation.get(slug, 0) != seen, timeout_s)


def _key(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _involved(event: dict[str, Any]) -> str | None:
    involved = event.get("involvedObject") or {}
    return involved.get("name") if involved.get("kind") == "Pod" else None


def _version(obj: dict[str, Any]) -> str | None:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


class ResourceStream:
    """List one kind, then watch it from the list's resourceVersion, forever.

    Reconnects from the last version it saw when a stream ends; lists again on 410 Gone (and
    after errors that may have lost events); backs off on API errors.
    """

    def __init__(
        self,
        kind: str,
        list_fn: Callable[..., Any],
        namespace: str,
        cache: ObservedCluster,
        changed: Callable[[set[str]], None],
        *,
        selectors: dict[str, str],
        timeout_s: int,
    ) -> None:
        self.kind, self.list_fn, self.namespace = kind, list_fn, namespace
        self.cache, self.changed = cache, changed
        self.selectors, self.timeout_s = selectors, timeout_s
        self.version: str | None = None
        self.lists = 0
        self.gone = 0
        self.reconnects = 0
        self._watch: k8s_watch.Watch | None = None

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                if self.version is None:
                    self._list()
                self._follow(stop)
                self.reconnects += 1
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:  # compacted: what we missed is only in a fresh list
                    self.gone += 1
                    self.version = None
                    continue
                log.warning("%s watch: API error %s %s", self.kind, exc.status, exc.reason)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except (HTTPError, OSError) as exc:  # dropped connection: resume from our version
                log.warning("%s watch: %s", self.kind, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def _list(self) -> None:
        response = self.list_fn(self.namespace, _preload_content=False, **self.selectors)
        listed = json.loads(response.data)
        self.lists += 1
        self.changed(self.cache.replace(self.kind, list(listed.get("items") or [])))
        self.version = _version(listed) or "0"

    def _follow(self, stop: threading.Event) -> None:
        self._watch = k8s_watch.Watch(return_type="object")
        for event in self._watch.stream(
            self.list_fn,
            self.namespace,
            resource_version=self.version,
            timeout_seconds=self.timeout_s,
            allow_watch_bookmarks=True,
            _request_timeout=(10, self.timeout_s + 30),
            **self.selectors,
        ):
            obj = event["raw_object"]
            if event["type"] != "BOOKMARK":
                self.changed(self.cache.update(self.kind, event["type"], obj))
            self.version = _version(obj) or self.version
            if stop.is_set():
                self._watch.stop()


class KubeWatcher:
    """Watches Conveyor's Deployments, pods and pod events in one namespace; calls `on_change`
    with the slugs (`id_slug`) of the deployments that changed, batched by `debounce_s`."""

    def __init__(
        self,
        api: k8s.ApiClient,
        namespace: str,
        on_change: Callable[[set[str]], None],
        *,
        timeout_s: int = 300,
        debounce_s: float = 0.05,
        cache: ObservedCluster | None = None,
    ) -> None:
        self.cache = cache or ObservedCluster()
        self.on_change = on_change
        self.debounce_s = debounce_s
        self.stopping = threading.Event()
        self.pending: queue.Queue[set[str]] = queue.Queue()
        self.batches = 0
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        mine = {"label_selector": f"{MANAGED_BY}=conveyor"}
        sources: dict[str, tuple[Callable[..., Any], dict[str, str]]] = {
            "deployments": (apps.list_namespaced_deployment, mine),
            "pods": (core.list_namespaced_pod, mine),
            "events": (core.list_namespaced_event, {"field_selector": "involvedObject.kind=Pod"}),
        }
        self.streams = [
            ResourceStream(
                kind,
                fn,
                namespace,
                self.cache,
                self.pending.put,
                selectors=selectors,
                timeout_s=timeout_s,
            )
            for kind, (fn, selectors) in sources.items()
        ]
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the streams and the dispatcher in daemon threads."""
        for stream in self.streams:
            self._spawn(partial(stream.run, self.stopping), f"kube-watch-{stream.kind}")
        self._spawn(self._dispatch, "kube-watch-dispatch")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, join_s: float = 5.0) -> None:
        self.stopping.set()
        for stream in self.streams:
            stream.stop()
        for thread in self.threads:
            thread.join(join_s)

    def _dispatch(self) -> None:
        """Hand batches of changed deployments to `on_change` once every kind is synced."""
        waiting: set[str] = set()
        while not self.stopping.is_set():
            try:
                waiting |= self.pending.get(timeout=0.2)
                self.stopping.wait(self.debounce_s)
                while not self.pending.empty():
                    waiting |= self.pending.get_nowait()
            except queue.Empty:
                pass
            if not waiting or not self.cache.synced:
                continue
            batch, waiting = waiting, set()
            try:
                self.on_change(batch)
            except Exception:  # one bad batch must not end the watch; the beat resyncs
                log.exception("reconciling %s after a watch event failed", sorted(batch))
            self.batches += 1


def reconcile_changed(
    reconcile: Callable[[str], int], live_ids: Callable[[], Iterable[str]]
) -> Callable[[set[str]], None]:
    """An `on_change` that maps slugs back to deployment ids (the store's live deployments)
    and reconciles each one."""

    def on_change(slugs: set[str]) -> None:
        by_slug = {id_slug(deployment_id): deployment_id for deployment_id in live_ids()}
        for slug in sorted(slugs):
            deployment_id = by_slug.get(slug)
            if deployment_id is None:
                continue  # deleted, stopped or not ours any more: nothing to keep true
            try:
                reconcile(deployment_id)
            except Exception:
                log.exception("reconciling deployment %s failed", deployment_id)

    return on_change
