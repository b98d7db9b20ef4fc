"""Pydantic shapes of the crawl domain: the crawl request (job input) and the page record."""

from __future__ import annotations

import re
from typing import Any, Literal

from cssselect import GenericTranslator, SelectorError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from webhooks.schemas import WithWebhook

Mode = Literal["single", "full", "select"]
RenderMode = Literal["auto", "always", "never"]
ExportFormat = Literal["markdown", "html", "text", "links", "json", "screenshot"]
EXPORT_FORMATS: tuple[str, ...] = ("markdown", "html", "text", "links", "json", "screenshot")
MAX_SELECT_URLS = 1000
DEFAULT_MAX_PAGES = 100


def _http_url(value: str) -> str:
    value = value.strip()
    if not re.match(r"^https?://[^/\s?#]+", value, re.IGNORECASE):
        raise ValueError("must be an absolute http:// or https:// URL")
    if len(value) > 2048:
        raise ValueError("must be at most 2048 characters")
    return value


class CrawlRequest(WithWebhook):
    """``POST /v1/crawls`` body and the ``crawl`` job's input."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="Start URL (single, full).")
    mode: Mode = "single"
    urls: list[str] = Field(default_factory=list, max_length=MAX_SELECT_URLS)
    max_pages: int = Field(default=DEFAULT_MAX_PAGES, ge=1, le=10**6)
    max_depth: int | None = Field(default=None, ge=0, le=100)
    include_paths: list[str] = Field(default_factory=list, max_length=50)
    exclude_paths: list[str] = Field(default_factory=list, max_length=50)
    allow_subdomains: bool = False
    ignore_query_params: bool = False
    respect_robots: bool = True
    use_sitemap: bool = True
    render: RenderMode = "auto"
    wait_for_ms: int = Field(default=0, ge=0, le=60_000)
    timeout_ms: int = Field(default=30_000, ge=1_000, le=120_000)
    export_formats: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["markdown"]), min_length=1
    )
    only_main_content: bool = True
    include_tags: list[str] = Field(default_factory=list, max_length=50)
    exclude_tags: list[str] = Field(default_factory=list, max_length=50)
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_http_url(v) for v in value))

    @field_validator("include_paths", "exclude_paths")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return value

    @field_validator("include_tags", "exclude_tags")
    @classmethod
    def _selectors(cls, value: list[str]) -> list[str]:
        for css in value:
            try:
                GenericTranslator().css_to_xpath(css)
            except SelectorError as exc:
                raise ValueError(f"invalid CSS selector {css!r}: {exc}") from exc
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                raise ValueError(f"the {name} header cannot be set")
            if "\n" in content or "\r" in content:
                raise ValueError(f"header {name} has a line break")
        return value

    @field_validator("export_formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _mode_fields(self) -> CrawlRequest:
        if self.mode == "select":
            if not self.urls:
                raise ValueError("mode 'select' needs a non-empty 'urls' list")
        elif self.url is None:
            raise ValueError(f"mode {self.mode!r} needs 'url'")
        elif self.urls:
            raise ValueError("'urls' is only used with mode 'select'")
        return self

    @property
    def start_url(self) -> str:
        return self.url or self.urls[0]

    @property
    def page_budget(self) -> int:
        if self.mode == "single":
            return 1
        if self.mode == "select":
            return min(self.max_pages, len(self.urls))
        return self.max_pages

    def wants(self, fmt: str) -> bool:
        return fmt in self.export_formats


MAX_MAP_LINKS = 30_000


class MapRequest(BaseModel):
    """The ``map`` job's input: a site's URLs from its sitemaps and its links (no conversion)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where discovery starts.")
    search: str | None = Field(
        default=None, max_length=500, description="Keep only URLs containing this text."
    )
    include_subdomains: bool = False
    limit: int = Field(default=5000, ge=1, le=MAX_MAP_LINKS)
    use_sitemap: bool = True
    ignore_query_params: bool = True
    timeout_ms: int = Field(default=30_000, ge=1_000, le=120_000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class PageMetadata(BaseModel):
    """What a page is, on every page record (Firecrawl's ``metadata``, snake_case)."""

    title: str = ""
    description: str = ""
    language: str = ""
    source_url: str = Field(description="The URL that was asked for.")
    url: str = Field(description="The URL the page was served from (after redirects).")
    status_code: int | None = None
    content_type: str = ""


class PageRecord(BaseModel):
    """One crawled page as stored and as streamed by ``format=json``."""

    url: str
    final_url: str
    status_code: int | None
    title: str = ""
    description: str = ""
    language: str = ""
    markdown: str = ""
    html: str | None = None
    text: str | None = None
    links: list[str] = Field(default_factory=list)
    screenshot: str | None = Field(default=None, description="Base64 PNG (format screenshot).")
    fetched_at: str
    rendered: bool = False
    depth: int = 0
    metadata: PageMetadata | None = None

    def public(self) -> dict[str, Any]:
        """The NDJSON record: requested formats only (None fields dropped)."""
        return self.model_dump(exclude_none=True)


class CrawlProblem(BaseModel):
    """A URL that failed or was skipped (``GET /v1/jobs/{id}/errors``)."""

    url: str
    status: Literal["failed", "skipped"]
    reason: str | None = Field(
        description="http_error, too_large, unsafe_url, redirect_loop, too_many_redirects, "
        "timeout, connection_error, render_failed, robots_blocked, duplicate_content, "
        "unsupported_content_type"
    )
    message: str | None
    status_code: int | None
    final_url: str | None
    robots_blocked: bool
