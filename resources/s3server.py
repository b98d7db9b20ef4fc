"""The embedded default's S3-compatible server, for blob resources: moto's S3 and IAM APIs
(SigV4, presigned URLs, per-bucket IAM users) on 127.0.0.1, its state kept in the data dir.

``conveyor up`` starts it (``python -m resources.s3server --data-dir DIR``) before the API and
the workers and records its URL in ``DIR/s3/endpoint``, where ``ResourceSettings`` finds it when
``CONVEYOR_RESOURCES_S3_ENDPOINT_URL`` is not set. Buckets, objects and users persist across
restarts in ``DIR/s3/state.pickle``: loaded at start, rewritten (atomically) a moment after each
change and at stop. The file is this process's own state (mode 0600), never read from elsewhere.
Like the local PostgreSQL's trust auth, it checks no signature: isolation between buckets relies
on production's real endpoint (README).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: Seconds between a change and the state written to disk (changes in between are batched).
FLUSH_DELAY_S = 0.5


def state_dir(data_dir: Path) -> Path:
    return data_dir / "s3"


def endpoint_file(data_dir: Path) -> Path:
    return state_dir(data_dir) / "endpoint"


def recorded_endpoint(data_dir: Path) -> str | None:
    """The URL of the embedded server of ``data_dir`` (None when it never ran there)."""
    try:
        return endpoint_file(data_dir).read_text().strip() or None
    except OSError:
        return None


class EmbeddedS3:
    """``start()`` serves on ``host:port`` (0: a free port); ``stop()`` saves and stops."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.dir = state_dir(data_dir)
        self.host, self.port = host, port
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server: Any = None
        self._threads: list[threading.Thread] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _backends(self) -> dict[str, Any]:
        from moto.iam.models import iam_backends
        from moto.s3.models import s3_backends

        return {"s3": s3_backends, "iam": iam_backends}

    def _load(self) -> None:
        path = self.dir / "state.pickle"
        if not path.exists():
            return
        with path.open("rb") as fh:
            saved = pickle.load(fh)  # our own file, in our own data dir (0600)
        for name, backends in self._backends().items():
            backends.update(saved.get(name, {}))

    def save(self) -> None:
        with self._lock:
            state = {name: dict(backends) for name, backends in self._backends().items()}
            data = pickle.dumps(state)
            tmp = self.dir / "state.pickle.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / "state.pickle")

    def _app(self) -> Callable[..., Iterable[bytes]]:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            try:
                return moto_app(environ, start_response)  # type: ignore[no-any-return]
            finally:
                if environ.get("REQUEST_METHOD") not in ("GET", "HEAD", "OPTIONS"):
                    self._dirty.set()

        return app

    def _flusher(self) -> None:
        while not self._stopping.is_set():
            if self._dirty.wait(timeout=1.0) and not self._stopping.is_set():
                self._stopping.wait(FLUSH_DELAY_S)
                self._dirty.clear()
                self.save()

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._load()
        port_file = self.dir / "port"
        if not self.port and port_file.exists():  # the same URL as before: credentials keep it
            self.port = int(port_file.read_text().strip() or 0)
        try:
            self._server = self._serve(self.port, MotoRequestHandler, make_server)
        except OSError:  # taken meanwhile: a new port (blob credentials then show the new URL)
            self._server = self._serve(0, MotoRequestHandler, make_server)
        self.port = int(self._server.server_address[1])
        port_file.write_text(f"{self.port}\n")
        serve = threading.Thread(target=self._server.serve_forever, daemon=True)
        flush = threading.Thread(target=self._flusher, daemon=True)
        self._threads = [serve, flush]
        for thread in self._threads:
            thread.start()

    def _serve(self, port: int, handler: Any, make_server: Callable[..., Any]) -> Any:
        return make_server(self.host, port, self._app(), threaded=True, request_handler=handler)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        self.save()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The embedded S3-compatible server.")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = EmbeddedS3(args.data_dir, args.host, args.port)
    server.start()
    endpoint_file(args.data_dir).write_text(server.endpoint_url + "\n")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        done.wait()
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            endpoint_file(args.data_dir).unlink()


if __name__ == "__main__":
    main()
