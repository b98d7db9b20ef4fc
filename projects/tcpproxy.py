"""A TCP proxy process of one service (``python -m projects.tcpproxy CONFIG.json``).

The config file (rewritten atomically by the local backend) names the listening port, the
route file of the environment and the service, and the allow-list (CIDRs). Both files are
re-read when they change, so an allow-list change or a rollout takes effect for the next
connection without a restart. A connection from an address outside the allow-list (an empty
list: every address) is closed at once: nothing is read from it and nothing reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import sys
from pathlib import Path
from typing import Any

_counter = itertools.count()


class Config:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.data: dict[str, Any] = {}
        self._route_stamp: tuple[int, int] | None = None
        self.route: dict[str, Any] = {}

    def _reload(self) -> None:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            self.data = json.loads(self.path.read_text())
            self._stamp = stamp
        route_path = Path(self.data["route"])
        with contextlib.suppress(FileNotFoundError, ValueError):
            rst = route_path.stat()
            rstamp = (rst.st_mtime_ns, rst.st_ino)
            if rstamp != self._route_stamp:
                self.route = json.loads(route_path.read_text())
                self._route_stamp = rstamp

    def allowed(self, host: str) -> bool:
        self._reload()
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for cidr in self.data.get("allow", []):
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(cidr, strict=False):
                    return True
        return False

    def targets(self) -> list[str]:
        self._reload()
        return list(self.route.get("services", {}).get(self.data["service"], []))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def handle(
    config: Config, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")
    host = str(peer[0]) if peer else ""
    if not config.allowed(host):
        transport = writer.transport
        transport.abort()  # refused: nothing read, nothing forwarded
        return
    targets = config.targets()
    upstream = None
    for attempt in range(len(targets)):
        target = targets[(next(_counter) + attempt) % len(targets)]
        thost, _, tport = target.rpartition(":")
        with contextlib.suppress(OSError):
            upstream = await asyncio.open_connection(thost, int(tport))
            break
    if upstream is None:
        writer.transport.abort()
        return
    up_reader, up_writer = upstream
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def main(path: Path) -> None:
    config = Config(path)
    config._reload()
    server = await asyncio.start_server(
        lambda r, w: handle(config, r, w),
        host=config.data.get("listen_host", "0.0.0.0"),
        port=int(config.data["listen_port"]),
        reuse_address=True,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
