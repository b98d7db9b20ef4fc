"""The anchor of ``api_poll``: a bare FastAPI endpoint doing one primary-key SELECT of a job row
on the same database, engine and pool settings as Conveyor, served by the same uvicorn settings.

``uvicorn benchmarks.bare_app:app``
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import select

from store.db import get_engine
from store.models import Job

app = FastAPI()
jobs = Job.__table__


@app.get("/bare/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/bare/jobs/{job_id}")
def get_job(job_id: str) -> dict[str, Any]:
    with get_engine().connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise HTTPException(status_code=404)
    return dict(row)
