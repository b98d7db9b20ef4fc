"""Tunables of the crawl engine, in one frozen dataclass built from the settings class."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_USER_AGENT = "ConveyorBot/0.1 (+https://github.com/conveyor/conveyor; crawl-to-markdown)"
ROBOTS_AGENT = "ConveyorBot"


@dataclass(frozen=True)
class CrawlConfig:
    """Everything the fetcher, renderer and frontier need; defaults match config.settings."""

    allowed_hosts: str = ""
    user_agent: str = DEFAULT_USER_AGENT
    max_body_bytes: int = 10 * 1024 * 1024
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    max_redirects: int = 10
    max_retries: int = 2
    retry_backoff_s: float = 0.5
    max_retry_after_s: float = 30.0
    max_connections: int = 64
    per_host_concurrency: int = 8
    global_concurrency: int = 32
    per_host_delay_s: float = 0.0
    render_pool_size: int = 4
    render_timeout_ms: int = 30_000
    chromium_path: str = "/usr/bin/chromium"

    @classmethod
    def from_settings(cls) -> CrawlConfig:
        """Build from ``config.settings`` (the ``crawl_*`` fields), falling back to defaults."""
        from config.settings import get_settings

        settings = get_settings()
        values = {}
        for name in cls.__dataclass_fields__:
            attr = f"crawl_{name}"
            if hasattr(settings, attr):
                values[name] = getattr(settings, attr)
        return cls(**values)


CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
