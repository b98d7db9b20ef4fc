"""``conveyor``: process commands (up, api, worker, beat, flower, migrate) and admin commands.

Process commands start the embedded broker first when ``CONVEYOR_BROKER_URL`` is not set.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from cli.crawl import crawl as crawl_command
from cli.jobs import jobs_app
from cli.orgs import app as orgs_app
from config import Settings, get_settings
from config.queues import QUEUES, WORKER_GROUPS

app = typer.Typer(help="Conveyor: a self-hosted job platform.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
app.add_typer(orgs_app, name="orgs")
app.command(name="crawl")(crawl_command)
err = Console(stderr=True)


def _prepare() -> None:
    """Data dir and embedded broker (when no broker URL is configured)."""
    from workers.embedded import ensure_embedded_broker

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ensure_embedded_broker(settings)


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


def flower_command() -> tuple[list[str], dict[str, str]]:
    settings = get_settings()
    args = ["flower", f"--port={settings.flower_port}"]
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
    ]


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
    _exec(worker_command(group, queues.split(",") if queues else None, concurrency))


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

    from deployments.backends.kubernetes_watch import serve_watch
    from deployments.jobs import reconcile_one

    logging.basicConfig(level=get_settings().log_level.upper())
    serve_watch(reconcile_one)


@app.command()
def flower() -> None:
    """Run the Flower monitoring UI."""
    cmd, env = flower_command()
    _exec(cmd, env)


def _create_key(org: str, name: str) -> str:
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        organisation = orgs.get_or_create_org(session, org)
        return orgs.create_key(session, organisation.id, name=name).raw


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation name (created if needed).")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "cli",
) -> None:
    """Create an API key and print it (alone, on stdout). It is never shown again."""
    print(_create_key(org, name))


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw page.")] = False,
) -> None:
    """Your organisation's keys (through the API, with the key in use)."""
    from cli.client import api_client, fail

    with api_client() as client:
        response = client.get("/v1/keys", params={"limit": 100})
    if response.status_code != 200:
        fail(response)
    page = response.json()
    if as_json:
        print(json.dumps(page, indent=2))
        return
    for key in page["data"]:
        print(f"{key['id']}\t{key['masked']}\t{key['name']}\t{key['created_at']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (effective on its next request)."""
    from cli.client import api_client, fail

    with api_client() as client:
        response = client.delete(f"/v1/keys/{key_id}")
    if response.status_code != 204:
        fail(response)
    print(f"revoked {key_id}")


@app.command()
def up() -> None:
    """The whole platform in one process tree: API, a worker per queue group, beat, Flower.

    A process that exits is restarted with backoff (workers.supervisor), so a crash or a
    broker that blinks never stops the platform; Ctrl-C or SIGTERM stops everything."""
    import logging

    from store.migrate import ensure_database, upgrade
    from workers.embedded import broker_running, stop_embedded_broker
    from workers.supervisor import Child, Supervisor

    settings = get_settings()
    own_broker = settings.embedded_broker and not broker_running(settings)
    _prepare()
    ensure_database()
    upgrade()
    key = _create_key("default", "conveyor up")
    flower_cmd, flower_env = flower_command()
    supervisor = Supervisor(
        [
            Child("api", api_command()),
            *(
                Child(f"worker {group}", worker_command(group, None, None))
                for group in WORKER_GROUPS
            ),
            Child("beat", beat_command()),
            Child("flower", flower_cmd, flower_env),
        ],
        backoff_max=settings.up_restart_backoff_max_seconds,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s conveyor up: %(message)s"))
    logging.getLogger("conveyor.up").addHandler(handler)
    logging.getLogger("conveyor.up").setLevel(logging.INFO)
    supervisor.start()
    err.print(
        f"[bold green]Conveyor is up[/bold green]: API http://{settings.api_host}:"
        f"{settings.api_port} (docs /docs), Flower http://127.0.0.1:{settings.flower_port}, "
        f"data in {settings.data_dir.resolve()}"
    )
    err.print("API key for organisation 'default' (shown once):")
    print(key, flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    next_broker_check = time.monotonic()
    try:
        while not stopping:
            supervisor.poll()
            if own_broker and time.monotonic() >= next_broker_check:
                next_broker_check = time.monotonic() + 5
                _keep_embedded_broker(settings)
            time.sleep(0.5)
    finally:
        supervisor.stop()
        if own_broker:
            stop_embedded_broker(settings)


def _keep_embedded_broker(settings: Settings) -> None:
    """Start the embedded Redis again if it stopped (it is a daemon, not a child)."""
    from workers.embedded import ensure_embedded_broker

    try:
        ensure_embedded_broker(settings)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        err.print(f"[red]the embedded Redis is down and did not restart[/red]: {exc}")


if __name__ == "__main__":
    app()
