"""Tunables of the crawl engine: the ``crawl_*`` settings narrowed into one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields

from config import Settings, default, get_settings

ROBOTS_AGENT = "ConveyorBot"


@dataclass(frozen=True)
class CrawlConfig:
    """Everything the fetcher, renderer and frontier need. Field ``x`` is setting ``crawl_x``;
    the defaults are the settings' own (tests build one without the environment)."""

    allowed_hosts: str = default("crawl_allowed_hosts")
    user_agent: str = default("crawl_user_agent")
    max_body_bytes: int = default("crawl_max_body_bytes")
    connect_timeout_s: float = default("crawl_connect_timeout_s")
    read_timeout_s: float = default("crawl_read_timeout_s")
    max_redirects: int = default("crawl_max_redirects")
    max_retries: int = default("crawl_max_retries")
    retry_backoff_s: float = default("crawl_retry_backoff_s")
    max_retry_after_s: float = default("crawl_max_retry_after_s")
    max_connections: int = default("crawl_max_connections")
    per_host_concurrency: int = default("crawl_per_host_concurrency")
    global_concurrency: int = default("crawl_global_concurrency")
    per_host_delay_s: float = default("crawl_per_host_delay_s")
    render_pool_size: int = default("crawl_render_pool_size")
    convert_processes: int = default("crawl_convert_processes")
    render_timeout_ms: int = default("crawl_render_timeout_ms")
    chromium_path: str = default("crawl_chromium_path")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CrawlConfig:
        """The ``crawl_*`` fields of ``settings`` (default: this process's settings)."""
        settings = settings or get_settings()
        return cls(**{f.name: getattr(settings, f"crawl_{f.name}") for f in fields(cls)})


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
