"""How a crawl job looks: Syttra's top-level fields beside the common job fields."""

from __future__ import annotations

from typing import Any

from store.models import Job


def crawl_fields(job: Job) -> dict[str, Any]:
    """Syttra's top-level fields of a crawl job (the same numbers as ``progress``)."""
    progress = job.progress or {}
    return {
        "url": job.input.get("url") or (job.input.get("urls") or [None])[0],
        "mode": job.input.get("mode", "single"),
        "pages_discovered": int(progress.get("pages_discovered", 0)),
        "pages_crawled": int(progress.get("pages_crawled", 0)),
        "pages_failed": int(progress.get("pages_failed", 0)),
    }
