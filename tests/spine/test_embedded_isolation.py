"""Each data dir owns its embedded broker: a Redis already listening on the configured port
(somebody else's, or another instance's) is never joined, and a data dir finds its own broker
again by the URL it recorded."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import Settings
from workers.embedded import (
    ensure_embedded_broker,
    owned_by,
    recorded_url,
    redis_server_binary,
    stop_embedded_broker,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[int]:
    """Somebody else's Redis on a port an instance is configured to use."""
    port = _free_port()
    elsewhere = tmp_path / "foreign"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--dir", str(elsewhere), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_a_foreign_redis_on_the_port_is_never_joined(tmp_path: Path, foreign_redis: int) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first = Settings(data_dir=first_dir, broker_url="", embedded_redis_port=foreign_redis)
    second = Settings(data_dir=second_dir, broker_url="", embedded_redis_port=foreign_redis)
    try:
        url = ensure_embedded_broker(first)
        assert not url.endswith(f":{foreign_redis}/0")  # not the foreign one
        assert owned_by(url, first_dir) and recorded_url(first_dir.resolve()) == url
        other = ensure_embedded_broker(second)  # a second instance beside the first
        assert other != url and owned_by(other, second_dir)
        assert not owned_by(url, second_dir)
        assert ensure_embedded_broker(first) == url  # found again by what it recorded
        redis.Redis.from_url(url).lpush("maintenance", b"first's message")
        assert redis.Redis.from_url(other).llen("maintenance") == 0
    finally:
        stop_embedded_broker(first_dir)
        stop_embedded_broker(second_dir)
    assert redis.Redis(port=foreign_redis).ping()  # the foreign Redis was left alone
