"""Settings the resources backends need, as one frozen dataclass.

The values come from the platform's settings class (``config.settings``) through
``ResourceSettings.from_platform()``; the defaults are that class's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.crypto import split_keys
from config import Settings, default
from resources.s3server import recorded_endpoint


@dataclass(frozen=True)
class ResourceSettings:
    """The ``resources_*`` settings (and the Kubernetes connection), narrowed for the backends:
    optional strings become ``None``, secrets plain strings, key lists tuples. The defaults are
    the settings' own (``config.default``), so a test can build one without the environment."""

    # Shared PostgreSQL tier: the platform's server (superuser DSN) and the host apps use.
    # (Defaults: the local servers; ``from_platform`` resolves the settings, which default to
    # the platform's own servers.)
    pg_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    pg_public_host: str = default("resources_pg_public_host")
    pg_bin_dir: Path = default("resources_pg_bin_dir")
    # initdb refuses to run as root: dedicated instances run as this OS user when we are root.
    pg_os_user: str = default("resources_pg_os_user")
    pg_archive_timeout_s: int = default("resources_pg_archive_timeout_s")
    pg_shared_buffers: str = default("resources_pg_shared_buffers")
    pg_dump_compression: int = default("resources_pg_dump_compression")
    # Shared Redis tier: the platform's Redis (an admin URL) and the redis-server binary.
    redis_admin_url: str = "redis://127.0.0.1:6379/0"
    redis_public_host: str = default("resources_redis_public_host")
    redis_server_bin: Path = default("resources_redis_server_bin")
    # Blob: any S3 endpoint (moto's server locally).
    s3_endpoint_url: str | None = default("resources_s3_endpoint_url") or None
    s3_region: str = default("resources_s3_region")
    s3_access_key_id: str = default("resources_s3_access_key_id")
    s3_secret_access_key: str = default("resources_s3_secret_access_key").get_secret_value()
    # Create an IAM user + key per bucket (real S3-compatible IAM or moto); else share admin keys.
    s3_use_iam: bool = default("resources_s3_use_iam")
    # Where instances, archives, backups and volumes live.
    data_dir: Path = default("data_dir") / "resources"
    # Prefix of every database, role, key prefix and bucket the platform creates.
    name_prefix: str = default("resources_name_prefix")
    # Fernet keys (comma-separated, first encrypts); empty = a key file under data_dir.
    credentials_keys: tuple[str, ...] = field(default_factory=tuple)
    # Seconds a backend waits for a server to start / a recovery to finish.
    start_timeout_s: float = default("resources_start_timeout_seconds")
    # "kubernetes": dedicated postgres/redis and volumes on a cluster (resources.backends.kube).
    backend: str = default("resources_backend")
    kube_namespace: str = default("resources_kube_namespace")
    kube_storage_class: str | None = default("resources_kube_storage_class") or None
    kube_backup_destination: str = default("resources_kube_backup_destination")
    kube_backup_endpoint_url: str = default("resources_kube_backup_endpoint_url")
    kube_backup_secret: str = default("resources_kube_backup_secret")
    kube_ready_timeout_s: float = default("resources_kube_ready_timeout_seconds")
    kube_poll_s: float = default("resources_kube_poll_seconds")
    kube_config: str | None = default("kube_config") or None
    kube_context: str | None = default("kube_context") or None
    kube_in_cluster: bool = default("kube_in_cluster")

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"

    @classmethod
    def from_platform(cls, settings: Settings) -> ResourceSettings:
        return cls(
            pg_admin_dsn=settings.resolved_resources_pg_admin_dsn(),
            pg_public_host=settings.resources_pg_public_host,
            pg_bin_dir=_pg_bin_dir(settings.resources_pg_bin_dir),
            pg_os_user=settings.resources_pg_os_user,
            pg_archive_timeout_s=settings.resources_pg_archive_timeout_s,
            pg_shared_buffers=settings.resources_pg_shared_buffers,
            pg_dump_compression=settings.resources_pg_dump_compression,
            redis_admin_url=settings.resolved_resources_redis_admin_url(),
            redis_public_host=settings.resources_redis_public_host,
            redis_server_bin=settings.resources_redis_server_bin,
            # Not set: the embedded server of this data dir when it runs (``conveyor up``);
            # never an implicit public endpoint.
            s3_endpoint_url=settings.resources_s3_endpoint_url
            or recorded_endpoint(settings.data_dir),
            s3_region=settings.resources_s3_region,
            s3_access_key_id=settings.resources_s3_access_key_id,
            s3_secret_access_key=settings.resources_s3_secret_access_key.get_secret_value(),
            s3_use_iam=settings.resources_s3_use_iam,
            data_dir=settings.data_dir / "resources",
            name_prefix=settings.resources_name_prefix,
            credentials_keys=tuple(
                split_keys(settings.resources_credentials_keys.get_secret_value())
            ),
            start_timeout_s=settings.resources_start_timeout_seconds,
            backend=settings.resources_backend,
            kube_namespace=settings.resources_kube_namespace,
            kube_storage_class=settings.resources_kube_storage_class or None,
            kube_backup_destination=settings.resources_kube_backup_destination,
            kube_backup_endpoint_url=settings.resources_kube_backup_endpoint_url,
            kube_backup_secret=settings.resources_kube_backup_secret,
            kube_ready_timeout_s=settings.resources_kube_ready_timeout_seconds,
            kube_poll_s=settings.resources_kube_poll_seconds,
            kube_config=settings.kube_config or None,
            kube_context=settings.kube_context or None,
            kube_in_cluster=settings.kube_in_cluster,
        )


def _pg_bin_dir(configured: Path) -> Path:
    """The configured PostgreSQL bin dir, or else the newest Debian one installed."""
    if (configured / "initdb").exists():
        return configured
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else configured
