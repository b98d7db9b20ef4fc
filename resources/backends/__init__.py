"""Resource backends by (type, tier), one instance per process (they hold no connections)."""

from __future__ import annotations

from functools import lru_cache

from resources.backends.base import Backend
from resources.backends.blob import Blob
from resources.backends.postgres_dedicated import PostgresDedicated
from resources.backends.postgres_shared import PostgresShared
from resources.backends.redis_kv import RedisDedicated, RedisShared
from resources.backends.volume import Volume
from resources.errors import NotSupported
from resources.settings import ResourceSettings

TYPES = ("postgres", "redis", "blob", "volume")
TIERS = ("shared", "dedicated")
_CLASSES: dict[tuple[str, str], type] = {
    ("postgres", "shared"): PostgresShared,
    ("postgres", "dedicated"): PostgresDedicated,
    ("redis", "shared"): RedisShared,
    ("redis", "dedicated"): RedisDedicated,
    ("blob", "shared"): Blob,
    ("volume", "shared"): Volume,
}


def supported(type_: str, tier: str) -> bool:
    return (type_, tier) in _CLASSES


@lru_cache(maxsize=32)
def get_backend(type_: str, tier: str, settings: ResourceSettings) -> Backend:
    if settings.backend == "kubernetes":
        from resources.backends.kube import KUBE_CLASSES  # the kubernetes client is optional

        if (type_, tier) in KUBE_CLASSES:
            return KUBE_CLASSES[(type_, tier)](settings)
    cls = _CLASSES.get((type_, tier))
    if cls is None:
        raise NotSupported(f"no {tier} tier for {type_} resources")
    backend: Backend = cls(settings)
    return backend
