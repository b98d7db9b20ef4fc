"""Settings the resources backends need, as one frozen dataclass.

The values come from the platform's settings class (``config.settings``) through
``ResourceSettings.from_platform()``; the defaults here are the embedded/local ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ResourceSettings:
    # Shared PostgreSQL tier: the platform's server (superuser DSN) and the host apps use.
    pg_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    pg_public_host: str = "127.0.0.1"
    pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    # initdb refuses to run as root: dedicated instances run as this OS user when we are root.
    pg_os_user: str = "postgres"
    pg_archive_timeout_s: int = 60
    pg_shared_buffers: str = "32MB"
    # Shared Redis tier: the platform's Redis (an admin URL) and the redis-server binary.
    redis_admin_url: str = "redis://127.0.0.1:6379/0"
    redis_public_host: str = "127.0.0.1"
    redis_server_bin: Path = Path("/usr/bin/redis-server")
    # Blob: any S3 endpoint (moto's server locally).
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str = "conveyor"
    s3_secret_access_key: str = "conveyor"
    # Create an IAM user + key per bucket (real S3-compatible IAM or moto); else share admin keys.
    s3_use_iam: bool = True
    # Where instances, archives, backups and volumes live.
    data_dir: Path = Path(".data/resources")
    # Prefix of every database, role, key prefix and bucket the platform creates.
    name_prefix: str = "cvy_"
    # Fernet keys (comma-separated, first encrypts); empty = a key file under data_dir.
    credentials_keys: tuple[str, ...] = field(default_factory=tuple)
    # Seconds a backend waits for a server to start / a recovery to finish.
    start_timeout_s: float = 120.0

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def instances_dir(self) -> Path:
        return self.data_dir / "instances"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"
