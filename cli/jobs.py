"""``conveyor jobs``: list, show, cancel, delete and download jobs through the REST API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.client import api_client, fail

jobs_app = typer.Typer(help="Jobs: list, show, cancel, delete, download results.")
out = Console()


@jobs_app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="e.g. running,queued")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw page.")] = False,
) -> None:
    """One page of your jobs, newest first."""
    params = {k: v for k, v in {"status": status, "kind": kind, "cursor": cursor}.items() if v}
    with api_client() as client:
        response = client.get("/v1/jobs", params={**params, "limit": limit})
    if response.status_code != 200:
        fail(response)
    page = response.json()
    if as_json:
        print(json.dumps(page, indent=2))
        return
    table = Table("id", "kind", "status", "created_at", "progress")
    for job in page["data"]:
        table.add_row(
            job["id"], job["kind"], job["status"], job["created_at"], json.dumps(job["progress"])
        )
    out.print(table)
    if page["next_cursor"]:
        out.print(f"next page: --cursor {page['next_cursor']}")


@jobs_app.command("get")
def get_job(job_id: str) -> None:
    """Show one job as JSON."""
    with api_client() as client:
        response = client.get(f"/v1/jobs/{job_id}")
    if response.status_code != 200:
        fail(response)
    print(json.dumps(response.json(), indent=2))


@jobs_app.command("cancel")
def cancel_job(job_id: str) -> None:
    """Cancel a queued or running job."""
    with api_client() as client:
        response = client.post(f"/v1/jobs/{job_id}/cancel")
    if response.status_code != 200:
        fail(response)
    print(response.json()["status"])


@jobs_app.command("delete")
def delete_job(job_id: str) -> None:
    """Cancel an active job, or delete a finished job's result."""
    with api_client() as client:
        response = client.delete(f"/v1/jobs/{job_id}")
    if response.status_code != 204:
        fail(response)


@jobs_app.command("result")
def download_result(
    job_id: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (default stdout).")
    ] = None,
    format: Annotated[str | None, typer.Option(help="Result format, e.g. markdown, json.")] = None,
) -> None:
    """Stream a job's result to a file or stdout."""
    params = {"format": format} if format else {}
    with (
        api_client() as client,
        client.stream("GET", f"/v1/jobs/{job_id}/result", params=params) as response,
    ):
        if response.status_code != 200:
            response.read()
            fail(response)
        sink = output.open("wb") if output else sys.stdout.buffer
        try:
            for chunk in response.iter_bytes():
                sink.write(chunk)
        finally:
            if output:
                sink.close()
