"""The HTTP client of the client commands (``conveyor jobs …``, ``conveyor crawl …``).

The API URL and key come from ``CONVEYOR_API_URL`` and ``CONVEYOR_API_KEY``; when unset, from
``<data dir>/credentials``, which ``conveyor up`` writes (mode 0600). An API that cannot be
reached is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from config import get_settings

err = Console(stderr=True, soft_wrap=True)  # one message, one line
CREDENTIALS_FILE = "credentials"


def credentials_path() -> Path:
    return get_settings().data_dir / CREDENTIALS_FILE


def read_credentials(path: Path | None = None) -> dict[str, str]:
    """``KEY=value`` lines of the credentials file (empty when there is none)."""
    path = path or credentials_path()
    try:
        text = path.read_text()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def write_credentials(api_url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the URL and key client commands use (0600: the key is a secret)."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as sink:
        sink.write(f"CONVEYOR_API_URL={api_url}\nCONVEYOR_API_KEY={api_key}\n")
    os.chmod(path, 0o600)
    return path


def api_target() -> tuple[str, str]:
    """The API URL and key: the environment first, then the credentials file."""
    saved = read_credentials()
    settings = get_settings()
    url = os.environ.get("CONVEYOR_API_URL") or saved.get("CONVEYOR_API_URL") or settings.api_url
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return url.rstrip("/"), key or saved.get("CONVEYOR_API_KEY", "")


class ApiClient(httpx.Client):
    """An ``httpx.Client`` whose transport failures end the command with one line."""

    def send(self, request: httpx.Request, *args: Any, **kwargs: Any) -> httpx.Response:
        try:
            return super().send(request, *args, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, httpx.ConnectError) and "refused" in reason.lower():
                reason = "connection refused"
            err.print(f"[red]cannot reach the API at {self.base_url}: {reason}[/red]")
            raise typer.Exit(2) from None


def api_client() -> httpx.Client:
    url, key = api_target()
    if not key:
        err.print(
            "[red]No API key: set CONVEYOR_API_KEY, start the platform with `conveyor up` "
            "(it writes one to the data dir's credentials file), or create one with "
            "`conveyor keys create --org NAME`.[/red]"
        )
        raise typer.Exit(2)
    return ApiClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
    )


def page_or_print(response: httpx.Response, *, as_json: bool) -> dict[str, Any] | None:
    """A list page's body, or None once it was printed raw (``--json``); an error exits 1."""
    if response.status_code != 200:
        fail(response)
    page: dict[str, Any] = response.json()
    if as_json:
        print(json.dumps(page, indent=2))
        return None
    return page


def call(method: str, path: str, expect: int, **kwargs: Any) -> httpx.Response:
    """One request to the API; exit with the error envelope's line unless it answers
    ``expect``."""
    with api_client() as client:
        response = client.request(method, path, **kwargs)
    if response.status_code != expect:
        fail(response)
    return response


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
