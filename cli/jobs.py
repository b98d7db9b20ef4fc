"""``conveyor jobs``: list, show, submit, wait for, cancel, delete and download jobs through the
REST API.

``conveyor jobs wait ID`` exits by outcome: 0 completed, 1 failed, 3 cancelled, 124 still
running when ``--timeout`` passed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.client import api_client, call, fail, page_or_print

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
    page = page_or_print(response, as_json=as_json)
    if page is None:
        return
    table = Table(box=None, pad_edge=False)  # ids first and never cut: fits 80 columns
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("kind", no_wrap=True, min_width=11)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("created", no_wrap=True, min_width=16)
    table.add_column("progress", overflow="fold")
    for job in page["data"]:
        created = str(job["created_at"]).replace("T", " ")[:16]
        progress = json.dumps(job["progress"], separators=(",", ":"))
        table.add_row(job["id"], job["kind"], job["status"], created, progress)
    out.print(table)
    if page["next_cursor"]:
        out.print(f"next page: --cursor {page['next_cursor']}")


@jobs_app.command("get")
def get_job(job_id: str) -> None:
    """Show one job as JSON."""
    print(json.dumps(call("GET", f"/v1/jobs/{job_id}", 200).json(), indent=2))


#: Where ``jobs submit`` sends each kind a user submits directly.
SUBMIT_ROUTES = {"crawl": "/v1/crawls", "diagnostics": "/v1/diagnostics/sleep"}
#: ``jobs wait`` exit codes by outcome.
EXIT_CODES = {"completed": 0, "failed": 1, "cancelled": 3}
WAIT_TIMED_OUT = 124


@jobs_app.command("submit")
def submit_job(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(SUBMIT_ROUTES)}.")],
    input: Annotated[str, typer.Option("--input", help="The job's input as JSON.")] = "{}",
) -> None:
    """Create a job and print it as JSON (its id is `.id`)."""
    route = SUBMIT_ROUTES.get(kind)
    if route is None:
        raise typer.BadParameter(
            f"kind must be one of {', '.join(SUBMIT_ROUTES)}", param_hint="KIND"
        )
    try:
        body = json.loads(input)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc
    response = call("POST", route, 202, json=body)
    print(json.dumps(response.json(), indent=2))


@jobs_app.command("wait")
def wait_job(
    job_id: str,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Wait until a job ends, showing its progress; exit 0 completed, 1 failed, 3 cancelled,
    124 when --timeout passed first."""
    deadline = time.monotonic() + timeout
    job: dict[str, object] = {}
    with (
        api_client() as client,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counters]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=quiet,
        ) as bar,
    ):
        task = bar.add_task(job_id, total=None, counters="")
        while True:
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code != 200:
                fail(response)
            job = response.json()
            done, total = _progress_of(job.get("progress"))
            bar.update(
                task,
                description=f"{job_id} {job['status']}",
                completed=done,
                total=total,
                counters=json.dumps(job.get("progress") or {}),
            )
            if job["status"] in EXIT_CODES or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    print(json.dumps(job, indent=2))
    raise typer.Exit(EXIT_CODES.get(str(job.get("status")), WAIT_TIMED_OUT))


def _progress_of(progress: object) -> tuple[float, float | None]:
    """(done, total) from a job's counters, when it reports a total."""
    if not isinstance(progress, dict):
        return 0.0, None
    for done_key, total_key in (
        ("steps_done", "steps_total"),
        ("pages_crawled", "pages_discovered"),
    ):
        total = progress.get(total_key)
        if isinstance(total, int | float) and total > 0:
            return float(progress.get(done_key) or 0), float(total)
    return 0.0, None


@jobs_app.command("cancel")
def cancel_job(job_id: str) -> None:
    """Cancel a queued or running job."""
    response = call("POST", f"/v1/jobs/{job_id}/cancel", 200)
    print(response.json()["status"])


@jobs_app.command("delete")
def delete_job(job_id: str) -> None:
    """Cancel an active job, or delete a finished job's result."""
    call("DELETE", f"/v1/jobs/{job_id}", 204)


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
