"""``conveyor``: process commands (up, api, worker, beat, flower, migrate) and admin commands.

Process commands start the embedded broker first when ``CONVEYOR_BROKER_URL`` is not set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cli.billing import app as billing_app
from cli.crawl import crawl as crawl_command
from cli.jobs import jobs_app
from cli.orgs import app as orgs_app
from cli.orgs import require_store
from common.timeutil import utcnow
from config import Settings, get_settings
from config.queues import QUEUES, WORKER_GROUPS

app = typer.Typer(help="Conveyor: a self-hosted job platform.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
app.add_typer(orgs_app, name="orgs")
app.add_typer(billing_app, name="billing")
app.command(name="crawl")(crawl_command)
err = Console(stderr=True, soft_wrap=True)  # one message, one line


def _prepare() -> None:
    """Data dir and, when no broker URL is configured, the data dir's own embedded broker,
    whose URL this process and its children then use."""
    from workers.embedded import ensure_embedded_broker, use_broker

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.embedded_broker:
        use_broker(ensure_embedded_broker(settings))


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.app", *args]


def worker_command(
    group: str | None, queues: list[str] | None, concurrency: int | None
) -> list[str]:
    settings = get_settings()
    if group:
        spec = WORKER_GROUPS[group]
        queues, pool, conc = list(spec.queues), spec.pool, spec.concurrency
    else:
        pool, conc = "prefork", 2
    conc = concurrency or settings.worker_concurrency or conc
    name = f"{group or 'worker'}-{os.getpid()}@%h"
    return _celery(
        "worker",
        "-Q",
        ",".join(queues or QUEUES),
        "-P",
        pool,
        "-c",
        str(conc),
        "-n",
        name,
        "-l",
        settings.log_level,
        "-E",
    )


def worker_env(group: str | None) -> dict[str, str]:
    """A worker's environment: a group with its own ``task_modules`` imports only those."""
    env = dict(os.environ)
    env.pop("CONVEYOR_WORKER_TASK_MODULES", None)
    modules = WORKER_GROUPS[group].task_modules if group else ()
    if modules:
        env["CONVEYOR_WORKER_TASK_MODULES"] = ",".join(modules)
    return env


def flower_command() -> tuple[list[str], dict[str, str]]:
    settings = get_settings()
    # A busy box answers Flower's remote-control inspect slowly: give it time (ms).
    args = ["flower", f"--port={settings.flower_port}", "--inspect_timeout=5000"]
    env = dict(os.environ)
    password = settings.flower_password.get_secret_value()
    if settings.flower_user or password:
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
        args.append("--address=0.0.0.0")
    else:
        # Embedded default: loopback only, no auth, API enabled.
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        args.append("--address=127.0.0.1")
    return _celery(*args), env


def api_command() -> list[str]:
    settings = get_settings()
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.app:create_app",
        "--factory",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--no-access-log",
        *settings.uvicorn_ws_options(),
    ]


def embedded_s3_command() -> list[str] | None:
    """The embedded default's S3 server for blob resources (``resources.s3server``), when no
    ``CONVEYOR_RESOURCES_S3_ENDPOINT_URL`` is set: the API and the workers find its URL in the
    data dir. None when an endpoint is configured."""
    settings = get_settings()
    if settings.resources_s3_endpoint_url:
        return None
    return [sys.executable, "-m", "resources.s3server", "--data-dir", str(settings.data_dir)]


def beat_command() -> list[str]:
    settings = get_settings()
    return _celery("beat", "-S", "workers.beat:ResilientRedBeatScheduler", "-l", settings.log_level)


def _exec(cmd: list[str], env: dict[str, str] | None = None) -> None:
    _prepare()
    os.execvpe(cmd[0], cmd, env or dict(os.environ))


@app.command()
def migrate() -> None:
    """Create or upgrade the store's tables (and its PostgreSQL database when missing)."""
    from common.errors import Unavailable
    from store.migrate import ensure_database, upgrade

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    try:
        created = ensure_database()
    except Unavailable as exc:
        err.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from None
    if created:
        err.print(f"created database {created!r}")
    upgrade()
    err.print("[green]store migrated[/green]")


@app.command()
def api() -> None:
    """Run the HTTP API (uvicorn)."""
    _exec(api_command())


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues.")] = None,
    group: Annotated[str | None, typer.Option(help=f"One of {', '.join(WORKER_GROUPS)}.")] = None,
    concurrency: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Run a Celery worker on some queues (default: all)."""
    _exec(
        worker_command(group, queues.split(",") if queues else None, concurrency),
        worker_env(group),
    )


@app.command()
def beat() -> None:
    """Run Celery beat (one scheduler at a time, locked in Redis by redbeat)."""
    _exec(beat_command())


@app.command(name="kube-watch")
def kube_watch() -> None:
    """Watch Deployments, pods and events (Kubernetes backend); reconcile each change at once.

    Run one per cluster (a single-replica Deployment); the beat reconciler stays the resync.
    """
    import logging

    from deployments.jobs import reconcile_one
    from deployments.watch import serve_watch

    logging.basicConfig(level=get_settings().log_level.upper())
    serve_watch(reconcile_one)


@app.command()
def flower() -> None:
    """Run the Flower monitoring UI."""
    cmd, env = flower_command()
    _exec(cmd, env)


def _create_key(
    org: str, name: str, scopes: list[str] | None = None, expires_at: datetime | None = None
) -> str:
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        organisation = orgs.get_or_create_org(session, org)
        return orgs.create_key(
            session, organisation.id, name=name, scopes=scopes, expires_at=expires_at
        ).raw


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``30d``, ``2w`` (a bare number: seconds)."""
    raw = text.strip().lower()
    unit = raw[-1] if raw and raw[-1] in _DURATION else "s"
    number = raw[:-1] if raw and raw[-1] in _DURATION else raw
    try:
        value = float(number)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use e.g. 90s, 30m, 12h, 30d or 2w") from None
    if value <= 0:
        raise typer.BadParameter(f"{text!r}: must be positive")
    return timedelta(seconds=value * _DURATION[unit])


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation name (created if needed).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "cli",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="A scope, e.g. jobs:read or deployments:write (repeatable); none: every scope.",
        ),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="e.g. 12h, 30d: the key stops then.")
    ] = None,
) -> None:
    """Create an API key of the organisation's service account and print it (alone, on
    stdout). It is never shown again."""
    from access.scopes import ALL_SCOPES, is_scope

    unknown = [s for s in scope or [] if not is_scope(s)]
    if unknown:
        raise typer.BadParameter(
            f"unknown scope {unknown[0]!r}; use one of {', '.join(ALL_SCOPES)}",
            param_hint="--scope",
        )
    expires_at = utcnow() + parse_duration(expires_in) if expires_in else None
    require_store()
    print(_create_key(org, name, sorted(set(scope)) if scope else None, expires_at))


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw page.")] = False,
) -> None:
    """Your organisation's keys (through the API, with the key in use)."""
    from cli.client import api_client, page_or_print

    with api_client() as client:
        response = client.get("/v1/keys", params={"limit": 100})
    page = page_or_print(response, as_json=as_json)
    if page is None:
        return
    for key in page["data"]:
        scopes = ",".join(key.get("scopes") or [])
        expires = key.get("expires_at") or "-"
        print(f"{key['id']}\t{key['masked']}\t{key['name']}\t{scopes}\t{expires}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (effective on its next request)."""
    from cli.client import call

    call("DELETE", f"/v1/keys/{key_id}", 204)
    print(f"revoked {key_id}")


@app.command()
def up(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Worker banners and task lines on the terminal.")
    ] = False,
) -> None:
    """The whole platform in one process tree: API, a worker per queue group, beat, Flower.

    The data dir is this instance's alone (a second `up` on it is refused); a taken API or
    Flower port fails before anything starts. A process that exits is restarted with backoff
    (workers.supervisor), so a crash or a broker that blinks never stops the platform; Ctrl-C or
    SIGTERM stops everything. The processes' output goes to <data dir>/logs unless --verbose."""
    import logging

    from cli.client import write_credentials
    from store.migrate import ensure_database, upgrade
    from workers.embedded import stop_embedded_broker
    from workers.supervisor import Child, Supervisor

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)  # held until this process exits
    _require_free_port(settings.api_host, settings.api_port, "CONVEYOR_API_PORT")
    _require_free_port("127.0.0.1", settings.flower_port, "CONVEYOR_FLOWER_PORT")
    own_broker = settings.embedded_broker
    _prepare()
    ensure_database()
    upgrade()
    key = _create_key("default", "conveyor up")
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)

    def log_of(name: str) -> Path | None:
        return None if verbose else logs / f"{name.replace(' ', '-')}.log"

    s3_command = embedded_s3_command()
    flower_cmd, flower_env = flower_command()
    supervisor = Supervisor(
        [
            # First: blob resources' S3 server (its URL recorded in the data dir; same port again).
            *([Child("s3", s3_command, log=log_of("s3"))] if s3_command else []),
            Child("api", api_command(), log=log_of("api")),
            *(
                Child(
                    f"worker {group}",
                    worker_command(group, None, None),
                    env=worker_env(group),
                    log=log_of(f"worker {group}"),
                )
                for group in WORKER_GROUPS
            ),
            Child("beat", beat_command(), log=log_of("beat")),
        ],
        backoff_max=settings.up_restart_backoff_max_seconds,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s conveyor up: %(message)s"))
    logging.getLogger("conveyor.up").addHandler(handler)
    logging.getLogger("conveyor.up").setLevel(logging.INFO)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    flower_url = f"http://127.0.0.1:{settings.flower_port}"
    next_broker_check = time.monotonic()
    try:
        supervisor.start()
        if not _wait_healthy(api_url, supervisor, lambda: stopping):
            if not stopping:
                err.print(f"[red]The API did not become healthy; see {logs}[/red]")
            return
        # Flower inspects the workers when it starts: start it once they all answer, so its
        # workers page and API list every one of them from the first minute.
        _wait_workers(len(WORKER_GROUPS), supervisor, lambda: stopping)
        supervisor.add(Child("flower", flower_cmd, flower_env, log=log_of("flower")))
        credentials = write_credentials(api_url, key, data_dir / "credentials")
        print(key, flush=True)  # alone on stdout: `KEY=$(conveyor up | head -1)` works
        err.print(
            "[bold green]Conveyor is up[/bold green]\n"
            f"  API      {api_url}   docs {api_url}/docs\n"
            f"  Flower   {flower_url}\n"
            f"  API key  {key}  (organisation 'default'; also in {credentials})\n"
            f"  Data     {data_dir}   logs {logs if not verbose else 'on this terminal'}\n"
            "  Stop     Ctrl-C"
        )
        while not stopping:
            supervisor.poll()
            if own_broker and time.monotonic() >= next_broker_check:
                next_broker_check = time.monotonic() + 5
                _keep_embedded_broker(settings)
            time.sleep(0.5)
    finally:
        supervisor.stop()
        if own_broker:
            stop_embedded_broker(data_dir)
        lock.close()


def _lock_data_dir(data_dir: Path) -> Any:
    """Hold ``<data dir>/conveyor.lock`` (an exclusive flock, released when the process ends,
    however it ends); exit with one line naming the holder when another `up` has it."""
    import fcntl

    handle = (data_dir / "conveyor.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        err.print(
            f"[red]The data dir {data_dir} is in use by a running `conveyor up` ({holder}); "
            "stop it, or give this one its own CONVEYOR_DATA_DIR.[/red]"
        )
        raise typer.Exit(1) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def _require_free_port(host: str, port: int, setting: str) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            err.print(f"[red]Port {port} on {host} is taken; set {setting} to a free port.[/red]")
            raise typer.Exit(1) from None


def _wait_healthy(api_url: str, supervisor: Any, stopping: Any, timeout: float = 180.0) -> bool:
    """Wait until the API answers /v1/health (the store and broker checked)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        supervisor.poll()
        try:
            if httpx.get(f"{api_url}/v1/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _wait_workers(count: int, supervisor: Any, stopping: Any, timeout: float = 60.0) -> None:
    """Wait until ``count`` workers answer a ping (best effort: Flower starts anyway)."""
    from workers.app import celery_app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        supervisor.poll()
        with contextlib.suppress(Exception):
            if len(celery_app.control.ping(timeout=1.0)) >= count:
                return
        time.sleep(0.3)


def _keep_embedded_broker(settings: Settings) -> None:
    """Start the embedded Redis again if it stopped (it is a daemon, not a child)."""
    from workers.embedded import ensure_embedded_broker

    try:
        ensure_embedded_broker(settings)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        err.print(f"[red]the embedded Redis is down and did not restart[/red]: {exc}")


if __name__ == "__main__":
    app()
