"""Resources on Kubernetes (``CONVEYOR_RESOURCES_BACKEND=kubernetes``): the manifests of
``resources.kubernetes`` server-side applied through the official client, and their observed
status read back. Dedicated PostgreSQL is a CloudNativePG ``Cluster`` (the operator must be
installed), dedicated Redis a StatefulSet, a volume a PVC; the shared tiers and blobs stay on the
servers in the settings.

``KubernetesResources`` is the API plumbing (apply, get, delete by name or by the
``conveyor.dev/resource`` label). ``KubePostgres``, ``KubeRedis`` and ``KubeVolume`` are the
backends the provision/backup/restore jobs call (``resources.backends.get_backend``). Each
operation applies its objects, then polls the one object that tells when it is done (the CNPG
``Cluster``/``Backup``, the StatefulSet, the PVC) until it is ready, failed (its reason becomes
the resource's ``status_reason``) or past ``kube_ready_timeout_s``. A failed provision removes
what it created. Conveyor's beat schedules backups (every backup is verified), so no CNPG
``ScheduledBackup`` is created for its resources; deleting a Conveyor backup deletes its CNPG
``Backup`` object (``delete_backup``).

Limits (``apply_limits``): a Cluster's ``max_connections`` and ``spec.storage.size`` and a
claim's storage request are merge-patched, a Redis StatefulSet is re-applied with its new
``maxmemory``/policy and container memory. Storage only grows: a smaller ``size_bytes`` is
refused (``check_limits`` on the PATCH: 422; the job re-checks against the live object).
Usage (``usage_bytes``) is the kubelet's ``usedBytes`` for the claim's volume, read through the
API server's node proxy; None (unknown: the usage check gives no verdict) while no running pod
mounts the claim or its kubelet has no stats yet. Nothing here execs into a pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from common.kube import call_api, new_api_client
from resources import kubernetes as manifests
from resources.backends.base import (
    Backend,
    BackupResult,
    Handle,
    NoPitr,
    VerifyResult,
    Window,
    compare_fingerprints,
)
from resources.errors import BackendError, NotSupported, OutsideWindow
from resources.kubernetes import Manifest, ObjectStore
from resources.settings import ResourceSettings

FIELD_MANAGER = "conveyor-resources"
LABEL = "conveyor.dev/resource"
_KINDS = {  # kind → (apiVersion, plural)
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "Cluster": (manifests.CNPG, "clusters"),
    "Backup": (manifests.CNPG, "backups"),
    "ScheduledBackup": (manifests.CNPG, "scheduledbackups"),
}
DEFAULT_STORAGE = "1Gi"
DEFAULT_CONNECTION_LIMIT = 50


def _group_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def quantity(size_bytes: int | None, default: str = DEFAULT_STORAGE) -> str:
    """A storage request from a byte limit, rounded up to whole MiB."""
    return f"{math.ceil(size_bytes / 2**20)}Mi" if size_bytes else default


def grown_storage(what: str, current: str, size_bytes: int | None) -> str:
    """The storage request a new ``size_bytes`` limit asks of ``what`` (now ``current``): the
    same when unset or equal, the larger one when it grows. A persistent volume cannot
    shrink, so a smaller one is refused (NotSupported: 422 on the PATCH, a failed job past
    it) rather than left half-applied."""
    if not size_bytes:
        return current
    wanted = quantity(size_bytes)
    have, want = manifests.parse_quantity(current), manifests.parse_quantity(wanted)
    if want < have:
        raise NotSupported(
            f"size_bytes {size_bytes} asks {what} to shrink from {current} ({have} bytes) to "
            f"{wanted}; a Kubernetes volume can only grow. Keep size_bytes at {have} or more."
        )
    return current if want == have else wanted


class KubernetesResources:
    """Apply/observe resources in one namespace. ``object_store(resource_id)`` says where a
    cluster archives WAL and base backups."""

    def __init__(
        self, api: k8s.ApiClient, namespace: str, object_store: Callable[[str], ObjectStore]
    ) -> None:
        self.api, self.namespace, self.object_store = api, namespace, object_store

    # -- API plumbing ---------------------------------------------------------------------
    def _path(self, kind: str, name: str | None = None) -> str:
        api_version, plural = _KINDS[kind]
        base = f"{_group_path(api_version)}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            return call_api(
                self.api, method, path, query=query, body=body, content_type=content_type
            )
        except ApiException as exc:
            if exc.status == 404:
                raise
            raise BackendError(
                f"Kubernetes API error {exc.status} on {method} {path}: {_api_message(exc)}"
            ) from exc

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply (create or update; conflicts forced to us)."""
        return self._call(
            "PATCH",
            self._path(manifest["kind"], manifest["metadata"]["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a few fields of a live object (what a limits change does to
        objects whose full manifest depends on how they were made, like a recovered
        Cluster)."""
        return self._call(
            "PATCH",
            self._path(kind, name),
            query=[("fieldManager", FIELD_MANAGER)],
            body=patch,
            content_type="application/merge-patch+json",
        )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(kind, name))
        except ApiException:  # 404
            return None

    def delete(self, kind: str, name: str) -> None:
        with contextlib.suppress(ApiException):  # 404: already gone
            self._call("DELETE", self._path(kind, name), body={"propagationPolicy": "Background"})

    def delete_labelled(self, resource_id: str, kinds: tuple[str, ...]) -> None:
        """Delete every object of ``kinds`` labelled with the resource (owned objects go with
        their owners through the garbage collector)."""
        for kind in kinds:
            with contextlib.suppress(ApiException):
                self._call(
                    "DELETE",
                    self._path(kind),
                    query=[("labelSelector", f"{LABEL}={resource_id}")],
                    body={"propagationPolicy": "Background"},
                )

    # -- postgres (CloudNativePG) -----------------------------------------------------------
    @staticmethod
    def cluster_name(resource_id: str) -> str:
        return f"pg-{resource_id.removeprefix('res_').replace('_', '-')}"

    def _app_secret(self, resource_id: str, password: str) -> Manifest:
        return manifests.credentials_secret(
            f"{self.cluster_name(resource_id)}-app",
            self.namespace,
            resource_id,
            {"username": "app", "password": password},
            secret_type="kubernetes.io/basic-auth",
        )

    def _own(self, resource_id: str, cluster: dict[str, Any], password: str) -> None:
        """The app Secret, owned by its Cluster (deleted with it)."""
        self.apply(manifests.owned_by(self._app_secret(resource_id, password), cluster))

    def provision_postgres(
        self,
        resource_id: str,
        *,
        storage: str,
        password: str,
        backup_schedule: str | None = None,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    ) -> None:
        name = self.cluster_name(resource_id)
        self.apply(self._app_secret(resource_id, password))
        cluster = self.apply(
            manifests.postgres_cluster(
                name,
                self.namespace,
                resource_id,
                storage=storage,
                store=self.object_store(resource_id),
                credentials_secret=f"{name}-app",
                connection_limit=connection_limit,
            )
        )
        self._own(resource_id, cluster, password)
        if backup_schedule:
            self.apply(
                manifests.scheduled_backup(
                    f"{name}-scheduled", self.namespace, resource_id, name, backup_schedule
                )
            )

    def observe_postgres(self, resource_id: str) -> tuple[str, str | None]:
        obj = self.get("Cluster", self.cluster_name(resource_id))
        if obj is None:
            return "failed", "the Cluster object is gone"
        return manifests.cluster_status(obj)

    @classmethod
    def backup_name(cls, resource_id: str, backup_id: str) -> str:
        return f"{cls.cluster_name(resource_id)}-{backup_id.removeprefix('bkp_').replace('_', '-')}"

    def backup_postgres(self, resource_id: str, backup_id: str) -> str:
        name = self.backup_name(resource_id, backup_id)
        self.apply(
            manifests.backup(name, self.namespace, resource_id, self.cluster_name(resource_id))
        )
        return name

    def observe_backup(self, name: str) -> tuple[str, str | None]:
        obj = self.get("Backup", name)
        return (
            ("failed", "the Backup object is gone") if obj is None else manifests.backup_status(obj)
        )

    def restore_postgres(
        self,
        source_id: str,
        resource_id: str,
        *,
        storage: str,
        target_time: datetime | None = None,
        backup_name: str | None = None,
        password: str | None = None,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    ) -> None:
        """Always a NEW Cluster recovered from the source's object store; with ``password``
        the new cluster's app owner gets fresh credentials."""
        name = self.cluster_name(resource_id)
        if password is not None:
            self.apply(self._app_secret(resource_id, password))
        cluster = self.apply(
            manifests.recovery_cluster(
                name,
                self.namespace,
                resource_id,
                source_cluster=self.cluster_name(source_id),
                storage=storage,
                source_store=self.object_store(source_id),
                store=self.object_store(resource_id),
                target_time=target_time,
                backup_name=backup_name,
                credentials_secret=f"{name}-app" if password is not None else None,
                connection_limit=connection_limit,
            )
        )
        if password is not None:
            self._own(resource_id, cluster, password)

    def deprovision_postgres(self, resource_id: str) -> None:
        """The Cluster and its Secret/ScheduledBackup; Backup objects (the catalogue of what
        is in the object store) stay for their retention."""
        self.delete_labelled(resource_id, ("ScheduledBackup", "Cluster", "Secret"))

    # -- redis and volumes ------------------------------------------------------------------
    @staticmethod
    def redis_name(resource_id: str) -> str:
        return f"redis-{resource_id.removeprefix('res_').replace('_', '-')}"

    def provision_redis(
        self,
        resource_id: str,
        *,
        storage: str,
        acl: str,
        maxmemory: str,
        maxmemory_policy: str = "noeviction",
    ) -> None:
        name = self.redis_name(resource_id)
        checksum = hashlib.sha256(acl.encode()).hexdigest()[:16]
        service, statefulset = manifests.redis_statefulset(
            name,
            self.namespace,
            resource_id,
            storage=storage,
            acl_secret=f"{name}-acl",
            maxmemory=maxmemory,
            maxmemory_policy=maxmemory_policy,
            acl_checksum=checksum,
        )
        secret = manifests.credentials_secret(
            f"{name}-acl", self.namespace, resource_id, {"users.acl": acl}
        )
        owner = self.get("StatefulSet", name)
        if owner is not None:  # rotation: the new ACL first, then the pod restart
            self.apply(manifests.owned_by(secret, owner))
        else:
            self.apply(secret)
        owner = self.apply(statefulset)
        self.apply(manifests.owned_by(service, owner))
        self.apply(manifests.owned_by(secret, owner))

    def observe_redis(self, resource_id: str) -> tuple[str, str | None]:
        obj = self.get("StatefulSet", self.redis_name(resource_id))
        if obj is None:
            return "failed", "the StatefulSet is gone"
        status = obj.get("status") or {}
        if int(status.get("readyReplicas") or 0) >= 1:
            return "ready", None
        return "provisioning", f"{status.get('readyReplicas') or 0}/1 replicas ready"

    @staticmethod
    def volume_name(resource_id: str) -> str:
        return f"vol-{resource_id.removeprefix('res_').replace('_', '-')}"

    def provision_volume(
        self, resource_id: str, *, storage: str, storage_class: str | None = None
    ) -> None:
        self.apply(
            manifests.volume_claim(
                self.volume_name(resource_id),
                self.namespace,
                resource_id,
                storage=storage,
                storage_class=storage_class,
            )
        )

    def observe_volume(self, resource_id: str) -> tuple[str, str | None]:
        """``Pending`` is ready too: with a ``WaitForFirstConsumer`` storage class a claim
        binds only when a pod mounts it. ``Lost`` (its volume is gone) is a failure."""
        obj = self.get("PersistentVolumeClaim", self.volume_name(resource_id))
        if obj is None:
            return "failed", "the PersistentVolumeClaim is gone"
        phase = (obj.get("status") or {}).get("phase", "Pending")
        if phase == "Lost":
            return "failed", "the claim lost its volume (phase Lost)"
        return "ready", None

    def claim_usage(self, claim: str) -> int | None:
        """Bytes used on the volume of PersistentVolumeClaim ``claim``, as the kubelet of the
        node that mounts it reports them (``/api/v1/nodes/{node}/proxy/stats/summary``, the
        ``usedBytes`` of the pod volume whose ``pvcRef`` is the claim; RBAC: ``get`` on
        ``nodes/proxy``). Nothing runs inside the pod. None when it cannot be known: no running
        pod mounts the claim (an unbound or idle volume), the node is gone, or its kubelet has
        no stats for the volume yet. Other API errors raise."""
        running = [("fieldSelector", "status.phase=Running")]
        pods = self._call("GET", self._path("Pod"), query=running).get("items") or []
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            mounts = {
                (v.get("persistentVolumeClaim") or {}).get("claimName")
                for v in (pod.get("spec") or {}).get("volumes") or []
            }
            if node and claim in mounts:
                break
        else:
            return None
        try:
            summary = self._call("GET", f"/api/v1/nodes/{node}/proxy/stats/summary")
        except ApiException:  # 404: the node went away since the pod list
            return None
        name = pod["metadata"]["name"]
        for stats in summary.get("pods") or []:
            ref = stats.get("podRef") or {}
            if ref.get("name") != name or ref.get("namespace") != self.namespace:
                continue
            for volume in stats.get("volume") or []:
                if (volume.get("pvcRef") or {}).get("name") == claim and "usedBytes" in volume:
                    return int(volume["usedBytes"])
        return None

    def delete_backup(self, resource_id: str, backup_id: str) -> None:
        """The CNPG ``Backup`` object of a Conveyor backup (gone already: nothing to do)."""
        self.delete("Backup", self.backup_name(resource_id, backup_id))


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


class _KubeBackend:
    """Shared plumbing: the API client (made on first use), waiting, names."""

    type: str
    tier: str

    def __init__(self, settings: ResourceSettings, api: k8s.ApiClient | None = None) -> None:
        self.settings = settings
        self._api = api
        self._kr: KubernetesResources | None = None

    @property
    def kr(self) -> KubernetesResources:
        if self._kr is None:
            s = self.settings
            api = self._api or new_api_client(s.kube_config, s.kube_context, s.kube_in_cluster)
            self._kr = KubernetesResources(api, s.kube_namespace, self.object_store)
        return self._kr

    def object_store(self, resource_id: str) -> ObjectStore:
        s = self.settings
        return ObjectStore(
            f"{s.kube_backup_destination.rstrip('/')}/{resource_id}",
            s.kube_backup_endpoint_url,
            s.kube_backup_secret,
        )

    def wait(self, what: str, observe: Callable[[], tuple[str, str | None]]) -> str:
        """Poll ``observe`` until ready/completed; failed or past the deadline raises with the
        last reason. Returns the final status (``degraded`` counts as up)."""
        deadline = time.monotonic() + self.settings.kube_ready_timeout_s
        while True:
            status, reason = observe()
            if status in ("ready", "completed", "degraded"):
                return status
            if status == "failed":
                raise BackendError(f"{what} failed: {reason or 'no reason given'}")
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{what} not ready within {self.settings.kube_ready_timeout_s:g}s"
                    + (f" (last: {reason})" if reason else "")
                )
            time.sleep(self.settings.kube_poll_s)

    @staticmethod
    def resource_id(ident: str) -> str:
        return f"res_{ident}"


class KubePostgres(_KubeBackend):
    """Dedicated PostgreSQL as a CloudNativePG Cluster, WAL archived to the object store."""

    type, tier = "postgres", "dedicated"

    def _handle(self, ident: str, password: str, limits: dict[str, Any]) -> Handle:
        rid = self.resource_id(ident)
        name = self.kr.cluster_name(rid)
        host = f"{name}-rw.{self.settings.kube_namespace}.svc"
        return Handle(
            state={
                "ident": ident,
                "resource_id": rid,
                "namespace": self.settings.kube_namespace,
                "cluster": name,
                "host": host,
                "port": 5432,
                "database": "app",
                "role": "app",
                "storage": quantity(limits.get("size_bytes")),
                "connection_limit": int(limits.get("connection_limit") or DEFAULT_CONNECTION_LIMIT),
            },
            secret={
                "password": password,
                "env": {"DATABASE_URL": f"postgresql://app:{password}@{host}:5432/app"},
            },
        )

    def _up(self, handle: Handle, what: str) -> Handle:
        rid = handle.state["resource_id"]
        try:
            self.wait(what, lambda: self.kr.observe_postgres(rid))
        except BackendError:
            self.kr.deprovision_postgres(rid)  # a failed cluster keeps nothing behind
            raise
        return handle

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        handle = self._handle(ident, secrets.token_urlsafe(24), limits)
        self.kr.provision_postgres(
            handle.state["resource_id"],
            storage=handle.state["storage"],
            password=handle.secret["password"],
            connection_limit=handle.state["connection_limit"],
        )
        return self._up(handle, f"Cluster {handle.state['cluster']}")

    def deprovision(self, handle: Handle) -> None:
        self.kr.deprovision_postgres(handle.state["resource_id"])

    def purge_backups(self, handle: Handle) -> None:
        """The Backup objects; the object store's contents follow the retention policy."""
        self.kr.delete_labelled(handle.state["resource_id"], ("Backup",))

    def delete_backup(self, resource_id: str, backup_id: str) -> None:
        """A Conveyor backup deleted (by the API or retention) takes its CNPG ``Backup`` object
        with it. The base backup's files in the object store are the Cluster's
        ``retentionPolicy``'s to prune (barman-cloud does not delete by Backup object)."""
        self.kr.delete_backup(resource_id, backup_id)

    def check_limits(self, state: dict[str, Any], limits: dict[str, Any]) -> None:
        """Request-side: a ``size_bytes`` that would shrink the data volume is a 422."""
        grown_storage(f"Cluster {state['cluster']}", state["storage"], limits.get("size_bytes"))

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the Cluster: ``max_connections`` (``connection_limit`` + 10 kept for the
        platform; CNPG restarts the instance for it) and ``spec.storage.size`` from
        ``size_bytes`` (grow only, checked against the live Cluster; CNPG expands the PVCs
        when the storage class allows volume expansion). The app role itself has no
        CONNECTION LIMIT here: the role belongs to the operator's bootstrap."""
        name = handle.state["cluster"]
        cluster = self.kr.get("Cluster", name)
        if cluster is None:
            raise BackendError(f"Cluster {name} is gone")
        live = str(((cluster.get("spec") or {}).get("storage") or {}).get("size"))
        storage = grown_storage(f"Cluster {name}", live, limits.get("size_bytes"))
        connection_limit = int(limits.get("connection_limit", handle.state["connection_limit"]))
        self.kr.merge_patch(
            "Cluster",
            name,
            {
                "spec": {
                    "storage": {"size": storage},
                    "postgresql": {"parameters": {"max_connections": str(connection_limit + 10)}},
                }
            },
        )
        return {"storage": storage, "connection_limit": connection_limit}

    def usage_bytes(self, handle: Handle) -> int | None:
        """Bytes used on the primary's data volume (PGDATA: the databases, WAL not yet
        recycled and the server's own files, so more than ``pg_database_size``), from the
        kubelet's volume stats. None (unknown) while there is no running primary or its
        kubelet has no stats: the CNPG Cluster status reports no sizes."""
        cluster = self.kr.get("Cluster", handle.state["cluster"]) or {}
        primary = (cluster.get("status") or {}).get("currentPrimary")
        return self.kr.claim_usage(primary) if primary else None  # CNPG: PVC name = pod name

    def rotate(self, handle: Handle) -> Handle:
        """A new password in the app Secret; CNPG sets it on the owner role."""
        rid = handle.state["resource_id"]
        cluster = self.kr.get("Cluster", handle.state["cluster"])
        if cluster is None:
            raise BackendError(f"Cluster {handle.state['cluster']} is gone")
        password = secrets.token_urlsafe(24)
        self.kr._own(rid, cluster, password)
        limits = {"connection_limit": handle.state["connection_limit"]}
        new = self._handle(handle.state["ident"], password, limits)
        new.state["storage"] = handle.state["storage"]
        return new

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        rid = handle.state["resource_id"]
        name = self.kr.backup_postgres(rid, backup_id)
        self.wait(f"Backup {name}", lambda: self.kr.observe_backup(name))
        status = (self.kr.get("Backup", name) or {}).get("status") or {}
        return BackupResult(
            location=f"{self.object_store(rid).destination_path}#{status.get('backupId', name)}",
            size_bytes=0,  # CNPG does not report it on the Backup
            fingerprint={},
            method="cnpg_barman",
            meta={
                "backup": name,
                "cluster": handle.state["cluster"],
                "backup_id": status.get("backupId"),
                "begin_lsn": status.get("beginLSN"),
                "end_lsn": status.get("endLSN"),
                "started_at": status.get("startedAt"),
                "stopped_at": status.get("stoppedAt"),
            },
        )

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        """Recover the backup into a scratch Cluster; it must reach a healthy state. (Row
        counts and checksums need the data plane, which a worker outside the cluster cannot
        reach; ``expected``/``actual`` carry the backup's LSN range instead.)"""
        scratch = f"{handle.state['ident']}-v{secrets.token_hex(3)}"
        rid = self.resource_id(scratch)
        self.kr.restore_postgres(
            handle.state["resource_id"],
            rid,
            storage=handle.state["storage"],
            backup_name=backup.meta["backup"],
        )
        expected = {
            "recovery": {"backup": backup.meta["backup"], "end_lsn": backup.meta.get("end_lsn")}
        }
        try:
            self.wait(
                f"scratch recovery of {backup.meta['backup']}",
                lambda: self.kr.observe_postgres(rid),
            )
        except BackendError as exc:
            return VerifyResult(False, expected, {}, [f"the backup did not recover: {exc.message}"])
        finally:
            self.kr.deprovision_postgres(rid)
        return compare_fingerprints(expected, expected)

    def _recover(
        self,
        source: Handle,
        ident: str,
        *,
        target_time: datetime | None = None,
        backup_name: str | None = None,
    ) -> Handle:
        limits = {"connection_limit": source.state["connection_limit"]}
        handle = self._handle(ident, secrets.token_urlsafe(24), limits)
        handle.state["storage"] = source.state["storage"]
        self.kr.restore_postgres(
            source.state["resource_id"],
            handle.state["resource_id"],
            storage=handle.state["storage"],
            target_time=target_time,
            backup_name=backup_name,
            password=handle.secret["password"],
            connection_limit=handle.state["connection_limit"],
        )
        return self._up(handle, f"recovery into Cluster {handle.state['cluster']}")

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        return self._recover(source, ident, backup_name=backup.meta["backup"])

    def window(self, handle: Handle, base_backups: list[BackupResult]) -> Window:
        cluster = self.kr.get("Cluster", handle.state["cluster"])
        if cluster is None:
            raise OutsideWindow(f"Cluster {handle.state['cluster']} is gone")
        found = manifests.recoverability_window(
            cluster, self.settings.pg_archive_timeout_s, datetime.now(UTC)
        )
        if found is None:
            raise OutsideWindow(
                "no recoverability point yet (no completed base backup, or WAL archiving is "
                "failing): point-in-time restore starts at the first base backup"
            )
        return Window(*found)

    def pitr(
        self, source: Handle, base_backups: list[BackupResult], target: datetime, ident: str
    ) -> Handle:
        if target.tzinfo is None:
            raise NotSupported("target_time needs a timezone")
        self.window(source, base_backups).require(target)
        return self._recover(source, ident, target_time=target)

    def branch(self, handle: Handle, ident: str) -> Handle:
        """A copy of the data now: a fresh Backup, recovered (with the WAL after it) into a
        new Cluster."""
        backup = self.backup(handle, f"br{secrets.token_hex(4)}")
        return self._recover(handle, ident, backup_name=backup.meta["backup"])

    def metrics(self, handle: Handle) -> dict[str, Any]:
        cluster = self.kr.get("Cluster", handle.state["cluster"]) or {}
        status = cluster.get("status") or {}
        return {
            "phase": status.get("phase"),
            "instances": status.get("instances"),
            "ready_instances": status.get("readyInstances"),
            "first_recoverability_point": status.get("firstRecoverabilityPoint"),
            "last_successful_backup": status.get("lastSuccessfulBackup"),
        }

    def health(self, handle: Handle) -> dict[str, Any]:
        status, reason = self.kr.observe_postgres(handle.state["resource_id"])
        if status == "ready":
            return {"status": "ok"}
        return {"status": "failing", "cluster_status": status, "error": reason}

    def heartbeat(self, handle: Handle) -> None:
        return None  # archive_timeout on the server keeps quiet clusters restorable

    def prune_archive(self, handle: Handle, base_backups: list[BackupResult]) -> None:
        return None  # the Cluster's retentionPolicy prunes its object store


def _redis_acl(password: str) -> str:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user default off\nuser app on #{digest} ~* &* +@all\n"


class _NoBackups:
    """Backup, verify, restore and branch refused with one clear reason (``no_backups``)."""

    no_backups = "backups are not available for this resource on Kubernetes yet"

    def _refuse(self) -> NotSupported:
        return NotSupported(self.no_backups)

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        raise self._refuse()

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        raise self._refuse()

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        raise self._refuse()

    def branch(self, handle: Handle, ident: str) -> Handle:
        raise self._refuse()


class KubeRedis(_NoBackups, NoPitr, _KubeBackend):
    """Dedicated Redis as a one-replica StatefulSet (RDB on its PVC, ACL users from a Secret)."""

    type, tier = "redis", "dedicated"
    no_backups = (
        "backups of Redis on Kubernetes are not available yet (the RDB file lives on the "
        "pod's volume); use the shared tier or a local dedicated instance"
    )

    def _handle(self, ident: str, password: str, limits: dict[str, Any]) -> Handle:
        rid = self.resource_id(ident)
        name = self.kr.redis_name(rid)
        host = f"{name}.{self.settings.kube_namespace}.svc"
        return Handle(
            state={
                "ident": ident,
                "resource_id": rid,
                "namespace": self.settings.kube_namespace,
                "statefulset": name,
                "host": host,
                "port": 6379,
                "storage": quantity(limits.get("size_bytes")),
                "maxmemory": str(limits.get("maxmemory") or "256mb"),
                "maxmemory_policy": str(limits.get("maxmemory_policy") or "noeviction"),
            },
            secret={
                "password": password,
                "env": {"REDIS_URL": f"redis://app:{password}@{host}:6379/0"},
            },
        )

    def _apply(self, handle: Handle, *, fresh: bool = False) -> Handle:
        """Server-side apply the Secret/StatefulSet/Service for ``handle`` and wait for the
        pod; a ``fresh`` one that does not come up is removed (a running one never is)."""
        rid = handle.state["resource_id"]
        self.kr.provision_redis(
            rid,
            storage=handle.state["storage"],
            acl=_redis_acl(handle.secret["password"]),
            maxmemory=handle.state["maxmemory"],
            maxmemory_policy=handle.state.get("maxmemory_policy", "noeviction"),
        )
        try:
            self.wait(
                f"StatefulSet {handle.state['statefulset']}", lambda: self.kr.observe_redis(rid)
            )
        except BackendError:
            if fresh:
                self.deprovision(handle)
            raise
        return handle

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        return self._apply(self._handle(ident, secrets.token_urlsafe(24), limits), fresh=True)

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """``maxmemory``/``maxmemory_policy`` as the server's arguments and the container's
        memory (re-applied StatefulSet, same field manager): the pod rolls onto them, saving
        and reloading its RDB. Waits for the new pod to be ready."""
        st = handle.state
        changed = {
            "maxmemory": str(limits.get("maxmemory", st["maxmemory"])),
            "maxmemory_policy": str(
                limits.get("maxmemory_policy", st.get("maxmemory_policy", "noeviction"))
            ),
        }
        self._apply(Handle({**st, **changed}, handle.secret))
        return changed

    def deprovision(self, handle: Handle) -> None:
        rid = handle.state["resource_id"]
        self.kr.delete_labelled(rid, ("StatefulSet", "Service", "Secret", "PersistentVolumeClaim"))

    def rotate(self, handle: Handle) -> Handle:
        """New ACL users in the Secret; the changed checksum restarts the pod onto them."""
        limits = {
            "maxmemory": handle.state["maxmemory"],
            "maxmemory_policy": handle.state.get("maxmemory_policy"),
        }
        new = self._handle(handle.state["ident"], secrets.token_urlsafe(24), limits)
        new.state["storage"] = handle.state["storage"]
        return self._apply(new)

    def metrics(self, handle: Handle) -> dict[str, Any]:
        obj = self.kr.get("StatefulSet", handle.state["statefulset"]) or {}
        return {"ready_replicas": (obj.get("status") or {}).get("readyReplicas", 0)}


class KubeVolume(_NoBackups, NoPitr, _KubeBackend):
    """A volume as a PersistentVolumeClaim (mounted by whatever binds it)."""

    type, tier = "volume", "shared"
    no_backups = "backups of volumes on Kubernetes need VolumeSnapshots, not available yet"

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        rid = self.resource_id(ident)
        name = self.kr.volume_name(rid)
        storage = quantity(limits.get("size_bytes"))
        self.kr.provision_volume(
            rid, storage=storage, storage_class=self.settings.kube_storage_class
        )
        handle = Handle(
            state={"ident": ident, "resource_id": rid, "claim": name, "storage": storage},
            secret={"env": {"VOLUME_PATH": f"/mnt/volumes/{name}", "VOLUME_CLAIM": name}},
        )
        try:
            self.wait(f"PersistentVolumeClaim {name}", lambda: self.kr.observe_volume(rid))
        except BackendError:
            self.deprovision(handle)
            raise
        return handle

    def deprovision(self, handle: Handle) -> None:
        self.kr.delete("PersistentVolumeClaim", handle.state["claim"])

    def check_limits(self, state: dict[str, Any], limits: dict[str, Any]) -> None:
        """Request-side: a ``size_bytes`` that would shrink the claim is a 422."""
        grown_storage(f"claim {state['claim']}", state["storage"], limits.get("size_bytes"))

    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """Grow the claim's ``spec.resources.requests.storage`` (merge patch; checked against
        the live claim). The storage class must allow volume expansion, else the API server
        refuses and the job fails with its message. The claim's capacity is the hard limit:
        a full volume refuses writes by itself, so no read-only switch is needed here."""
        name = handle.state["claim"]
        claim = self.kr.get("PersistentVolumeClaim", name)
        if claim is None:
            raise BackendError(f"PersistentVolumeClaim {name} is gone")
        requests = ((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
        storage = grown_storage(
            f"claim {name}", str(requests.get("storage")), limits.get("size_bytes")
        )
        self.kr.merge_patch(
            "PersistentVolumeClaim",
            name,
            {"spec": {"resources": {"requests": {"storage": storage}}}},
        )
        return {"storage": storage}

    def usage_bytes(self, handle: Handle) -> int | None:
        """Bytes used on the claim's volume from the kubelet of the node that mounts it; None
        (unknown) while no running pod mounts it. A PVC's status only has its capacity, which
        is not usage."""
        return self.kr.claim_usage(handle.state["claim"])

    def rotate(self, handle: Handle) -> Handle:
        return handle  # a claim has no credentials

    def metrics(self, handle: Handle) -> dict[str, Any]:
        obj = self.kr.get("PersistentVolumeClaim", handle.state["claim"]) or {}
        status = obj.get("status") or {}
        return {"phase": status.get("phase"), "capacity": (status.get("capacity") or {})}


KUBE_CLASSES: dict[tuple[str, str], Callable[[ResourceSettings], Backend]] = {
    ("postgres", "dedicated"): KubePostgres,
    ("redis", "dedicated"): KubeRedis,
    ("volume", "shared"): KubeVolume,
}
