"""Kubernetes manifests of resources, validated offline: core kinds against the Kubernetes
schemas (kubernetes-validate, strict), CNPG kinds against the CNPG CRD schema kept here; and
the mapping of observed CNPG status (archiving failures surface as degraded)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from resources import kubernetes as k8s

K8S_VERSION = "1.33"
CNPG_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "cnpg_v1.json").read_text())
STORE = k8s.ObjectStore("s3://backups/res_1", "http://minio:9000", "s3-creds")
SOURCE = k8s.ObjectStore("s3://backups/res_0", "http://minio:9000", "s3-creds")


def cnpg_validate(manifest: dict[str, Any]) -> None:
    schema = {**CNPG_SCHEMA[manifest["kind"]], "definitions": CNPG_SCHEMA["definitions"]}
    jsonschema.validate(manifest, schema)


def core_validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_postgres_cluster_backups_and_pitr_validate() -> None:
    cluster = k8s.postgres_cluster(
        "pg-res-1",
        "tenant-a",
        "res_1",
        storage="10Gi",
        store=STORE,
        credentials_secret="pg-res-1-app",
    )
    cnpg_validate(cluster)
    assert cluster["spec"]["postgresql"]["parameters"]["archive_timeout"] == "60s"
    cnpg_validate(k8s.backup("pg-res-1-b1", "tenant-a", "res_1", "pg-res-1"))
    sched = k8s.scheduled_backup("pg-res-1-daily", "tenant-a", "res_1", "pg-res-1", "0 3 * * *")
    cnpg_validate(sched)
    assert sched["spec"]["schedule"] == "0 0 3 * * *"
    target = datetime(2026, 11, 25, 10, 0, 1, 500000, tzinfo=UTC)
    pitr = k8s.recovery_cluster(
        "pg-res-2",
        "tenant-a",
        "res_2",
        source_cluster="pg-res-1",
        storage="10Gi",
        source_store=SOURCE,
        store=STORE,
        target_time=target,
    )
    cnpg_validate(pitr)
    assert pitr["spec"]["bootstrap"]["recovery"] == {
        "source": "pg-res-1",
        "recoveryTarget": {"targetTime": "2026-11-25 10:00:01.500000+00"},
    }
    assert pitr["metadata"]["name"] != "pg-res-1"  # always a new cluster
    from_backup = k8s.recovery_cluster(
        "pg-res-3",
        "tenant-a",
        "res_3",
        source_cluster="pg-res-1",
        storage="10Gi",
        source_store=SOURCE,
        store=STORE,
        backup_name="pg-res-1-b1",
    )
    cnpg_validate(from_backup)
    secret = k8s.credentials_secret(
        "pg-res-1-app", "tenant-a", "res_1", {"username": "app", "password": "x"}
    )
    core_validate(secret)


def test_schema_catches_mistakes() -> None:
    bad = k8s.postgres_cluster(
        "pg-x", "ns", "r", storage="10GB", store=STORE, credentials_secret="s"
    )
    with pytest.raises(jsonschema.ValidationError):
        cnpg_validate(bad)  # 10GB is not a Kubernetes quantity CNPG accepts
    with pytest.raises(ValueError):
        k8s.recovery_cluster(
            "a", "ns", "r", source_cluster="b", storage="1Gi", source_store=SOURCE, store=STORE
        )
    with pytest.raises(ValueError):
        k8s.scheduled_backup("a", "ns", "r", "c", "every day")
    typo = k8s.backup("b", "ns", "r", "c")
    typo["spec"]["clsuter"] = typo["spec"].pop("cluster")
    with pytest.raises(jsonschema.ValidationError):
        cnpg_validate(typo)
    broken = k8s.volume_claim("v", "ns", "r", storage="1Gi")
    broken["spec"]["accessMode"] = ["ReadWriteOnce"]
    with pytest.raises(kubernetes_validate.ValidationError):
        core_validate(broken)


def test_redis_statefulset_and_volume_validate() -> None:
    for manifest in k8s.redis_statefulset(
        "redis-res-4",
        "tenant-a",
        "res_4",
        storage="1Gi",
        acl_secret="redis-res-4-acl",
        maxmemory="256mb",
    ):
        core_validate(manifest)
    core_validate(
        k8s.volume_claim("vol-res-5", "tenant-a", "res_5", storage="5Gi", storage_class="fast")
    )


def test_observed_status_mapping() -> None:
    healthy = {
        "status": {
            "phase": "Cluster in healthy state",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContinuousArchiving", "status": "True"},
            ],
        }
    }
    assert k8s.cluster_status(healthy) == ("ready", None)
    failing = {
        "status": {
            "phase": "Cluster in healthy state",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {
                    "type": "ContinuousArchiving",
                    "status": "False",
                    "message": "unexpected failure invoking barman-cloud-wal-archive",
                },
            ],
        }
    }
    status, reason = k8s.cluster_status(failing)
    assert status == "degraded" and reason is not None and "barman-cloud-wal-archive" in reason
    assert k8s.cluster_status({"status": {"phase": "Setting up primary"}})[0] == "provisioning"
    assert k8s.backup_status({"status": {"phase": "walArchivingFailing"}})[0] == "failed"
    assert k8s.backup_status({"status": {"phase": "finalizing"}}) == ("running", None)
    assert k8s.backup_status({"status": {"phase": "completed"}}) == ("completed", None)
    assert k8s.backup_status({}) == ("pending", None)


@pytest.fixture
def fake_api() -> Any:
    """The deployments' fake Kubernetes API: it validates CNPG kinds against the CNPG schema
    kept here and plays the operator (Cluster phases, Backup phases) on each read."""
    from kubernetes import client

    from tests.deployments import fake_kube

    with fake_kube.running_fake_kube() as (fake, url):
        api = client.ApiClient(client.Configuration(host=url))
        yield fake, api
        api.close()


def test_kubernetes_resources_against_the_fake_api(fake_api: Any) -> None:
    from resources.backends.kube import KubernetesResources

    fake, api = fake_api
    kr = KubernetesResources(
        api, "tenant-a", lambda rid: k8s.ObjectStore(f"s3://b/{rid}", "http://minio:9000", "s3")
    )
    kr.provision_postgres("res_abc", storage="1Gi", password="pw", backup_schedule="0 3 * * *")
    assert fake.kinds("clusters") == ["pg-abc"]
    assert fake.kinds("scheduledbackups") == ["pg-abc-scheduled"]
    assert fake.kinds("secrets") == ["pg-abc-app"]
    assert kr.observe_postgres("res_abc") == ("provisioning", "Setting up primary")
    assert kr.observe_postgres("res_abc")[0] == "provisioning"
    assert kr.observe_postgres("res_abc") == ("ready", None)  # "Cluster in healthy state"
    fake.set_archiving("tenant-a", "pg-abc", ok=False)
    status, reason = kr.observe_postgres("res_abc")
    assert status == "degraded" and "WAL archiving is failing" in (reason or "")
    key = ("clusters", "tenant-a", "pg-abc")
    name = kr.backup_postgres("res_abc", "bkp_01")
    assert kr.observe_backup(name) == ("running", None)  # started
    assert kr.observe_backup(name) == ("running", None)
    assert kr.observe_backup(name) == ("completed", None)
    kr.restore_postgres(
        "res_abc", "res_def", storage="1Gi", target_time=datetime(2026, 1, 1, tzinfo=UTC)
    )
    restored = fake.objects[("clusters", "tenant-a", "pg-def")]
    assert restored["spec"]["bootstrap"]["recovery"]["source"] == "pg-abc"
    assert (
        restored["spec"]["externalClusters"][0]["barmanObjectStore"]["destinationPath"]
        == "s3://b/res_abc"
    )
    assert (
        "bootstrap" in fake.objects[key]["spec"]
        and "initdb" in fake.objects[key]["spec"]["bootstrap"]
    )
    kr.deprovision_postgres("res_abc")
    assert fake.kinds("clusters") == ["pg-def"] and fake.kinds("secrets") == []
    kr.provision_redis("res_r1", storage="1Gi", acl="user default off\n", maxmemory="64mb")
    kr.provision_volume("res_v1", storage="2Gi")
    assert fake.kinds("statefulsets") == ["redis-r1"]
    assert fake.kinds("persistentvolumeclaims") == ["vol-v1"]
    assert kr.observe_backup("missing") == ("failed", "the Backup object is gone")
    assert fake.bad_requests == []
