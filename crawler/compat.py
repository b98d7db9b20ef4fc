"""Firecrawl's request and document shapes, translated to and from Conveyor's own.

``POST /v1/scrape``, ``/v1/map`` and Firecrawl's ``/v2/scrape|map|crawl`` take these bodies
(each field in Firecrawl's camelCase or Conveyor's snake_case; Firecrawl options that change
nothing here are ignored) and turn them into ``crawl`` and ``map`` job inputs; page records come
back as Firecrawl documents (``markdown``, ``html``, ``links``, ``screenshot``, ``metadata``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from common.errors import ValidationFailed
from crawler.schemas import DEFAULT_MAX_PAGES, MAX_MAP_LINKS, RenderMode

#: Firecrawl format → the crawl's export format that produces it.
FORMATS: dict[str, str] = {
    "markdown": "markdown",
    "html": "html",
    "rawHtml": "html",
    "links": "links",
    "screenshot": "screenshot",
    "screenshot@fullPage": "screenshot",
}
#: Firecrawl's crawl status words.
STATUS_WORDS: dict[str, str] = {
    "queued": "scraping",
    "running": "scraping",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


class _Body(BaseModel):
    """Both spellings of every field (``onlyMainContent`` or ``only_main_content``)."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="ignore"
    )


class ScrapeOptions(_Body):
    formats: list[str | dict[str, Any]] = Field(
        default_factory=lambda: list[str | dict[str, Any]](["markdown"]),
        description="markdown, html, rawHtml, links, screenshot (strings or {type: …}).",
    )
    only_main_content: bool = True
    include_tags: list[str] = Field(default_factory=list, max_length=50)
    exclude_tags: list[str] = Field(default_factory=list, max_length=50)
    wait_for: int = Field(default=0, ge=0, le=60_000, description="Milliseconds.")
    timeout: int = Field(default=30_000, ge=1_000, le=300_000, description="Milliseconds.")
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)
    render: RenderMode = "auto"

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for item in value:
            name = item if isinstance(item, str) else str(item.get("type", ""))
            if name not in FORMATS:
                raise ValueError(f"unsupported format {name!r} (supported: {', '.join(FORMATS)})")
        return value

    def format_names(self) -> list[str]:
        names = [f if isinstance(f, str) else str(f["type"]) for f in self.formats]
        return list(dict.fromkeys(names)) or ["markdown"]

    def page_input(self) -> dict[str, Any]:
        """The crawl input fields that say how each page is fetched and converted."""
        exports = list(dict.fromkeys(FORMATS[name] for name in self.format_names()))
        return {
            "export_formats": exports,
            "only_main_content": self.only_main_content,
            "include_tags": self.include_tags,
            "exclude_tags": self.exclude_tags,
            "wait_for_ms": self.wait_for,
            # ``timeout`` bounds the wait for the answer; the job's page goes on past it.
            "timeout_ms": min(max(self.timeout, 30_000), 120_000),
            "headers": self.headers,
            "render": self.render,
        }


class ScrapeBody(ScrapeOptions):
    """``POST /v1/scrape`` (and Firecrawl's ``/v2/scrape``): one page, answered synchronously."""

    url: str

    def crawl_input(self) -> dict[str, Any]:
        return {"url": self.url, "mode": "single", **self.page_input()}


class MapBody(_Body):
    """``POST /v1/map`` (and ``/v2/map``): a site's URLs, fast."""

    url: str
    search: str | None = None
    include_subdomains: bool = False
    limit: int = Field(default=5000, ge=1, le=MAX_MAP_LINKS)
    use_sitemap: bool | None = None
    sitemap: Literal["include", "skip", "only"] = "include"
    ignore_query_parameters: bool = True
    timeout: int = Field(default=30_000, ge=1_000, le=120_000, description="Milliseconds.")

    def map_input(self) -> dict[str, Any]:
        use_sitemap = self.sitemap != "skip" if self.use_sitemap is None else self.use_sitemap
        return {
            "url": self.url,
            "search": self.search,
            "include_subdomains": self.include_subdomains,
            "limit": self.limit,
            "use_sitemap": use_sitemap,
            "ignore_query_params": self.ignore_query_parameters,
            "timeout_ms": self.timeout,
        }


class CrawlBody(_Body):
    """Firecrawl's ``POST /v2/crawl``: a full-site crawl job."""

    url: str
    limit: int = Field(default=DEFAULT_MAX_PAGES, ge=1, le=10**6)
    include_paths: list[str] = Field(default_factory=list, max_length=50)
    exclude_paths: list[str] = Field(default_factory=list, max_length=50)
    max_discovery_depth: int | None = Field(default=None, ge=0, le=100)
    sitemap: Literal["include", "skip", "only"] = "include"
    ignore_query_parameters: bool = False
    allow_subdomains: bool = False
    ignore_robots_txt: bool = False
    scrape_options: ScrapeOptions = Field(default_factory=ScrapeOptions)
    webhook: str | dict[str, Any] | None = None

    def crawl_input(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "url": self.url,
            "mode": "full",
            "max_pages": self.limit,
            "max_depth": self.max_discovery_depth,
            "include_paths": self.include_paths,
            "exclude_paths": self.exclude_paths,
            "allow_subdomains": self.allow_subdomains,
            "ignore_query_params": self.ignore_query_parameters,
            "respect_robots": not self.ignore_robots_txt,
            "use_sitemap": self.sitemap != "skip",
            **self.scrape_options.page_input(),
        }
        if self.webhook is not None:
            url = self.webhook if isinstance(self.webhook, str) else self.webhook.get("url")
            if not isinstance(url, str):
                raise ValidationFailed(
                    "The webhook needs a url.",
                    details=[{"loc": ["body", "webhook"], "msg": "needs a url", "type": "missing"}],
                )
            out["webhook"] = {"url": url}
        return out


def document(record: dict[str, Any], formats: list[str]) -> dict[str, Any]:
    """A page record as a Firecrawl document: the requested formats and the page's metadata
    (Conveyor's snake_case keys and Firecrawl's ``sourceURL``/``statusCode``/``contentType``)."""
    meta = dict(record.get("metadata") or {})
    meta.setdefault("source_url", record.get("url"))
    meta.setdefault("url", record.get("final_url"))
    meta.setdefault("status_code", record.get("status_code"))
    for key in ("title", "description", "language"):
        meta.setdefault(key, record.get(key, ""))
    meta.update(
        sourceURL=meta["source_url"],
        statusCode=meta["status_code"],
        contentType=meta.get("content_type", ""),
    )
    doc: dict[str, Any] = {"metadata": meta}
    wanted = set(formats) if formats else {"markdown"}
    if "markdown" in wanted:
        doc["markdown"] = record.get("markdown", "")
    if "html" in wanted:
        doc["html"] = record.get("html")
    if "rawHtml" in wanted:
        doc["rawHtml"] = record.get("html")
    if "links" in wanted:
        doc["links"] = record.get("links", [])
    if wanted & {"screenshot", "screenshot@fullPage"} and record.get("screenshot"):
        doc["screenshot"] = "data:image/png;base64," + str(record["screenshot"])
    return doc


def formats_of(crawl_input: dict[str, Any]) -> list[str]:
    """The Firecrawl formats a crawl job's pages are shown in (from its export formats)."""
    exports = crawl_input.get("export_formats") or ["markdown"]
    return [name for name in ("markdown", "html", "links", "screenshot") if name in exports]
