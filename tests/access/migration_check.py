"""Run in a subprocess with CONVEYOR_DATABASE_URL set: migrate to the spine's first revision,
store a key the old way, upgrade every branch (``access_0001`` backfills), and print what the
old key is now as JSON."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from store.migrate import alembic_config


def main() -> None:
    cfg = alembic_config()
    command.upgrade(cfg, "0001_initial")
    from store.db import get_engine

    raw = "cvy_live_" + uuid.uuid4().hex
    org_id = str(uuid.uuid4())
    now = datetime.now(UTC).replace(tzinfo=None)
    with get_engine().begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO organizations (id, name, plan, created_at) "
                "VALUES (:id, :name, 'unlimited', :now)"
            ),
            {"id": org_id, "name": f"legacy-{org_id[:8]}", "now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, org_id, name, prefix, last4, key_hash, created_at) "
                "VALUES (:id, :org, 'legacy', :prefix, :last4, :hash, :now)"
            ),
            {
                "id": str(uuid.uuid4()),
                "org": org_id,
                "prefix": raw[:13],
                "last4": raw[-4:],
                "hash": hashlib.sha256(raw.encode()).hexdigest(),
                "now": now,
            },
        )
    command.upgrade(cfg, "heads")
    from access.scopes import effective
    from store import orgs
    from store.db import session_scope

    with session_scope() as session:
        principal = orgs.authenticate(session, raw)
        assert principal is not None
        print(
            json.dumps(
                {
                    "org_ok": principal.org_id == org_id,
                    "role": principal.role,
                    "scopes": list(principal.key_scopes),
                    "effective": len(effective(principal.key_scopes, principal.role)),
                    "member": principal.member_id,
                }
            )
        )


if __name__ == "__main__":
    main()
