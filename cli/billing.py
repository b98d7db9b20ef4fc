"""``conveyor billing …``: operator commands (direct store access): close a month into invoices
(exactly what the ``billing.close_periods`` beat task runs, idempotently) and grant credits."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from billing import jobs as billing_jobs
from billing import service
from cli.orgs import require_store
from common.errors import ConveyorError
from store.db import session_scope
from store.orgs import find_org

err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(help="Billing (operator).", no_args_is_help=True, callback=require_store)


@app.command("close-period")
def close_period(
    period: Annotated[
        str | None, typer.Option(help="Month YYYY-MM; default: the month that ended.")
    ] = None,
    org: Annotated[str | None, typer.Option(help="Only this organisation (name or id).")] = None,
) -> None:
    """Make the month's invoices (a rerun makes none); prints the ids of those made."""
    try:
        made = billing_jobs.close_periods(period, org)
    except ConveyorError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    for invoice_id in made:
        print(invoice_id)
    err.print(f"{len(made)} invoice(s) made.")


@app.command("grant")
def grant(
    org: Annotated[str, typer.Argument(help="Organisation name or id.")],
    amount_micros: Annotated[int, typer.Argument(help="Micro-units (1 USD = 1000000).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the ledger).")] = "",
) -> None:
    """Grant credits to an organisation; prints the new balance in micro-units."""
    try:
        with session_scope() as session:
            found = find_org(session, org)
            if found is None:
                raise typer.BadParameter(f"organisation {org!r} not found")
            _, balance = service.grant_credits(session, found.id, amount_micros, reason)
    except ConveyorError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None
    print(balance)
