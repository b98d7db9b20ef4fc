"""A stand-in OpenAI-shaped HTTP server process for supervisor tests (stdlib only).

It is not a model server: it answers /v1/models, /v1/completions, /v1/chat/completions and
/health with fixed text, and can misbehave on demand (crash, ignore SIGTERM, never get healthy,
print a secret) so the local backend's supervision can be tested quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="stub")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--unhealthy", action="store_true")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    args = parser.parse_args()

    print(f"stub server pid={os.getpid()} token={os.environ.get('HF_TOKEN', '-')}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    time.sleep(args.startup_delay)
    if args.exit_after is not None:

        def _exit() -> None:
            time.sleep(args.exit_after)
            print(f"fatal: simulated crash, exiting with {args.exit_code}", flush=True)
            os._exit(args.exit_code)

        threading.Thread(target=_exit, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if args.unhealthy:
                self._send(500, {"error": "not ready"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": args.name, "object": "model"}]})
            elif self.path == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            text = f"port {args.port}"
            if self.path == "/v1/completions":
                choice = {"index": 0, "text": text, "finish_reason": "length"}
            elif self.path == "/v1/chat/completions":
                message = {"role": "assistant", "content": text}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
            else:
                self._send(404, {"error": "not found"})
                return
            self._send(200, {"id": "x", "model": body.get("model"), "choices": [choice]})

        def log_message(self, format: str, *items: object) -> None:
            sys.stdout.write("request " + (format % items) + "\n")
            sys.stdout.flush()

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
