"""The HTTP client of the client commands (``conveyor jobs …``, ``conveyor crawl …``).

Reads ``CONVEYOR_API_URL`` (default http://127.0.0.1:8000) and ``CONVEYOR_API_KEY``.
"""

from __future__ import annotations

import json
from typing import NoReturn

import httpx
import typer
from rich.console import Console

from config import get_settings

err = Console(stderr=True)


def api_client() -> httpx.Client:
    settings = get_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if not key:
        err.print("[red]Set CONVEYOR_API_KEY (create one with `conveyor keys create`).[/red]")
        raise typer.Exit(2)
    return httpx.Client(
        base_url=settings.api_url.rstrip("/"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
    )


def fail(response: httpx.Response) -> NoReturn:
    """Print the error envelope's code and message and exit 1."""
    try:
        error = response.json()["error"]
        message = f"{error['code']}: {error['message']}"
        if error.get("details"):
            message += f" {json.dumps(error['details'])}"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    err.print(f"[red]{message}[/red]")
    raise typer.Exit(1)
