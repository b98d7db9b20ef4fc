"""A sample app repository for tests and benchmarks: a stdlib WSGI-free HTTP app (``web``)
and a worker, in a Procfile, committed to a local git repository (no network, no pip)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

APP = """\
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = {version!r}
print(f"web {{VERSION}} starting, token={{os.environ.get('API_TOKEN', '')}}", flush=True)
{startup}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/health"):
            return self._send(200, {{"ok": True}})
        if self.path.startswith("/env/"):
            return self._send(200, {{"value": os.environ.get(self.path[5:])}})
        if self.path.startswith("/volume"):
            path = os.path.join(os.environ.get("VOLUME_DATA_PATH", "."), "data.txt")
            if "write=" in self.path:
                with open(path, "a") as f:
                    f.write(self.path.split("write=", 1)[1] + "\\n")
            data = open(path).read() if os.path.exists(path) else ""
            return self._send(200, {{"data": data}})
        self._send(200, {{
            "version": VERSION,
            "greeting": os.environ.get("GREETING"),
            "path": self.path,
            "pid": os.getpid(),
        }})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._send(200, {{"version": VERSION, "echo": body.decode()}})

    def log_message(self, fmt, *args):
        print("request", fmt % args, flush=True)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

WORKER = """\
import time
while True:
    print("worker tick", flush=True)
    time.sleep(0.5)
"""

PROCFILE = "web: python app.py\nworker: python worker.py\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "HOME": str(repo),
        },
    ).stdout.strip()


def commit_version(repo: Path, version: str, *, startup: str = "", requirements: str = "") -> str:
    """Write the app at ``version`` and commit it; returns the commit SHA. ``startup`` is code
    run before serving (``sys.exit(3)`` makes a version that never passes its health check)."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text(APP.format(version=version, startup=startup))
    (repo / "worker.py").write_text(WORKER)
    (repo / "Procfile").write_text(PROCFILE)
    (repo / "requirements.txt").write_text(requirements)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"version {version}")
    return _git(repo, "rev-parse", "HEAD")


def kill_everything(runtime_dir: Path) -> None:
    """Kill every replica and proxy process recorded under a local runtime directory (pid and
    start time verified): test and benchmark cleanup."""
    from deployments.backends.local import process_matches

    for state in runtime_dir.glob("envs/*/state.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(state.read_text())
            for rec in [*data.get("replicas", []), *data.get("proxies", [])]:
                pid, start = rec.get("pid"), rec.get("start_time")
                if pid and start and process_matches(pid, start):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
