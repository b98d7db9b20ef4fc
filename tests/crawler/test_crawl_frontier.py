"""URL normalisation, scope, the exact page budget, robots.txt and sitemaps."""

from __future__ import annotations

import gzip

import pytest
from protego import Protego

from crawler.frontier import Scope, normalize_url
from crawler.robots import parse_sitemap


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("HTTP://Example.COM:80/a/b/", "http://example.com/a/b"),
        ("https://example.com:443/", "https://example.com/"),
        ("https://example.com", "https://example.com/"),
        ("http://example.com:8080/x#frag", "http://example.com:8080/x"),
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        ("http://example.com/p?b=2&a=1&a=0", "http://example.com/p?a=0&a=1&b=2"),
        ("http://example.com/p?utm_source=x&id=3&fbclid=y", "http://example.com/p?id=3"),
        ("http://example.com/caf%C3%A9", "http://example.com/caf%C3%A9"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://[::1]:80/", "http://[::1]/"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected


def test_ignore_query_params() -> None:
    assert normalize_url("http://e.com/p?id=3", ignore_query_params=True) == "http://e.com/p"


def test_scope_hosts_paths_depth() -> None:
    scope = Scope.for_url(
        "https://docs.example.com/start",
        include_paths=[r"^/guide/"],
        exclude_paths=[r"/old$"],
        max_depth=2,
    )
    assert scope.allows("https://docs.example.com/guide/a", 1)
    assert not scope.allows("https://docs.example.com/blog/a", 1)  # not included
    assert not scope.allows("https://docs.example.com/guide/old", 1)  # excluded
    assert not scope.allows("https://docs.example.com/guide/a", 3)  # too deep
    assert not scope.allows("https://api.example.com/guide/a", 1)  # other host
    assert not scope.allows("mailto:x@example.com", 1)
    subs = Scope.for_url("https://www.example.com/", allow_subdomains=True)
    assert subs.allows("https://api.example.com/x", 5)
    assert subs.allows("https://example.com/x", 5)
    assert not subs.allows("https://example.org/x", 1)
    assert not subs.allows("https://badexample.com/x", 1)


def test_robots_rules_via_protego() -> None:
    rules = Protego.parse("User-agent: *\nDisallow: /private/\nCrawl-delay: 2\n")
    assert not rules.can_fetch("http://s.test/private/1", "ConveyorBot")
    assert rules.can_fetch("http://s.test/articles/1", "ConveyorBot")
    assert rules.crawl_delay("ConveyorBot") == 2


def test_parse_sitemap_index_urlset_and_gzip() -> None:
    index = (
        b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<sitemap><loc>http://s.test/a.xml</loc></sitemap></sitemapindex>"
    )
    assert parse_sitemap(index) == ([], ["http://s.test/a.xml"])
    urlset = (
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc> http://s.test/1 '
        b"</loc></url><url><loc>javascript:alert(1)</loc></url></urlset>"
    )
    assert parse_sitemap(urlset) == (["http://s.test/1"], [])
    assert parse_sitemap(gzip.compress(urlset)) == (["http://s.test/1"], [])
    assert parse_sitemap(b"not xml at all <<<") == ([], [])
    entity = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><urlset><url><loc>&e;</loc></url></urlset>'
    assert parse_sitemap(entity) == ([], [])
