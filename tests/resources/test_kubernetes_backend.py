"""The Kubernetes resources backend (CONVEYOR_RESOURCES_BACKEND=kubernetes) against the stateful
fake API, which validates every object (CNPG kinds against the CRD schema kept here) and plays the
CloudNativePG operator: Cluster phases up to "Cluster in healthy state" or a failing phase, Backup
phases, StatefulSet readiness and PVC binding. Limits are merge patches the fake records (and,
like the API server, refuses to shrink); usage comes from a kubelet stats summary the tests put
on a fake node. Last, the same through the REST API and the provision/backup/restore/limits
jobs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from resources.backends import get_backend
from resources.backends.base import Handle
from resources.backends.kube import KubePostgres, KubeRedis, KubeVolume
from resources.backends.postgres_dedicated import PostgresDedicated
from resources.backends.postgres_shared import PostgresShared
from resources.errors import BackendError, NotSupported, OutsideWindow
from resources.settings import ResourceSettings
from tests.deployments.fake_kube import FakeKube, running_fake_kube

NS = "tenant-a"


@dataclasses.dataclass
class Kube:
    fake: FakeKube
    url: str
    settings: ResourceSettings
    api: k8s.ApiClient

    def postgres(self, **changes: Any) -> KubePostgres:
        return KubePostgres(dataclasses.replace(self.settings, **changes), api=self.api)

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.fake.objects[(plural, NS, name)].get("status") or {})


@pytest.fixture
def kube() -> Iterator[Kube]:
    with running_fake_kube() as (fake, url):
        api = k8s.ApiClient(k8s.Configuration(host=url))
        settings = ResourceSettings(
            backend="kubernetes",
            kube_namespace=NS,
            kube_poll_s=0.01,
            kube_ready_timeout_s=5,
            kube_backup_destination="s3://backups",
            kube_backup_endpoint_url="http://minio:9000",
        )
        yield Kube(fake, url, settings, api)
        api.close()
        assert fake.bad_requests == []


def test_the_setting_picks_kubernetes_for_dedicated_tiers_and_volumes() -> None:
    kube = ResourceSettings(backend="kubernetes")
    assert isinstance(get_backend("postgres", "dedicated", kube), KubePostgres)
    assert isinstance(get_backend("redis", "dedicated", kube), KubeRedis)
    assert isinstance(get_backend("volume", "shared", kube), KubeVolume)
    assert isinstance(get_backend("postgres", "shared", kube), PostgresShared)  # platform server
    assert isinstance(get_backend("postgres", "dedicated", ResourceSettings()), PostgresDedicated)


def test_postgres_provision_backup_verify_restore_pitr_delete(kube: Kube) -> None:
    fake, pg = kube.fake, kube.postgres()
    handle = pg.provision("abc1", {"connection_limit": 20, "size_bytes": 3 * 2**30})
    cluster = fake.objects[("clusters", NS, "pg-abc1")]
    assert kube.status("clusters", "pg-abc1")["phase"] == "Cluster in healthy state"
    assert cluster["spec"]["storage"]["size"] == "3072Mi"
    assert cluster["spec"]["postgresql"]["parameters"]["max_connections"] == "30"
    assert cluster["metadata"]["labels"]["conveyor.dev/resource"] == "res_abc1"
    secret = fake.objects[("secrets", NS, "pg-abc1-app")]
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == cluster["metadata"]["uid"]
    password = handle.secret["password"]
    assert secret["stringData"] == {"username": "app", "password": password}
    assert handle.env["DATABASE_URL"] == (
        f"postgresql://app:{password}@pg-abc1-rw.{NS}.svc:5432/app"
    )
    assert fake.kinds("scheduledbackups") == []  # Conveyor's beat schedules (and verifies)

    with pytest.raises(OutsideWindow, match="no recoverability point"):
        pg.window(handle, [])  # no base backup yet
    backup = pg.backup(handle, "bkp_01")
    assert backup.meta["backup"] == "pg-abc1-01" and backup.meta["end_lsn"] == "0/3000100"
    assert backup.location.startswith("s3://backups/res_abc1#")
    verdict = pg.verify(handle, backup)
    assert verdict.ok, verdict.mismatches
    assert fake.kinds("clusters") == ["pg-abc1"]  # the scratch cluster is gone

    restored = pg.restore(backup, handle, "abc2")
    recovery = fake.objects[("clusters", NS, "pg-abc2")]["spec"]["bootstrap"]["recovery"]
    assert recovery["backup"] == {"name": "pg-abc1-01"}
    assert recovery["secret"] == {"name": "pg-abc2-app"}  # fresh credentials, not the source's
    assert restored.secret["password"] != password

    # PITR: the window runs from the first recoverability point to now - archive_timeout.
    fake.objects[("clusters", NS, "pg-abc1")]["status"]["firstRecoverabilityPoint"] = (
        "2026-01-01T00:00:00Z"
    )
    window = pg.window(handle, [])
    assert window.restorable_from == datetime(2026, 1, 1, tzinfo=UTC)
    late = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(OutsideWindow, match="outside the restorable window 2026-01-01"):
        pg.pitr(handle, [], late, "abc3")
    assert "pg-abc3" not in fake.kinds("clusters")  # refused before anything was created
    target = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    pg.pitr(handle, [], target, "abc3")
    pitr = fake.objects[("clusters", NS, "pg-abc3")]["spec"]
    assert pitr["bootstrap"]["recovery"]["source"] == "pg-abc1"
    assert pitr["bootstrap"]["recovery"]["recoveryTarget"] == {
        "targetTime": "2026-01-01 00:30:00.000000+00"
    }
    assert pitr["externalClusters"][0]["barmanObjectStore"]["destinationPath"] == (
        "s3://backups/res_abc1"
    )
    assert pitr["backup"]["barmanObjectStore"]["destinationPath"] == "s3://backups/res_abc3"

    branch = pg.branch(handle, "abc4")
    assert branch.state["cluster"] == "pg-abc4"
    assert len(fake.kinds("backups")) == 2  # the branch took a fresh backup first

    rotated = pg.rotate(handle)
    assert (
        fake.objects[("secrets", NS, "pg-abc1-app")]["stringData"]["password"]
        == (rotated.secret["password"])
    )
    assert rotated.secret["password"] != password

    assert pg.health(handle) == {"status": "ok"}
    fake.set_archiving(NS, "pg-abc1", ok=False)
    health = pg.health(handle)
    assert health["status"] == "failing" and "WAL archiving is failing" in health["error"]
    with pytest.raises(OutsideWindow):
        pg.window(handle, [])  # no PITR promise while archiving fails

    pg.deprovision(handle)
    assert "pg-abc1" not in fake.kinds("clusters")
    assert "pg-abc1-app" not in fake.kinds("secrets")
    assert "pg-abc1-01" in fake.kinds("backups")  # kept for their retention
    pg.purge_backups(handle)
    assert not [b for b in fake.kinds("backups") if b.startswith("pg-abc1-")]


def _mount(fake: FakeKube, pod: str, claim: str, node: str, phase: str = "Running") -> None:
    """A pod that mounts ``claim`` on ``node`` (what a bound deployment or CNPG would run)."""
    fake.objects[("pods", NS, pod)] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": NS},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
        "status": {"phase": phase},
    }


def _kubelet(fake: FakeKube, node: str, pod: str, claim: str, used: int) -> None:
    fake.node_stats[node] = {
        "node": {"nodeName": node},
        "pods": [
            {
                "podRef": {"name": pod, "namespace": NS},
                "volume": [
                    {"name": "kube-api-access", "usedBytes": 4096},
                    {
                        "name": "data",
                        "pvcRef": {"name": claim, "namespace": NS},
                        "usedBytes": used,
                        "capacityBytes": 2**30,
                    },
                ],
            }
        ],
    }


def test_postgres_limits_patch_the_cluster_and_storage_only_grows(kube: Kube) -> None:
    fake, pg = kube.fake, kube.postgres()
    handle = pg.provision("lim1", {"connection_limit": 20, "size_bytes": 2 * 2**30})
    changed = pg.apply_limits(handle, {"connection_limit": 40, "size_bytes": 4 * 2**30})
    assert changed == {"storage": "4096Mi", "connection_limit": 40}
    spec = {"storage": {"size": "4096Mi"}, "postgresql": {"parameters": {"max_connections": "50"}}}
    assert fake.patches == [("clusters", "pg-lim1", {"spec": spec})]
    cluster = fake.objects[("clusters", NS, "pg-lim1")]
    assert cluster["spec"]["storage"]["size"] == "4096Mi"
    assert cluster["spec"]["postgresql"]["parameters"] == {
        "archive_timeout": "60s",  # the rest of the spec is kept
        "max_connections": "50",
    }
    assert "initdb" in cluster["spec"]["bootstrap"]
    assert cluster["status"]["phase"] == "Cluster in healthy state"
    grown = Handle({**handle.state, **changed}, handle.secret)

    with pytest.raises(NotSupported, match=r"shrink from 4096Mi .* can only grow"):
        pg.apply_limits(grown, {"size_bytes": 3 * 2**30})
    with pytest.raises(NotSupported, match="can only grow"):
        pg.check_limits(grown.state, {"connection_limit": 5, "size_bytes": 2**30})
    pg.check_limits(grown.state, {"size_bytes": 4 * 2**30})  # same size: fine
    assert len(fake.patches) == 1 and cluster["spec"]["storage"]["size"] == "4096Mi"
    # connections alone leave the storage as it is
    assert pg.apply_limits(grown, {"connection_limit": 10}) == {
        "storage": "4096Mi",
        "connection_limit": 10,
    }
    assert fake.patches[-1][2]["spec"]["postgresql"]["parameters"]["max_connections"] == "20"


def test_postgres_backup_deletion_removes_its_backup_object(kube: Kube) -> None:
    fake, pg = kube.fake, kube.postgres()
    handle = pg.provision("del1", {})
    pg.backup(handle, "bkp_a1")
    pg.backup(handle, "bkp_a2")
    assert fake.kinds("backups") == ["pg-del1-a1", "pg-del1-a2"]
    pg.delete_backup("res_del1", "bkp_a1")
    assert fake.kinds("backups") == ["pg-del1-a2"]
    pg.delete_backup("res_del1", "bkp_a1")  # already gone: idempotent
    pg.deprovision(handle)
    pg.delete_backup("res_del1", "bkp_a2")  # after the resource itself is gone too
    assert fake.kinds("backups") == []


def test_postgres_usage_is_the_primary_volume_from_the_kubelet(kube: Kube) -> None:
    fake, pg = kube.fake, kube.postgres()
    handle = pg.provision("use1", {})
    assert pg.usage_bytes(handle) is None  # no primary pod yet: unknown, not zero
    _mount(fake, "pg-use1-1", "pg-use1-1", "node-a")
    assert pg.usage_bytes(handle) is None  # the kubelet has no stats for it yet
    _kubelet(fake, "node-a", "pg-use1-1", "pg-use1-1", 123_456_789)
    assert pg.usage_bytes(handle) == 123_456_789


def test_a_failing_cluster_fails_with_the_operator_reason_and_leaves_nothing(kube: Kube) -> None:
    kube.fake.cluster_scenario = "failing"
    with pytest.raises(BackendError) as caught:
        kube.postgres().provision("bad1", {})
    assert "Unable to create required cluster objects" in caught.value.message
    assert "exceeded quota" in caught.value.message
    assert kube.fake.kinds("clusters") == [] and kube.fake.kinds("secrets") == []


def test_a_cluster_that_never_gets_healthy_times_out_with_its_phase(kube: Kube) -> None:
    kube.fake.cluster_scenario = "stuck"
    with pytest.raises(BackendError) as caught:
        kube.postgres(kube_ready_timeout_s=0.3).provision("slow1", {})
    assert "not ready within 0.3s (last: Setting up primary)" in caught.value.message
    assert kube.fake.kinds("clusters") == []


def test_a_failed_backup_reports_the_operator_error(kube: Kube) -> None:
    pg = kube.postgres()
    handle = pg.provision("bk1", {})
    kube.fake.backup_scenario = "failed"
    with pytest.raises(BackendError, match="can't upload: S3 bucket not found"):
        pg.backup(handle, "bkp_x")


def test_a_backup_that_does_not_recover_fails_verification(kube: Kube) -> None:
    pg = kube.postgres()
    handle = pg.provision("vf1", {})
    backup = pg.backup(handle, "bkp_v")
    kube.fake.cluster_scenario = "failing"  # the scratch recovery cannot come up
    verdict = pg.verify(handle, backup)
    assert not verdict.ok
    assert "did not recover" in verdict.mismatches[0]
    assert kube.fake.kinds("clusters") == ["pg-vf1"]


def test_redis_statefulset_rotation_and_delete(kube: Kube) -> None:
    fake = kube.fake
    redis = KubeRedis(kube.settings, api=kube.api)
    handle = redis.provision("r1", {"maxmemory": "64mb"})
    sts = fake.objects[("statefulsets", NS, "redis-r1")]
    assert kube.status("statefulsets", "redis-r1")["readyReplicas"] == 1
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == "64mb"
    acl = fake.objects[("secrets", NS, "redis-r1-acl")]["stringData"]["users.acl"]
    assert "user default off" in acl and handle.secret["password"] not in acl  # hashed
    assert handle.env["REDIS_URL"].endswith(f"@redis-r1.{NS}.svc:6379/0")
    checksum = sts["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/acl-checksum"]
    rotated = redis.rotate(handle)
    sts = fake.objects[("statefulsets", NS, "redis-r1")]
    assert sts["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/acl-checksum"] != (
        checksum
    )  # the pod restarts onto the new users
    assert rotated.secret["password"] != handle.secret["password"]
    with pytest.raises(NotSupported, match="backups of Redis on Kubernetes"):
        redis.backup(rotated, "bkp_r")
    redis.deprovision(rotated)
    for plural in ("statefulsets", "services", "secrets"):
        assert fake.kinds(plural) == []


def test_redis_limits_roll_the_statefulset_onto_new_memory(kube: Kube) -> None:
    fake = kube.fake
    redis = KubeRedis(kube.settings, api=kube.api)
    handle = redis.provision("rl1", {"maxmemory": "64mb"})

    def container() -> dict[str, Any]:
        sts = fake.objects[("statefulsets", NS, "redis-rl1")]
        return dict(sts["spec"]["template"]["spec"]["containers"][0])

    def arg(name: str) -> str:
        args = container()["args"]
        return str(args[args.index(name) + 1])

    assert (arg("--maxmemory"), arg("--maxmemory-policy")) == ("64mb", "noeviction")
    assert container()["resources"] == {
        "requests": {"memory": "128Mi"},
        "limits": {"memory": "192Mi"},
    }
    sts = fake.objects[("statefulsets", NS, "redis-rl1")]
    checksum = sts["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/acl-checksum"]
    changed = redis.apply_limits(handle, {"maxmemory": "1gb", "maxmemory_policy": "allkeys-lru"})
    assert changed == {"maxmemory": "1gb", "maxmemory_policy": "allkeys-lru"}
    assert (arg("--maxmemory"), arg("--maxmemory-policy")) == ("1gb", "allkeys-lru")
    assert container()["resources"] == {
        "requests": {"memory": "1088Mi"},
        "limits": {"memory": "2112Mi"},
    }
    applied = [o for o in fake.applied if o["kind"] == "StatefulSet"]
    assert len(applied) == 2  # server-side applied again, validated by the fake
    sts = fake.objects[("statefulsets", NS, "redis-rl1")]
    assert sts["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/acl-checksum"] == (
        checksum
    )  # the same users
    rotated = redis.rotate(Handle({**handle.state, **changed}, handle.secret))
    assert rotated.state["maxmemory_policy"] == "allkeys-lru" and arg("--maxmemory") == "1gb"
    redis.deprovision(rotated)


def test_volume_grows_refuses_to_shrink_and_reads_usage_from_the_kubelet(kube: Kube) -> None:
    fake = kube.fake
    volume = KubeVolume(kube.settings, kube.api)
    handle = volume.provision("vg1", {"size_bytes": 2**30})
    claim = fake.objects[("persistentvolumeclaims", NS, "vol-vg1")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1024Mi"
    volume.check_limits(handle.state, {"size_bytes": 2**30})
    with pytest.raises(NotSupported, match="claim vol-vg1 to shrink from 1024Mi"):
        volume.check_limits(handle.state, {"size_bytes": 2**29})
    with pytest.raises(NotSupported, match="can only grow"):
        volume.apply_limits(handle, {"size_bytes": 2**29})
    assert fake.patches == []

    assert volume.apply_limits(handle, {"size_bytes": 3 * 2**30}) == {"storage": "3072Mi"}
    storage = {"spec": {"resources": {"requests": {"storage": "3072Mi"}}}}
    assert fake.patches == [("persistentvolumeclaims", "vol-vg1", storage)]
    claim = fake.objects[("persistentvolumeclaims", NS, "vol-vg1")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "3072Mi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # the state still says 1024Mi: the job checks the live claim, which is larger now
    with pytest.raises(NotSupported, match="shrink from 3072Mi"):
        volume.apply_limits(handle, {"size_bytes": 2 * 2**30})

    assert volume.usage_bytes(handle) is None  # nothing mounts it: unknown
    _mount(fake, "other-0", "vol-other", "node-a")
    _mount(fake, "app-0", "vol-vg1", "node-b", phase="Pending")
    _kubelet(fake, "node-b", "app-0", "vol-vg1", 5000)
    assert volume.usage_bytes(handle) is None  # its only pod is not running
    _mount(fake, "app-0", "vol-vg1", "node-b")
    assert volume.usage_bytes(handle) == 5000
    fake.node_stats.clear()  # the node is gone
    assert volume.usage_bytes(handle) is None


def test_volume_claim(kube: Kube) -> None:
    volume = KubeVolume(dataclasses.replace(kube.settings, kube_storage_class="fast"), kube.api)
    handle = volume.provision("v1", {"size_bytes": 5 * 2**30})
    claim = kube.fake.objects[("persistentvolumeclaims", NS, "vol-v1")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5120Mi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert handle.env["VOLUME_CLAIM"] == "vol-v1"
    assert volume.metrics(handle)["phase"] in ("Pending", "Bound")
    volume.deprovision(handle)
    assert kube.fake.kinds("persistentvolumeclaims") == []
    with pytest.raises(NotSupported, match="VolumeSnapshots"):
        volume.backup(Handle({}, {}), "bkp_1")


# ---------------------------------------------------------------- through the jobs ---
@pytest.fixture
def kube_api_env(kube: Kube, tmp_path: Path) -> Iterator[Kube]:
    """The API and the in-thread worker use the Kubernetes backend, connected through a
    kubeconfig file that points at the fake API server."""
    from resources import service

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{kube.url}'}}}}]\n"
        "users: [{name: u, user: {token: not-checked}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: u}}]\n"
    )
    custom = dataclasses.replace(
        kube.settings, kube_config=str(kubeconfig), kube_context="fake", data_dir=tmp_path
    )
    mp = pytest.MonkeyPatch()
    service.reset_caches()
    mp.setattr(service, "resource_settings", lambda: custom)
    yield kube
    mp.undo()
    service.reset_caches()


def _wait(client: Any, path: str, headers: dict[str, str], done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get(path, headers=headers).json()
        if done(body):
            return dict(body)
        time.sleep(0.05)
    raise AssertionError(f"{path} never finished: {body}")


def test_provision_backup_restore_and_delete_through_the_jobs(
    client: Any, org: Any, worker: Any, kube_api_env: Kube
) -> None:
    fake = kube_api_env.fake
    r = client.post(
        "/v1/resources",
        json={"type": "postgres", "tier": "dedicated", "name": "kpg"},
        headers=org.headers,
    )
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    res = _wait(
        client, f"/v1/resources/{rid}", org.headers, lambda b: b["status"] != "provisioning"
    )
    assert res["status"] == "ready", res
    cluster = f"pg-{rid.removeprefix('res_')}"
    assert fake.kinds("clusters") == [cluster]
    creds = client.get(f"/v1/resources/{rid}/credentials", headers=org.headers).json()
    assert f"@{cluster}-rw.{NS}.svc:5432/app" in str(creds)

    r = client.post(f"/v1/resources/{rid}/backups", headers=org.headers)
    assert r.status_code == 202, r.text
    bid = r.json()["id"]
    backup = _wait(
        client,
        f"/v1/resources/{rid}/backups/{bid}",
        org.headers,
        lambda b: b["status"] == "failed" or b["verified_at"],
    )
    assert backup["status"] == "completed" and backup["verified_at"], backup

    r = client.post(
        f"/v1/resources/{rid}/restore",
        json={"backup_id": bid, "name": "kpg-restored"},
        headers=org.headers,
    )
    assert r.status_code == 202, r.text
    new = r.json()["id"]
    restored = _wait(
        client, f"/v1/resources/{new}", org.headers, lambda b: b["status"] != "provisioning"
    )
    assert restored["status"] == "ready", restored
    recovery = fake.objects[("clusters", NS, f"pg-{new.removeprefix('res_')}")]["spec"]
    assert recovery["bootstrap"]["recovery"]["backup"]["name"].startswith(cluster)

    fake.cluster_scenario = "failing"
    r = client.post(
        "/v1/resources",
        json={"type": "postgres", "tier": "dedicated", "name": "kpg-bad"},
        headers=org.headers,
    )
    bad = _wait(
        client,
        f"/v1/resources/{r.json()['id']}",
        org.headers,
        lambda b: b["status"] != "provisioning",
    )
    assert bad["status"] == "failed"
    assert "Unable to create required cluster objects" in (bad["status_reason"] or "")

    # Deleting a backup (the API, then retention) takes its CNPG Backup object with it.
    r = client.post(f"/v1/resources/{rid}/backups", headers=org.headers)
    second = r.json()["id"]
    _wait(
        client,
        f"/v1/resources/{rid}/backups/{second}",
        org.headers,
        lambda b: b["status"] == "failed" or b["verified_at"],
    )
    first_object = f"{cluster}-{bid.removeprefix('bkp_').replace('_', '-')}"
    second_object = f"{cluster}-{second.removeprefix('bkp_').replace('_', '-')}"
    assert {first_object, second_object} <= set(fake.kinds("backups"))
    r = client.delete(f"/v1/resources/{rid}/backups/{bid}", headers=org.headers)
    assert r.status_code == 204, r.text
    assert first_object not in fake.kinds("backups") and second_object in fake.kinds("backups")
    from resources.jobs import expire_backups
    from store.db import session_scope

    with session_scope() as session:  # past the default 7-day retention, as beat would see it
        assert expire_backups(session, datetime.now(UTC) + timedelta(days=8)) >= 1
    assert second_object not in fake.kinds("backups")

    for resource_id in (rid, new):
        assert client.delete(f"/v1/resources/{resource_id}", headers=org.headers).status_code == 202
        _wait(
            client,
            f"/v1/resources/{resource_id}",
            org.headers,
            lambda b: b.get("status") in ("deleted", None) or "error" in b,
        )
    assert fake.kinds("clusters") == []


def test_volume_limits_through_the_api(
    client: Any, org: Any, worker: Any, kube_api_env: Kube
) -> None:
    """A shrink is a 422 before any job; a growth is a limits job that patches the claim; the
    usage check leaves a volume whose usage it cannot read alone (unknown is no alert)."""
    from tasks.provision import check_usage

    fake = kube_api_env.fake
    r = client.post(
        "/v1/resources",
        json={"type": "volume", "name": "kvol", "limits": {"size_bytes": 2**30}},
        headers=org.headers,
    )
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    _wait(client, f"/v1/resources/{rid}", org.headers, lambda b: b["status"] == "ready")
    claim = f"vol-{rid.removeprefix('res_')}"
    r = client.patch(
        f"/v1/resources/{rid}", json={"limits": {"size_bytes": 2**20}}, headers=org.headers
    )
    assert r.status_code == 422, r.text
    assert "can only grow" in r.json()["error"]["message"] and fake.patches == []
    r = client.patch(
        f"/v1/resources/{rid}", json={"limits": {"size_bytes": 2 * 2**30}}, headers=org.headers
    )
    assert r.status_code == 202, r.text
    job = _wait(
        client,
        r.json()["links"]["job"],
        org.headers,
        lambda b: (
            b["status"]
            not in (
                "queued",
                "running",
            )
        ),
    )
    assert job["status"] == "completed", job
    assert fake.objects[("persistentvolumeclaims", NS, claim)]["spec"]["resources"] == {
        "requests": {"storage": "2048Mi"}
    }
    check_usage()  # no pod mounts the claim: usage unknown, no verdict
    body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
    assert body["status"] == "ready" and body["limits"] == {"size_bytes": 2 * 2**30}
    _mount(fake, "app-0", claim, "node-a")
    _kubelet(fake, "node-a", "app-0", claim, 3 * 2**30)  # past the limit: known, so reported
    check_usage()
    body = client.get(f"/v1/resources/{rid}", headers=org.headers).json()
    assert body["status"] == "degraded" and body["status_reason"] == "size_limit_exceeded"
    assert client.delete(f"/v1/resources/{rid}", headers=org.headers).status_code == 202
    _wait(client, f"/v1/resources/{rid}", org.headers, lambda b: b.get("status") != "deleting")
    assert fake.kinds("persistentvolumeclaims") == []


def test_storage_quantities_and_redis_sizes_parse_to_bytes() -> None:
    from resources.backends.kube import grown_storage
    from resources.kubernetes import parse_quantity, redis_bytes

    assert parse_quantity("1Gi") == 2**30 and parse_quantity("3072Mi") == 3 * 2**30
    assert parse_quantity("500M") == 500_000_000 and parse_quantity("1.5Ki") == 1536
    assert parse_quantity("1073741824") == 2**30
    with pytest.raises(ValueError, match="not a storage quantity"):
        parse_quantity("1e3m")
    assert redis_bytes("64mb") == 64 * 2**20 and redis_bytes("100") == 100
    assert grown_storage("x", "1Gi", None) == "1Gi"
    assert grown_storage("x", "1Gi", 2**30) == "1Gi"  # the same size, written otherwise
    assert grown_storage("x", "1Gi", 2**30 + 1) == "1025Mi"
    with pytest.raises(NotSupported, match="x to shrink from 1Gi"):
        grown_storage("x", "1Gi", 2**30 - 2**20)
