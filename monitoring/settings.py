"""Settings of the monitoring domain (env prefix ``CONVEYOR_``, like ``config.settings``).

Kept here while the platform's settings class is being reorganised; every field can move into
``config.settings.Settings`` unchanged (same names, same environment variables).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class MonitoringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    metrics_enabled: bool = Field(
        default=True, description="Workers record job metrics; the API times its requests."
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token for GET /metrics; empty: loopback clients only.",
    )
    health_cache_seconds: float = Field(
        default=2.0, description="GET /v1/health/status checks at most this often per process."
    )
    heartbeat_seconds: float = Field(default=5.0, description="Each worker's heartbeat period.")
    runner_offline_after_seconds: float = Field(
        default=20.0, description="A worker whose last heartbeat is older is offline."
    )
    metrics_flush_seconds: float = Field(
        default=5.0, description="How often a worker process adds its job metrics to Redis."
    )


@lru_cache(maxsize=1)
def get_monitoring_settings() -> MonitoringSettings:
    return MonitoringSettings()
