"""Pydantic I/O of the projects domain: request bodies, list queries and job inputs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
ENV_NAME = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
MAX_ENV_VALUE = 32 * 1024
DOMAIN = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"
DeployStatus = Literal["queued", "building", "deploying", "succeeded", "failed", "cancelled"]
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "building", "deploying")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(_Strict):
    name: str = Field(min_length=1, max_length=100)
    slug: str = Field(pattern=SLUG, description="Unique in the organisation; DNS-safe.")
    git_repository: str | None = Field(default=None, max_length=2000)
    git_branch: str | None = Field(default=None, max_length=255)
    build_pack: Literal["procfile", "dockerfile", "nixpacks"] | None = None
    docker_image: str | None = Field(default=None, max_length=500)
    port: int = Field(default=8000, ge=1, le=65535)
    domain: str | None = Field(default=None, pattern=DOMAIN)
    health_check_path: str = Field(default="/", pattern=r"^/", max_length=255)

    @model_validator(mode="after")
    def _one_source(self) -> ProjectCreate:
        if (self.git_repository is None) == (self.docker_image is None):
            raise ValueError("give exactly one of git_repository or docker_image")
        return self


class ProjectPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=100)
    git_branch: str | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    domain: str | None = Field(default=None, pattern=DOMAIN)
    health_check_path: str | None = Field(default=None, pattern=r"^/", max_length=255)


class EnvironmentCreate(_Strict):
    name: str = Field(pattern=ENV_NAME)
    domain: str | None = Field(default=None, pattern=DOMAIN)
    replicas: int = Field(default=1, ge=0, le=20)


class EnvironmentPatch(_Strict):
    domain: str | None = Field(default=None, pattern=DOMAIN)
    replicas: int | None = Field(default=None, ge=0, le=20)


class DeployRequest(_Strict):
    environment: str = Field(default="production", pattern=ENV_NAME)
    git_commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,64}$")
    wait: bool = Field(
        False, description="Wait for a running deploy of the environment instead of answering 409."
    )


class RollbackRequest(_Strict):
    deployment_id: str = Field(min_length=1, max_length=40)


class DeploymentListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str | None = None
    status: DeployStatus | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None


class EnvVarIn(_Strict):
    key: str = Field(min_length=1, max_length=255)
    value: str = Field(max_length=MAX_ENV_VALUE)
    secret: bool = False

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not ENV_KEY.match(value):
            raise ValueError("must match ^[A-Z_][A-Z0-9_]*$")
        return value


class EnvVarsUpsert(_Strict):
    environment: str = Field(default="production", pattern=ENV_NAME)
    vars: list[EnvVarIn] = Field(min_length=1, max_length=200)


class VolumeCreate(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    mount_path: str = Field(min_length=1, max_length=255)
    size_gb: int = Field(default=1, ge=1, le=1000)


class TcpProxyCreate(_Strict):
    environment: str = Field(default="production", pattern=ENV_NAME)
    external_port: int | None = Field(default=None, ge=1024, le=65535)
    target_port: int | None = Field(default=None, ge=1, le=65535)


class AllowEntry(_Strict):
    cidr: str = Field(min_length=1, max_length=64)
    description: str = Field(default="", max_length=200)


class ConfigEntry(_Strict):
    key: str = Field(min_length=1, max_length=255)
    value: str = Field(max_length=MAX_ENV_VALUE)


class ConfigUpsert(_Strict):
    entries: list[ConfigEntry] = Field(min_length=1, max_length=200)


class ConfigValue(_Strict):
    value: str = Field(max_length=MAX_ENV_VALUE)


class ProjectJobInput(BaseModel):
    """Input of the ``project_*`` job kinds."""

    project_id: str
    environment_id: str | None = None
    deployment_id: str | None = None


class ServiceCreate(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    command: str | None = Field(default=None, max_length=2000)
    port: int | None = Field(default=None, ge=1, le=65535)
    replicas: int | None = Field(default=None, ge=0, le=20)
    dockerfile_path: str | None = Field(default=None, max_length=500)


class ServicePatch(_Strict):
    command: str | None = Field(default=None, max_length=2000)
    port: int | None = Field(default=None, ge=1, le=65535)
    replicas: int | None = Field(default=None, ge=0, le=20)
    dockerfile_path: str | None = Field(default=None, max_length=500)


class ServiceEnvPatch(_Strict):
    replicas: int | None = Field(default=None, ge=0, le=20)
    port: int | None = Field(default=None, ge=1, le=65535)
    cpu: str | None = Field(default=None, max_length=20)
    memory: str | None = Field(default=None, max_length=20)


class ProjectBindingCreate(_Strict):
    """``POST /v1/resources/{id}/bindings``: inject the resource's variables into an
    environment of a project on its next deploy."""

    project_environment_id: str = Field(min_length=1, max_length=40)
    role: Literal["readwrite", "readonly"] = "readwrite"


class StorageCreate(_Strict):
    environment: str = Field(default="production", pattern=ENV_NAME)
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
