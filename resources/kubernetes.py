"""Kubernetes manifests for resources, and how their observed status maps onto ours.

PostgreSQL runs as CloudNativePG ``Cluster``s with continuous WAL archiving to an S3 object
store (``barmanObjectStore``); backups are CNPG ``Backup``/``ScheduledBackup`` objects; PITR
and backup restores are always a NEW ``Cluster`` bootstrapped by ``bootstrap.recovery``
(``recoveryTarget.targetTime`` for PITR). Redis is a StatefulSet with an ACL file from a
Secret; volumes are PVCs. Everything here is pure: rendering and status mapping, validated
offline against the Kubernetes schemas and the CNPG CRD schema (tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
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


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX = {
    **{s: 1024 ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000 ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def parse_quantity(quantity: str) -> int:
    """Bytes of a Kubernetes storage quantity (``3072Mi``, ``1Gi``, ``500M``, ``1073741824``),
    rounded up. Exponent and milli forms are not storage sizes anyone writes: ValueError."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        raise ValueError(f"not a storage quantity: {quantity!r}")
    number, suffix = match.groups()
    value = Decimal(number) * _SUFFIX.get(suffix or "", 1)
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def redis_bytes(size: str) -> int:
    """Bytes of a redis memory size as our limits give it (``64mb``, ``1gb``, ``512kb`` or
    plain bytes; redis counts kb/mb/gb in powers of 1024)."""
    match = re.match(r"^([0-9]+)(kb|mb|gb)?$", size.strip().lower())
    if match is None:
        raise ValueError(f"not a redis memory size: {size!r}")
    return int(match.group(1)) * {"kb": 2**10, "mb": 2**20, "gb": 2**30}.get(match.group(2), 1)


def redis_container_memory(maxmemory: str) -> dict[str, dict[str, str]]:
    """The Redis container's memory: ``maxmemory`` for the data plus 64Mi for the server
    itself requested, twice the data (a BGSAVE fork copies pages on write) plus that as the
    limit, so a snapshot under write load is not OOM-killed."""
    data_mi = -(-redis_bytes(maxmemory) // 2**20)
    return {
        "requests": {"memory": f"{data_mi + 64}Mi"},
        "limits": {"memory": f"{2 * data_mi + 64}Mi"},
    }


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
    credentials_secret: str | None = None,
    retention_days: int = 7,
    connection_limit: int = 50,
    archive_timeout_s: int = 60,
) -> Manifest:
    """A NEW cluster recovered from ``source_cluster``'s object store: to ``target_time``
    (PITR) or from the CNPG ``Backup`` ``backup_name``. Never in place. With
    ``credentials_secret`` the app owner gets the password in it (fresh credentials for the
    new resource) instead of keeping the source's."""
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
    if credentials_secret is not None:
        recovery.update(database="app", owner="app", secret={"name": credentials_secret})
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
    name: str,
    namespace: str,
    resource_id: str,
    data: dict[str, str],
    *,
    secret_type: str = "Opaque",
) -> Manifest:
    """CNPG wants ``kubernetes.io/basic-auth`` (username/password) for the app owner."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace, resource_id),
        "type": secret_type,
        "stringData": data,
    }


def owned_by(manifest: Manifest, owner: dict[str, Any]) -> Manifest:
    """Give ``manifest`` an owner reference to the live object ``owner`` (the garbage
    collector deletes it with its owner)."""
    manifest["metadata"]["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "blockOwnerDeletion": True,
        }
    ]
    return manifest


def redis_statefulset(
    name: str,
    namespace: str,
    resource_id: str,
    *,
    storage: str,
    acl_secret: str,
    maxmemory: str,
    maxmemory_policy: str = "noeviction",
    acl_checksum: str = "",
) -> list[Manifest]:
    """Headless Service + StatefulSet (one replica, RDB on a PVC deleted with the set, ACL
    users from a Secret; a changed ``acl_checksum`` restarts the pod to load new users).
    ``maxmemory``/``maxmemory_policy`` are server arguments and size the container's memory
    (``redis_container_memory``): changing them rolls the pod, which saves its RDB on the
    way down and loads it on the way up."""
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
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Delete",
                "whenScaled": "Delete",
            },
            "template": {
                "metadata": {
                    "labels": {**meta["labels"]},
                    "annotations": {"conveyor.dev/acl-checksum": acl_checksum},
                },
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
                                "--maxmemory-policy",
                                maxmemory_policy,
                            ],
                            "resources": redis_container_memory(maxmemory),
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


# CNPG phases that need a person (the operator will not get out of them by itself).
FAILED_PHASES = (
    "Unable to create required cluster objects",
    "Cluster is in an unrecoverable state, needs manual intervention",
    "Cluster cannot proceed to reconciliation",
    "Waiting for user action",
)


def cluster_status(obj: dict[str, Any]) -> tuple[str, str | None]:
    """A CNPG Cluster's status as ours: ready, degraded (WAL archiving failing — never
    silent), failed (a phase that needs manual intervention), or provisioning. Transient
    phases ("Failing over", "Switchover in progress") are not failures."""
    archiving = _condition(obj, "ContinuousArchiving")
    ready = _condition(obj, "Ready")
    status = obj.get("status", {})
    phase = status.get("phase", "")
    if any(phase.startswith(failed) for failed in FAILED_PHASES):
        why = status.get("phaseReason")
        return "failed", f"{phase}: {why}" if why else phase
    if archiving is not None and archiving.get("status") == "False":
        return (
            "degraded",
            f"WAL archiving is failing: {archiving.get('message') or archiving.get('reason')}",
        )
    if ready is not None and ready.get("status") == "True":
        return "ready", None
    return "provisioning", phase or None


def recoverability_window(
    obj: dict[str, Any], archive_timeout_s: int, now: datetime
) -> tuple[datetime, datetime] | None:
    """The PITR window of a Cluster: from ``status.firstRecoverabilityPoint`` (the end of the
    oldest base backup) to now minus ``archive_timeout`` (a healthy archiver is at most that
    far behind; the CR does not publish the last archived WAL's time). None when there is no
    base backup yet or archiving is failing."""
    first = obj.get("status", {}).get("firstRecoverabilityPoint")
    archiving = _condition(obj, "ContinuousArchiving")
    if not first or archiving is None or archiving.get("status") != "True":
        return None
    start = datetime.fromisoformat(first.replace("Z", "+00:00"))
    until = now.astimezone(UTC) - timedelta(seconds=archive_timeout_s)
    return (start, until) if until >= start else None


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
