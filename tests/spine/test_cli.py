"""The ``conveyor`` CLI: ``keys create`` prints a working key alone on stdout; ``jobs``
commands talk to a real API server (uvicorn on a free port)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_prints_only_the_key(live_api: str) -> None:
    done = conveyor("keys", "create", "--org", "cli-test-org")
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("cvy_live_") and "\n" not in key
    response = httpx.get(f"{live_api}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_jobs_commands(live_api: str, worker: object, tmp_path: Path) -> None:
    key = conveyor("keys", "create", "--org", "cli-jobs-org").stdout.strip()
    env = {"CONVEYOR_API_URL": live_api, "CONVEYOR_API_KEY": key}
    job = httpx.post(
        f"{live_api}/v1/diagnostics/sleep",
        json={"seconds": 0.1},
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = conveyor("jobs", "get", job["id"], env=env)
        assert shown.returncode == 0, shown.stderr
        if '"completed"' in shown.stdout:
            break
        time.sleep(0.2)
    listed = conveyor("jobs", "list", "--json", "--status", "completed", env=env)
    assert job["id"] in listed.stdout
    out = tmp_path / "result.json"
    fetched = conveyor("jobs", "result", job["id"], "-o", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert '"steps"' in out.read_text()
    missing = conveyor("jobs", "get", "nope", env=env)
    assert missing.returncode == 1 and "not_found" in missing.stderr
    no_key = conveyor("jobs", "list", env={"CONVEYOR_API_KEY": "", "CONVEYOR_API_URL": live_api})
    assert no_key.returncode == 2


def test_jobs_submit_wait_and_list_as_a_user_would(live_api: str, worker: object) -> None:
    key = conveyor("keys", "create", "--org", "cli-wait-org").stdout.strip()
    env = {"CONVEYOR_API_URL": live_api, "CONVEYOR_API_KEY": key}
    made = conveyor("jobs", "submit", "diagnostics", "--input", '{"seconds": 0.2}', env=env)
    assert made.returncode == 0, made.stderr
    job_id = json.loads(made.stdout)["id"]
    waited = conveyor("jobs", "wait", job_id, "--quiet", env=env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"
    failing = conveyor(
        "jobs", "submit", "diagnostics", "--input", '{"seconds": 0, "fail": true}', env=env
    )
    failed = conveyor("jobs", "wait", json.loads(failing.stdout)["id"], "-q", env=env)
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    listed = conveyor("jobs", "list", env={**env, "COLUMNS": "60"})
    assert job_id in listed.stdout  # never cut, even on a narrow terminal
    bad = conveyor("jobs", "submit", "diagnostics", "--input", "{nope", env=env)
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_keys_list_and_revoke(live_api: str) -> None:
    key = conveyor("keys", "create", "--org", "cli-keys-org").stdout.strip()
    other = conveyor("keys", "create", "--org", "cli-keys-org", "--name", "spare").stdout.strip()
    env = {"CONVEYOR_API_URL": live_api, "CONVEYOR_API_KEY": key}
    listed = conveyor("keys", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    spare = [k for k in json.loads(listed.stdout)["data"] if k["name"] == "spare"]
    assert len(spare) == 1
    assert conveyor("keys", "revoke", spare[0]["id"], env=env).returncode == 0
    refused = httpx.get(f"{live_api}/v1/jobs", headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 401


def test_client_commands_read_the_credentials_file_and_say_when_the_api_is_down(
    live_api: str, tmp_path: Path
) -> None:
    from cli.client import write_credentials

    key = conveyor("keys", "create", "--org", "cli-creds-org").stdout.strip()
    data_dir = tmp_path / "data"
    path = write_credentials(live_api, key, data_dir / "credentials")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    env = {"CONVEYOR_DATA_DIR": str(data_dir), "CONVEYOR_API_URL": "", "CONVEYOR_API_KEY": ""}
    listed = conveyor("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    write_credentials("http://127.0.0.1:9", key, data_dir / "credentials")  # nothing listens
    down = conveyor("jobs", "list", env=env)
    assert down.returncode == 2
    assert down.stderr.strip().splitlines() == [
        "cannot reach the API at http://127.0.0.1:9: connection refused"
    ]


def test_admin_commands_on_a_store_that_is_not_there_say_what_to_run(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    env = {"CONVEYOR_DATA_DIR": str(empty), "CONVEYOR_DATABASE_URL": ""}
    for args in (("keys", "create", "--org", "x"), ("orgs", "plans")):
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,  # run from another folder
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "run `conveyor migrate`" in lines[0], done.stderr
    assert not (empty / "conveyor.db").exists() and not (tmp_path / ".data").exists()


def test_the_default_data_dir_does_not_depend_on_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import Settings

    monkeypatch.delenv("CONVEYOR_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert Settings().data_dir == tmp_path / "xdg" / "conveyor"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert Settings().data_dir == Path.home() / ".local" / "share" / "conveyor"
