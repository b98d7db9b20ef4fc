"""The SSRF guard: decides whether Conveyor may send a request to a URL on a user's behalf.

Every outgoing request made for a user (crawl fetches, every redirect hop, the browser's own
sub-requests, webhook deliveries) goes through :func:`check_url` / :func:`check_url_async`, and
the crawler's HTTP transport checks the address again at connect time (no DNS rebinding).

Refused: non-http(s) schemes, credentials in the URL, ``localhost``-style names, numeric host
forms that are not canonical dotted quads (decimal ``2130706433``, octal ``0177.0.0.1``, hex),
and any host that resolves to an address that is not globally routable (private, loopback,
link-local incl. the ``169.254.169.254`` metadata address, ``0.0.0.0``, multicast, reserved,
shared, IPv4-mapped/6to4/Teredo IPv6 wrapping such an address).

The only way through is an explicit allow-list (setting ``CONVEYOR_CRAWL_ALLOWED_HOSTS``):
comma-separated host names (``example.test``), ``host:port`` pairs (``127.0.0.1:8081``) and
CIDR ranges (``127.0.0.0/8``). A name entry matches the URL's host; an address or range entry
matches the resolved addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common.errors import ErrorCode, UnsafeURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
_LOCAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "broadcasthost"}
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain")
_DOTTED_QUAD = re.compile(
    r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$"
)
# Anything made only of digits, dots and hex markers is a numeric host in some inet_aton form.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*\.?$", re.IGNORECASE)


ALLOW_SETTING = "CONVEYOR_CRAWL_ALLOWED_HOSTS"


class UnsafeURLError(UnsafeURL):
    """The URL (or an address it resolves to) may not be requested: 422 ``unsafe_url``."""


class DNSError(UnsafeURLError):
    """The URL's host does not resolve: 422 ``dns_error`` (nothing unsafe about it)."""

    code = ErrorCode.DNS_ERROR


@dataclass(frozen=True)
class AllowList:
    """Hosts, host:port pairs and networks that the guard lets through."""

    names: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, spec: str | Iterable[str] | AllowList | None) -> AllowList:
        """Parse ``"a.test, 127.0.0.1:8081, 10.0.0.0/8"`` (or an iterable of entries)."""
        if isinstance(spec, AllowList):
            return spec
        if spec is None:
            return cls()
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        names: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            host, port = _split_host_port(entry)
            if port is not None:
                host_ports.add((host, port))
                continue
            try:
                networks.append(ipaddress.ip_network(host))
            except ValueError:
                names.add(host.rstrip("."))
        return cls(frozenset(names), frozenset(host_ports), tuple(networks))

    def allows_host(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        return host in self.names or (host, port) in self.host_ports

    def allows_address(self, address: IPAddress, port: int) -> bool:
        if any(address in net for net in self.networks):
            return True
        return (str(address), port) in self.host_ports

    def __bool__(self) -> bool:
        return bool(self.names or self.host_ports or self.networks)


def _split_host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080 or [::1]
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, None


def is_public_address(address: IPAddress) -> bool:
    """True for globally routable unicast addresses only."""
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None:
                return is_public_address(inner)
        if address.teredo is not None:
            return all(is_public_address(a) for a in address.teredo)
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 wraps an IPv4 address
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast and not address.is_unspecified


@dataclass(frozen=True)
class Target:
    """A URL's host as the guard sees it."""

    host: str
    port: int
    literal: IPAddress | None


def parse_target(url: str) -> Target:
    """Validate the URL's shape (scheme, credentials, host form) and return its host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"Malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeURLError(f"Only http and https URLs can be fetched, not {scheme or 'none'!r}.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURLError("URLs with credentials are not allowed.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURLError("The URL has no host.")
    if port is None:
        port = 443 if scheme == "https" else 80
    return Target(host=host, port=port, literal=_literal_address(host))


def _literal_address(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError as exc:
            raise UnsafeURLError(f"Malformed IPv6 address {host!r}.") from exc
    if _NUMERIC_HOST.match(host):
        if not _DOTTED_QUAD.match(host):
            raise UnsafeURLError(f"Non-canonical numeric host {host!r} is not allowed.")
        return ipaddress.IPv4Address(host)
    return None


def _check_name(target: Target, allowed: AllowList) -> bool:
    """Return True when the allow-list lets the host through by name; raise on local names."""
    if allowed.allows_host(target.host, target.port):
        return True
    if target.literal is None and (
        target.host in _LOCAL_NAMES or target.host.endswith(_LOCAL_SUFFIXES)
    ):
        raise UnsafeURLError(
            f"Host {target.host!r} is a local name; to crawl it on purpose, list it in "
            f"{ALLOW_SETTING}."
        )
    return False


def check_address(address: IPAddress, port: int, allowed: AllowList, host: str = "") -> None:
    """Raise :class:`UnsafeURLError` unless ``address`` is public or allow-listed."""
    if allowed.allows_address(address, port):
        return
    if not is_public_address(address):
        shown = f"{host} ({address})" if host and host != str(address) else str(address)
        raise UnsafeURLError(
            f"{shown} is a private, loopback, link-local or reserved address; to crawl it "
            f"on purpose, list the host in {ALLOW_SETTING}."
        )


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        out.append(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return out


def _check_resolved(target: Target, addresses: list[IPAddress], allowed: AllowList) -> None:
    if not addresses:
        raise DNSError(f"Host {target.host!r} did not resolve.")
    for address in addresses:
        check_address(address, target.port, allowed, target.host)


def check_url(
    url: str,
    allowed: str | Iterable[str] | AllowList | None = None,
    *,
    unresolvable_ok: bool = False,
) -> None:
    """Raise :class:`UnsafeURLError` unless ``url`` may be requested (resolves DNS, blocking).

    ``unresolvable_ok`` lets a name that does not resolve (yet) through: used when a job is
    submitted; the fetch itself checks again and fails the page if it is unsafe then.
    """
    allow = AllowList.parse(allowed)
    target = parse_target(url)
    if _check_name(target, allow):
        return
    if target.literal is not None:
        _check_resolved(target, [target.literal], allow)
        return
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        if unresolvable_ok:
            return
        raise DNSError(f"Host {target.host!r} did not resolve: {exc}") from exc
    _check_resolved(target, _addresses(infos), allow)


async def check_url_async(url: str, allowed: str | Iterable[str] | AllowList | None = None) -> None:
    """Like :func:`check_url`, resolving DNS without blocking the event loop."""
    allow = AllowList.parse(allowed)
    target = parse_target(url)
    if _check_name(target, allow):
        return
    if target.literal is not None:
        _check_resolved(target, [target.literal], allow)
        return
    await resolve_checked(target.host, target.port, allow)


async def resolve_checked(host: str, port: int, allowed: AllowList) -> list[IPAddress]:
    """Resolve ``host`` and return its addresses, raising if any of them is not allowed."""
    target = Target(host=host, port=port, literal=_literal_address(host))
    if target.literal is not None:
        if not _check_name(target, allowed):
            _check_resolved(target, [target.literal], allowed)
        return [target.literal]
    by_name = _check_name(target, allowed)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DNSError(f"Host {host!r} did not resolve: {exc}") from exc
    addresses = _addresses(infos)
    if not by_name:
        _check_resolved(target, addresses, allowed)
    return addresses
