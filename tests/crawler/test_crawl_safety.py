"""The SSRF guard: every address form, the allow-list, and the check at connect time."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import pytest

from crawler.fetch import _GuardedBackend
from crawler.safety import AllowList, UnsafeURLError, check_url, check_url_async

BLOCKED = [
    "http://127.0.0.1/",
    "http://127.0.0.53:8080/x",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://foo.localhost/",
    "http://printer.local/",
    "http://metadata.google.internal/",
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0177.0.0.1/",  # octal
    "http://0x7f.0.0.1/",  # hex
    "http://127.1/",  # short form
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "http://[::ffff:a9fe:a9fe]/",  # mapped metadata address
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2002:c0a8:101::]/",  # 6to4 of 192.168.1.1
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # shared address space
    "http://224.0.0.1/",  # multicast
    "http://255.255.255.255/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
    "http://user:pass@93.184.215.14/",
    "http:///nohost",
]


@pytest.mark.parametrize("url", BLOCKED)
def test_refuses_private_and_obfuscated_forms(url: str) -> None:
    with pytest.raises(UnsafeURLError) as info:
        check_url(url)
    assert info.value.code == "unsafe_url" and info.value.status_code == 422


@pytest.mark.parametrize("url", BLOCKED)
def test_async_variant_agrees(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        asyncio.run(check_url_async(url))


@pytest.mark.parametrize("url", ["http://93.184.215.14/", "https://8.8.8.8:8443/a?b=c"])
def test_public_literals_pass(url: str) -> None:
    check_url(url)


def test_allow_list_host_port_is_exact() -> None:
    allowed = AllowList.parse("127.0.0.1:8081")
    check_url("http://127.0.0.1:8081/page", allowed)
    with pytest.raises(UnsafeURLError):
        check_url("http://127.0.0.1:8082/page", allowed)
    with pytest.raises(UnsafeURLError):
        check_url("http://127.0.0.2:8081/page", allowed)


def test_allow_list_cidr_and_names() -> None:
    allowed = AllowList.parse(" 10.1.0.0/16 , intranet.test, [::1]:9000")
    check_url("http://10.1.200.3/", allowed)
    check_url("http://intranet.test/", allowed)  # by name: no resolution needed
    check_url("http://[::1]:9000/", allowed)
    with pytest.raises(UnsafeURLError):
        check_url("http://10.2.0.1/", allowed)
    # Obfuscated forms stay refused even when their address is allowed.
    with pytest.raises(UnsafeURLError):
        check_url("http://0x0a.1.0.1/", allowed)


def test_empty_allow_list_is_falsy_and_default() -> None:
    assert not AllowList.parse("")
    assert not AllowList.parse(None)
    assert AllowList.parse("a.test")


def test_unresolvable_name_is_refused_unless_asked() -> None:
    with pytest.raises(UnsafeURLError):
        check_url("http://no-such-host.invalid/")
    check_url("http://no-such-host.invalid/", unresolvable_ok=True)


def test_connect_time_check_blocks_resolved_private_address() -> None:
    """The transport re-checks the address it connects to (DNS rebinding protection)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def connect(allowed: AllowList) -> None:
        stream = await _GuardedBackend(allowed).connect_tcp("127.0.0.1", port, timeout=2)
        await stream.aclose()

    try:
        with pytest.raises(UnsafeURLError):
            asyncio.run(connect(AllowList()))
        asyncio.run(connect(AllowList.parse(f"127.0.0.1:{port}")))
        with pytest.raises(UnsafeURLError):
            asyncio.run(_GuardedBackend(AllowList()).connect_unix_socket("/tmp/x"))
    finally:
        listener.close()
    assert issubclass(httpcore.ConnectError, Exception)


def test_a_host_that_does_not_resolve_is_a_dns_error_not_unsafe() -> None:
    from crawler.safety import DNSError

    with pytest.raises(DNSError) as info:
        check_url("http://no-such-host.invalid/")
    assert info.value.code == "dns_error" and info.value.status_code == 422


def test_a_refused_private_address_names_the_setting_that_allows_it() -> None:
    with pytest.raises(UnsafeURLError) as info:
        check_url("http://127.0.0.1:8080/")
    assert info.value.code == "unsafe_url"
    assert "CONVEYOR_CRAWL_ALLOWED_HOSTS" in info.value.message
