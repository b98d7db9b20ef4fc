"""RAG tasks: ``ingest.run`` (load, chunk, embed and index a dataset's files or a crawl's
pages); the work is ``rag.jobs``.

From Python: ``from tasks.rag import ingest; ingest.submit({"dataset_id": ..., "file_ids": [...]},
org="acme")``.
"""

from __future__ import annotations

from typing import Any

from jobs.context import JobContext
from rag.jobs import run_ingest
from tasks.runner import job_task


@job_task("ingest")
def ingest(ctx: JobContext) -> dict[str, Any]:
    """Index a dataset's pending files (or a finished crawl's pages)."""
    return run_ingest(ctx)
