"""The crawl worker group's processes import only the crawl tasks (less memory per process),
and still know every task their queue is sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli.main import worker_env
from config.queues import KINDS, WORKER_GROUPS, task_routes

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from workers.app import celery_app
celery_app.loader.import_default_modules()
print(json.dumps({"tasks": sorted(celery_app.tasks),
                  "modules": sorted(m for m in sys.modules if m.startswith("tasks."))}))
"""


def _worker_view(env: dict[str, str]) -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_groups_with_own_task_modules_register_every_task_of_their_queues() -> None:
    routes = task_routes()
    every_task = set(_worker_view(worker_env(None))["tasks"])  # what a full worker knows
    groups = {name: g for name, g in WORKER_GROUPS.items() if g.task_modules}
    assert "crawl" in groups
    for name, group in groups.items():
        env = worker_env(name)
        assert env["CONVEYOR_WORKER_TASK_MODULES"] == ",".join(group.task_modules)
        view = _worker_view(env)
        wanted = {t for t, route in routes.items() if route["queue"] in group.queues} & every_task
        assert wanted, name
        assert wanted <= set(view["tasks"]), (name, wanted - set(view["tasks"]))
        others = set(view["modules"]) - set(group.task_modules) - {"tasks.runner"}
        assert not others, others  # no other domain's tasks (and their imports)
    crawl_queue = WORKER_GROUPS["crawl"].queues
    kinds = {f"{kind}.run" for kind, limits in KINDS.items() if limits.queue in crawl_queue}
    crawl_view = set(_worker_view(worker_env("crawl"))["tasks"])
    assert {"crawl.run", "map.run", "crawl.batch"} <= crawl_view
    assert kinds & every_task <= crawl_view


def test_other_workers_import_every_task_module() -> None:
    env = worker_env(None)
    assert "CONVEYOR_WORKER_TASK_MODULES" not in env
    view = _worker_view(env)
    assert {"tasks.crawl", "tasks.deploy", "tasks.maintenance"} <= set(view["modules"])
    assert {"crawl.run", "maintenance.sweep_jobs"} <= set(view["tasks"])
