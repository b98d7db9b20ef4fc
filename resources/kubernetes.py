"""Kubernetes manifests for resources, and how their observed status maps onto ours.

PostgreSQL runs as CloudNativePG ``Cluster``s with continuous WAL archiving to an S3 object
store (``barmanObjectStore``); backups are CNPG ``Backup``/``ScheduledBackup`` objects; PITR
and backup restores are always a NEW ``Cluster`` bootstrapped by ``bootstrap.recovery``
(``recoveryTarget.targetTime`` for PITR). Redis is a StatefulSet with an ACL file from a
Secret; volumes are PVCs. Everything here is pure: rendering and status mapping, validated
offline against the Kubernetes schemas and the CNPG CRD schema (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from resources.schemas import parse_cron

Manifest = dict[str, Any]
CNPG = "postgresql.cnpg.io/v1"
PG_IMAGE = "ghcr.io/cloudnative-pg/postgresql:15"
REDIS_IMAGE = "redis:7.0"


@dataclass(frozen=True)
class ObjectStore:
    """Where CNPG archives WAL and base backups (any S3 endpoint)."""

    destination_path: str  # s3://bucket/prefix
    endpoint_url: str
    credentials_secret: str  # keys ACCESS_KEY_ID / ACCESS_SECRET_KEY


def _meta(name: str, namespace: str, resource_id: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "conveyor",
            "conveyor.dev/resource": resource_id,
        },
    }


def _barman(store: ObjectStore) -> dict[str, Any]:
    return {
        "destinationPath": store.destination_path,
        "endpointURL": store.endpoint_url,
        "s3Credentials": {
            "accessKeyId": {"name": store.credentials_secret, "key": "ACCESS_KEY_ID"},
            "secretAccessKey": {"name": store.credentials_secret, "key": "ACCESS_SECRET_KEY"},
        },
        "wal": {"compression": "gzip", "maxParallel": 2},
        "data": {"compression": "gzip"},
    }


def _cluster_spec(
    storage: str,
    store: ObjectStore,
    retention_days: int,
    connection_limit: int,
    archive_timeout_s: int,
) -> dict[str, Any]:
    return {
        "instances": 1,
        "imageName": PG_IMAGE,
        "storage": {"size": storage},
        "postgresql": {
            "parameters": {
                "archive_timeout": f"{archive_timeout_s}s",
                "max_connections": str(connection_limit + 10),
            }
        },
        "backup": {"barmanObjectStore": _barman(store), "retentionPolicy": f"{retention_days}d"},
    }


def postgres_cluster(
    name: str,
    namespace: str,
    resource_id: str,
    *,
    storage: str,
    store: ObjectStore,
    credentials_secret: str,
    retention_days: int = 7,
    connection_limit: int = 50,
    archive_timeout_s: int = 60,
) -> Manifest:
    spec = _cluster_spec(storage, store, retention_days, connection_limit, archive_timeout_s)
    spec["bootstrap"] = {
        "initdb": {"database": "app", "owner": "app", "secret": {"name": credentials_secret}}
    }
    return {
        "apiVersion": CNPG,
        "kind": "Cluster",
        "metadata": _meta(name, namespace, resource_id),
        "spec": spec,
    }


def recovery_cluster(
    name: str,
    namespace: str,
    resource_id: str,
    *,
    source_cluster: str,
    storage: str,
    source_store: ObjectStore,
    store: ObjectStore,
    target_time: datetime | None = None,
    backup_name: str | None = None,
    retention_days: int = 7,
    connection_limit: int = 50,
    archive_timeout_s: int = 60,
) -> Manifest:
    """A NEW cluster recovered from ``source_cluster``'s object store: to ``target_time``
    (PITR) or from the CNPG ``Backup`` ``backup_name``. Never in place."""
    if (target_time is None) == (backup_name is None):
        raise ValueError("give exactly one of target_time or backup_name")
    spec = _cluster_spec(storage, store, retention_days, connection_limit, archive_timeout_s)
    recovery: dict[str, Any]
    if backup_name is not None:
        recovery = {"backup": {"name": backup_name}}
    else:
        assert target_time is not None
        stamp = target_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        recovery = {"source": source_cluster, "recoveryTarget": {"targetTime": stamp}}
    spec["bootstrap"] = {"recovery": recovery}
    spec["externalClusters"] = [
        {"name": source_cluster, "barmanObjectStore": _barman(source_store)}
    ]
    return {
        "apiVersion": CNPG,
        "kind": "Cluster",
        "metadata": _meta(name, namespace, resource_id),
        "spec": spec,
    }


def backup(name: str, namespace: str, resource_id: str, cluster: str) -> Manifest:
    return {
        "apiVersion": CNPG,
        "kind": "Backup",
        "metadata": _meta(name, namespace, resource_id),
        "spec": {"cluster": {"name": cluster}, "method": "barmanObjectStore"},
    }


def scheduled_backup(
    name: str, namespace: str, resource_id: str, cluster: str, cron: str
) -> Manifest:
    """Our 5-field cron becomes CNPG's 6-field one (seconds first)."""
    parse_cron(cron)
    return {
        "apiVersion": CNPG,
        "kind": "ScheduledBackup",
        "metadata": _meta(name, namespace, resource_id),
        "spec": {
            "schedule": f"0 {cron}",
            "cluster": {"name": cluster},
            "backupOwnerReference": "self",
            "method": "barmanObjectStore",
            "immediate": True,
        },
    }


def credentials_secret(
    name: str, namespace: str, resource_id: str, data: dict[str, str]
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace, resource_id),
        "type": "Opaque",
        "stringData": data,
    }


def redis_statefulset(
    name: str, namespace: str, resource_id: str, *, storage: str, acl_secret: str, maxmemory: str
) -> list[Manifest]:
    """Headless Service + StatefulSet (one replica, RDB on a PVC, ACL users from a Secret)."""
    meta = _meta(name, namespace, resource_id)
    selector = {"conveyor.dev/resource": resource_id}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "redis", "port": 6379}],
        },
    }
    probe = {"tcpSocket": {"port": 6379}, "periodSeconds": 5, "failureThreshold": 3}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**meta["labels"]}},
                "spec": {
                    "containers": [
                        {
                            "name": "redis",
                            "image": REDIS_IMAGE,
                            "args": [
                                "--aclfile",
                                "/etc/redis/users.acl",
                                "--dir",
                                "/data",
                                "--save",
                                "3600 1 300 100",
                                "--maxmemory",
                                maxmemory,
                            ],
                            "ports": [{"containerPort": 6379, "name": "redis"}],
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "acl", "mountPath": "/etc/redis", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [{"name": "acl", "secret": {"secretName": acl_secret}}],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": storage}},
                    },
                }
            ],
        },
    }
    return [service, statefulset]


def volume_claim(
    name: str, namespace: str, resource_id: str, *, storage: str, storage_class: str | None = None
) -> Manifest:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, namespace, resource_id),
        "spec": spec,
    }


# ---------------------------------------------------------------------- observed status ---
def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def cluster_status(obj: dict[str, Any]) -> tuple[str, str | None]:
    """A CNPG Cluster's status as ours: ready, degraded (WAL archiving failing — never
    silent), failed, or provisioning."""
    archiving = _condition(obj, "ContinuousArchiving")
    ready = _condition(obj, "Ready")
    phase = obj.get("status", {}).get("phase", "")
    if archiving is not None and archiving.get("status") == "False":
        return (
            "degraded",
            f"WAL archiving is failing: {archiving.get('message', archiving.get('reason'))}",
        )
    if ready is not None and ready.get("status") == "True":
        return "ready", None
    if "fail" in phase.lower() or "error" in phase.lower():
        return "failed", phase
    return "provisioning", phase or None


def backup_status(obj: dict[str, Any]) -> tuple[str, str | None]:
    """CNPG Backup phases (pending/started/running/finalizing/completed/failed/
    walArchivingFailing) as ours (pending/running/completed/failed)."""
    status = obj.get("status", {})
    phase = status.get("phase", "pending")
    if phase == "completed":
        return "completed", None
    if phase in ("failed", "walArchivingFailing"):
        return "failed", status.get("error") or phase
    if phase in ("started", "running", "finalizing"):
        return "running", None
    return "pending", None
