"""``conveyor crawl URL``: start a crawl through the REST API, follow it, download the result.

Reads ``CONVEYOR_API_URL`` and ``CONVEYOR_API_KEY``. With ``--wait`` a progress bar shows
pages crawled out of pages discovered; Ctrl-C cancels the job (its finished pages are kept).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import api_client as _client
from cli.client import err
from cli.client import fail as _fail

TERMINAL = ("completed", "failed", "cancelled")


def _follow(client: httpx.Client, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Poll the job with a progress bar until it finishes; Ctrl-C cancels it."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pages · {task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    delay = 0.3
    with Progress(*columns, console=err, transient=False, disable=quiet) as bar:
        task = bar.add_task(job["status"], total=None, failed=0)
        try:
            while job["status"] not in TERMINAL:
                time.sleep(delay)
                delay = min(delay * 1.5, 3.0)
                response = client.get(f"/v1/jobs/{job['id']}")
                if response.status_code != 200:
                    _fail(response)
                job = response.json()
                discovered = max(job.get("pages_discovered", 0), job.get("pages_crawled", 0))
                bar.update(
                    task,
                    description=job["status"],
                    completed=job.get("pages_crawled", 0),
                    total=discovered or None,
                    failed=job.get("pages_failed", 0),
                )
        except KeyboardInterrupt:
            client.post(f"/v1/jobs/{job['id']}/cancel")
            err.print(f"[yellow]Cancelled {job['id']}; finished pages are kept.[/yellow]")
            raise typer.Exit(130) from None
    return job


def crawl(
    url: Annotated[str, typer.Argument(help="Start URL.")],
    mode: Annotated[str, typer.Option(help="single | full | select")] = "single",
    max_pages: Annotated[int | None, typer.Option(help="Page budget (full).")] = None,
    max_depth: Annotated[int | None, typer.Option(help="Link depth (full).")] = None,
    render: Annotated[str, typer.Option(help="auto | always | never")] = "auto",
    include: Annotated[list[str] | None, typer.Option(help="Path regex to include.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Path regex to exclude.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown | json | html | text")] = (
        "markdown"
    ),
    wait: Annotated[bool, typer.Option(help="Wait and download the result.")] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (- : stdout).")
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", help="No progress bar.")] = False,
) -> None:
    """Crawl a page or a site into Markdown through the Conveyor API."""
    body: dict[str, Any] = {"mode": mode, "render": render}
    if mode == "select":
        body["urls"] = [u for u in url.split(",") if u]
    else:
        body["url"] = url
    for key, value in (
        ("max_pages", max_pages),
        ("max_depth", max_depth),
        ("include_paths", include),
        ("exclude_paths", exclude),
    ):
        if value:
            body[key] = value
    if fmt not in ("markdown", "json"):
        body["export_formats"] = ["markdown", fmt]
    with _client() as client:
        response = client.post("/v1/crawls", json=body)
        if response.status_code != 202:
            _fail(response)
        job = response.json()
        err.print(f"Job [bold]{job['id']}[/bold] {job['status']}")
        if not wait and output is None:
            typer.echo(job["id"])
            return
        job = _follow(client, job, quiet)
        if job["status"] == "failed":
            err.print(f"[red]Failed: {job['error']}[/red]")
        err.print(
            f"{job['status']}: {job.get('pages_crawled', 0)} crawled, "
            f"{job.get('pages_failed', 0)} failed, {job.get('pages_discovered', 0)} discovered"
        )
        if output is None and not wait:
            return
        with client.stream("GET", f"/v1/jobs/{job['id']}/result", params={"format": fmt}) as res:
            if res.status_code != 200:
                res.read()
                _fail(res)
            if output is None or str(output) == "-":
                for chunk in res.iter_bytes():
                    sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                with output.open("wb") as fh:
                    for chunk in res.iter_bytes():
                        fh.write(chunk)
                err.print(f"Wrote {output}")
        if job["status"] == "failed":
            raise typer.Exit(1)
