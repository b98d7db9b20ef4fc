"""A replica command for binding tests: proves the process sees DATABASE_URL and can use it
(prints the check to its log), then serves like the deployments' stub server."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import psycopg

url = os.environ.get("DATABASE_URL")
if url is None:
    print("DB_CHECK missing DATABASE_URL", flush=True)
else:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user, (SELECT count(*) FROM items)").fetchone()
    print(f"DB_CHECK ok user={row[0] if row else '?'} rows={row[1] if row else '?'}", flush=True)
sys.argv[0] = str(Path(__file__).parents[1] / "deployments" / "stub_server.py")
runpy.run_path(sys.argv[0], run_name="__main__")
