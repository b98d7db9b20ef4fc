"""The README's Billing section works when pasted: its shell blocks run against a real API on a
port (operator key set), the CLI on the same store, with only the variables the README asks the
reader to define ($API, $KEY, $OPERATOR_KEY) substituted; organisation ``default`` (the one
``conveyor up`` makes) used last month, so there is an invoice to fetch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from billing import service
from plans.service import period_key
from store.db import session_scope
from tests.billing.conftest import OPERATOR_KEY
from tests.conftest import make_org
from tests.crawler.test_readme_blocks import ERROR_ENVELOPE, shell_blocks

ROOT = Path(__file__).resolve().parents[2]
PROVIDED = re.compile(r"^\s*(export\s+)?(API|KEY|OPERATOR_KEY)=")


def test_the_billing_blocks_run_as_written(live_api: str, operator: dict[str, str]) -> None:
    reader = make_org("default")
    last = service.previous_period(period_key())
    at = service.period_bounds(last)[0] + timedelta(days=2)
    with session_scope() as session:
        usage = service.Usage(reader.org_id, "jobs", 5, "crawl", "t", "r", at, f"readme:{at}")
        service.record_usage(session, [usage])
    env: dict[str, Any] = {
        **os.environ,
        "API": live_api,
        "KEY": reader.key,
        "OPERATOR_KEY": OPERATOR_KEY,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    blocks = shell_blocks("Billing")
    assert len(blocks) == 3
    for block in blocks:
        script = "\n".join(line for line in block.splitlines() if not PROVIDED.match(line))
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = f"{block}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
        assert done.returncode == 0, shown
        assert done.stdout.strip() and not ERROR_ENVELOPE.search(done.stdout), shown
    pdf = ROOT / "invoice.pdf"  # the file the last block downloads
    try:
        assert pdf.read_bytes().startswith(b"%PDF-")
    finally:
        pdf.unlink(missing_ok=True)
