"""Real HTTP servers the RAG tests call: an OpenAI-compatible provider that streams its answer
slowly (one delta every ``gap`` seconds), and a Qdrant-compatible remote vector store (the REST
``points/search`` route over an in-memory collection, exact cosine)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _body(handler: BaseHTTPRequestHandler) -> Any:
    return json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)))


def _json(handler: BaseHTTPRequestHandler, status: int, document: Any) -> None:
    data = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def slow_provider(words: list[str], gap: float) -> type[BaseHTTPRequestHandler]:
    """``POST /v1/chat/completions`` with ``stream: true``: one word a delta, ``gap`` apart."""

    class Provider(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = _body(self)
            assert body["stream"] is True and self.path == "/v1/chat/completions"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for word in words:
                chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
                time.sleep(gap)
            usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 0}
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(b"data: " + json.dumps({**done, "usage": usage}).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")

    return Provider


class QdrantStore:
    """One collection of points ``{id, vector, payload}``; ``search`` is exact cosine with an
    optional ``must``/``match`` payload filter, as Qdrant's REST API answers it."""

    def __init__(self, name: str, api_key: str) -> None:
        self.name = name
        self.api_key = api_key
        self.points: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.headers.get("api-key") != store.api_key:
                    _json(self, 403, {"status": {"error": "forbidden"}})
                    return
                if self.path != f"/collections/{store.name}/points/search":
                    _json(self, 404, {"status": {"error": "Not found: collection"}})
                    return
                body = _body(self)
                store.requests.append(body)
                _json(self, 200, {"result": store.search(body), "status": "ok", "time": 0.0})

        return Handler

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        query = np.asarray(body["vector"], dtype=np.float32)
        query /= np.linalg.norm(query) or 1.0
        wanted = (body.get("filter") or {}).get("must") or []
        scored = []
        for point in self.points:
            if any(point["payload"].get(c["key"]) != c["match"]["value"] for c in wanted):
                continue
            vector = np.asarray(point["vector"], dtype=np.float32)
            score = float(vector @ query / (np.linalg.norm(vector) or 1.0))
            scored.append({"id": point["id"], "score": score, "payload": point["payload"]})
        scored.sort(key=lambda p: -p["score"])
        return scored[: int(body.get("limit", 10))]


@contextmanager
def tcp_to_unix(socket_path: str) -> Iterator[int]:
    """A TCP port on 127.0.0.1 forwarding every connection to a Unix socket (the ``pgserver``
    PostgreSQL listens on a socket only; an external pgvector dataset is reached over TCP)."""
    import socket
    import socketserver

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(socket_path)
            back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
            back.start()
            pump(self.request, upstream)
            back.join()
            upstream.close()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
