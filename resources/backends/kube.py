"""Resources on Kubernetes: the manifests of ``resources.kubernetes`` server-side applied
through the official client, and their observed status read back (CNPG Cluster conditions,
Backup phases). PostgreSQL needs the CloudNativePG operator in the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from common.kube import call_api
from resources import kubernetes as manifests
from resources.kubernetes import Manifest, ObjectStore

FIELD_MANAGER = "conveyor-resources"
_PLURALS = {
    "Secret": "secrets",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "StatefulSet": "statefulsets",
    "Cluster": "clusters",
    "Backup": "backups",
    "ScheduledBackup": "scheduledbackups",
}


def _group_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


class KubernetesResources:
    """Apply/observe resources in one namespace. ``object_store(resource_id)`` says where a
    cluster archives WAL and base backups."""

    def __init__(
        self, api: k8s.ApiClient, namespace: str, object_store: Callable[[str], ObjectStore]
    ) -> None:
        self.api, self.namespace, self.object_store = api, namespace, object_store

    # -- API plumbing ---------------------------------------------------------------------
    def _path(self, api_version: str, kind: str, name: str | None = None) -> str:
        base = f"{_group_path(api_version)}/namespaces/{self.namespace}/{_PLURALS[kind]}"
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
        return call_api(self.api, method, path, query=query, body=body, content_type=content_type)

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Server-side apply (create or update; conflicts forced to us)."""
        path = self._path(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])
        return self._call(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._path(api_version, kind, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, name: str) -> None:
        try:
            self._call("DELETE", self._path(api_version, kind, name))
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- postgres (CloudNativePG) -----------------------------------------------------------
    @staticmethod
    def cluster_name(resource_id: str) -> str:
        return f"pg-{resource_id.removeprefix('res_').replace('_', '-')}"

    def provision_postgres(
        self, resource_id: str, *, storage: str, password: str, backup_schedule: str | None = None
    ) -> None:
        name = self.cluster_name(resource_id)
        self.apply(
            manifests.credentials_secret(
                f"{name}-app",
                self.namespace,
                resource_id,
                {"username": "app", "password": password},
            )
        )
        self.apply(
            manifests.postgres_cluster(
                name,
                self.namespace,
                resource_id,
                storage=storage,
                store=self.object_store(resource_id),
                credentials_secret=f"{name}-app",
            )
        )
        if backup_schedule:
            self.apply(
                manifests.scheduled_backup(
                    f"{name}-scheduled", self.namespace, resource_id, name, backup_schedule
                )
            )

    def observe_postgres(self, resource_id: str) -> tuple[str, str | None]:
        obj = self.get(manifests.CNPG, "Cluster", self.cluster_name(resource_id))
        if obj is None:
            return "failed", "the Cluster object is gone"
        return manifests.cluster_status(obj)

    def backup_postgres(self, resource_id: str, backup_id: str) -> str:
        cluster = self.cluster_name(resource_id)
        name = f"{cluster}-{backup_id.removeprefix('bkp_')}"
        self.apply(manifests.backup(name, self.namespace, resource_id, cluster))
        return name

    def observe_backup(self, name: str) -> tuple[str, str | None]:
        obj = self.get(manifests.CNPG, "Backup", name)
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
    ) -> None:
        """Always a NEW Cluster recovered from the source's object store."""
        self.apply(
            manifests.recovery_cluster(
                self.cluster_name(resource_id),
                self.namespace,
                resource_id,
                source_cluster=self.cluster_name(source_id),
                storage=storage,
                source_store=self.object_store(source_id),
                store=self.object_store(resource_id),
                target_time=target_time,
                backup_name=backup_name,
            )
        )

    def deprovision_postgres(self, resource_id: str) -> None:
        name = self.cluster_name(resource_id)
        self.delete(manifests.CNPG, "ScheduledBackup", f"{name}-scheduled")
        self.delete(manifests.CNPG, "Cluster", name)
        self.delete("v1", "Secret", f"{name}-app")

    # -- redis and volumes ------------------------------------------------------------------
    def provision_redis(self, resource_id: str, *, storage: str, acl: str, maxmemory: str) -> None:
        name = f"redis-{resource_id.removeprefix('res_')}"
        self.apply(
            manifests.credentials_secret(
                f"{name}-acl", self.namespace, resource_id, {"users.acl": acl}
            )
        )
        for manifest in manifests.redis_statefulset(
            name,
            self.namespace,
            resource_id,
            storage=storage,
            acl_secret=f"{name}-acl",
            maxmemory=maxmemory,
        ):
            self.apply(manifest)

    def provision_volume(
        self, resource_id: str, *, storage: str, storage_class: str | None = None
    ) -> None:
        self.apply(
            manifests.volume_claim(
                f"vol-{resource_id.removeprefix('res_')}",
                self.namespace,
                resource_id,
                storage=storage,
                storage_class=storage_class,
            )
        )
