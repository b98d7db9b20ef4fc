"""``conveyor orgs …``: admin commands for organisations and their plans (direct store access)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.errors import ConveyorError
from plans import service as plans
from plans.schemas import PlanLimits
from store.db import session_scope

err = Console(stderr=True, soft_wrap=True)  # one message, one line


def require_store() -> None:
    """Admin commands read and write the store directly: a missing or unmigrated one is one
    line saying what to run (exit 2), never a traceback."""
    from store.migrate import NotMigrated, require_migrated

    try:
        require_migrated()
    except NotMigrated as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


app = typer.Typer(
    help="Organisations and plans (admin).",
    no_args_is_help=True,
    callback=require_store,
)


def _fail(exc: ConveyorError) -> None:
    err.print(f"[red]error:[/red] {exc.message}")
    raise typer.Exit(1)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Organisation name (unique).")],
    plan: Annotated[str, typer.Option(help="Plan name.")] = plans.DEFAULT_PLAN,
) -> None:
    """Create an organisation on a plan and print its id."""
    try:
        with session_scope() as session:
            org = plans.create_org(session, name, plan)
            org_id = org.id
    except ConveyorError as exc:
        _fail(exc)
    print(org_id)


@app.command("set-plan")
def set_plan(
    org: Annotated[str, typer.Argument(help="Organisation name or id.")],
    plan: Annotated[str, typer.Argument(help="Plan name (see `conveyor orgs plans`).")],
) -> None:
    """Move an organisation to another plan (takes effect within 30 s on every API process)."""
    try:
        with session_scope() as session:
            plans.set_plan(session, org, plan)
    except ConveyorError as exc:
        _fail(exc)
    print(f"{org}: {plan}")


@app.command("plans")
def list_plans() -> None:
    """List the plans and their limits."""
    from plans.repository import list_plans as rows

    with session_scope() as session:
        plans.ensure_default_plans(session)
        table = Table(
            "plan",
            "pages/month",
            "concurrent",
            "GPU s/month",
            "max pages/crawl",
            "GET/min",
            "write/min",
        )
        for p in rows(session):
            table.add_row(
                p.name,
                str(p.pages_per_month),
                str(p.concurrent_jobs),
                str(p.gpu_seconds_per_month),
                str(p.max_pages_per_crawl),
                str(p.read_per_minute),
                str(p.write_per_minute),
            )
    Console().print(table)


@app.command("define-plan")
def define_plan(
    name: Annotated[str, typer.Argument(help="Plan name (created or updated).")],
    pages_per_month: Annotated[int, typer.Option()] = 1_000,
    concurrent_jobs: Annotated[int, typer.Option()] = 20,
    gpu_seconds_per_month: Annotated[int, typer.Option()] = 3_600,
    max_pages_per_crawl: Annotated[int, typer.Option()] = 500,
    read_per_minute: Annotated[int, typer.Option()] = 120,
    write_per_minute: Annotated[int, typer.Option()] = 60,
) -> None:
    """Create or update a plan's limits."""
    limits = PlanLimits(
        name=name,
        pages_per_month=pages_per_month,
        concurrent_jobs=concurrent_jobs,
        gpu_seconds_per_month=gpu_seconds_per_month,
        max_pages_per_crawl=max_pages_per_crawl,
        read_per_minute=read_per_minute,
        write_per_minute=write_per_minute,
    )
    with session_scope() as session:
        plans.define_plan(session, limits)
    print(name)
