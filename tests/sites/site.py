"""A deterministic generated website served by a real HTTP server on 127.0.0.1.

``GeneratedSite(pages=N).start()`` serves N interlinked ~20 KB article pages with realistic
boilerplate (nav, sidebar, cookie banner, footer), plus, when ``traps=True``: JavaScript-only
pages, redirects and redirect chains, a redirect loop, a redirect to a private address (the
"canary" server on 127.0.0.2 that counts every request it gets: it must get none), robots.txt
with a disallowed section, a sitemap index with orphan pages, slow pages, 404/500, a flaky 503
with ``Retry-After``, binary files, a page over 10 MB, duplicate content and links to private
addresses. Everything is generated on demand from the page number, so runs are reproducible.
"""

from __future__ import annotations

import gzip
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WORDS = [
    "crawler",
    "queue",
    "worker",
    "browser",
    "render",
    "markdown",
    "table",
    "header",
    "latency",
    "throughput",
    "sitemap",
    "robots",
    "request",
    "response",
    "cluster",
    "deploy",
    "backup",
    "restore",
    "volume",
    "bucket",
    "index",
    "token",
    "model",
    "batch",
    "stream",
    "cursor",
    "page",
    "frontier",
    "scope",
    "depth",
    "redirect",
    "cookie",
    "session",
    "cache",
    "proxy",
    "socket",
    "thread",
    "process",
    "signal",
    "retry",
    "backoff",
    "budget",
    "limit",
    "window",
    "metric",
    "probe",
    "health",
    "ready",
    "alive",
    "replica",
    "shard",
]
JS_PAGES = 5
ORPHANS = 5
HUGE_BYTES = 11 * 1024 * 1024


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 16)) for _ in range(rng.randint(4, 7)))


BOILER_HEAD = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{title}</title><meta name="description" content="{desc}">
<link rel="stylesheet" href="/static/site.css"><style>body{{font-family:sans-serif}}
.sidebar{{float:right;width:30%}} .cookie-banner{{position:fixed;bottom:0}}</style>
<script>window.analytics={{q:[],track:function(e){{this.q.push(e)}}}};</script></head><body>
<div class="cookie-banner" id="cookie-consent">We use cookies to improve your experience.
<button>Accept all</button> <a href="/privacy">Privacy policy</a></div>
<header class="site-header"><a class="logo" href="/">Conveyor Test Site</a>
<nav><ul><li><a href="/">Home</a></li><li><a href="/list/0">Articles</a></li>
<li><a href="/about">About</a></li><li><a href="/contact">Contact</a></li></ul></nav></header>
"""
BOILER_TAIL = """<aside class="sidebar"><h3>Popular</h3><ul>{popular}</ul>
<h3>Newsletter</h3><form><input type="email" placeholder="you@example.com"><button>Join</button>
</form></aside><footer class="site-footer"><p>&copy; 2026 Conveyor Test Site.
<a href="/about">About</a> · <a href="/privacy">Privacy</a> · <a href="/terms">Terms</a></p>
<p>{footer}</p></footer><script>document.querySelectorAll('a').forEach(function(a){{}});</script>
</body></html>"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up (timeouts, size limits) is expected here, not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass
class GeneratedSite:
    """Serves the site on 127.0.0.1:<port> and the canary on 127.0.0.2:<canary_port>."""

    pages: int = 300
    traps: bool = True
    crawl_delay: float | None = None
    host: str = "127.0.0.1"
    canary_host: str = "127.0.0.2"
    hits: Counter[str] = field(default_factory=Counter)
    canary_hits: list[str] = field(default_factory=list)
    port: int = 0
    canary_port: int = 0
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> GeneratedSite:
        site = self

        class Handler(_Handler):
            owner = site

        class CanaryHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.canary_hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<html><body><h1>INTERNAL SECRET</h1></body></html>")

            def log_message(self, format: str, *args: object) -> None:
                pass

        main = _Server((self.host, self.port), Handler)
        main.daemon_threads = True
        self.port = main.server_address[1]
        canary = _Server((self.canary_host, self.canary_port), CanaryHandler)
        canary.daemon_threads = True
        self.canary_port = canary.server_address[1]
        self._servers = [main, canary]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> GeneratedSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def canary_url(self) -> str:
        return f"http://{self.canary_host}:{self.canary_port}/secret"

    @property
    def allowed_hosts(self) -> str:
        """The allow-list entry that lets a crawl reach this site (and not the canary)."""
        return f"{self.host}:{self.port}"

    # ---- what a full crawl from / finds -----------------------------------------------------
    def article_urls(self) -> list[str]:
        return [f"{self.base}/articles/{i}" for i in range(self.pages)]

    def robots_txt(self) -> str:
        lines = ["User-agent: *", "Disallow: /private/"]
        if self.crawl_delay is not None:
            lines.append(f"Crawl-delay: {self.crawl_delay}")
        lines.append(f"Sitemap: {self.base}/sitemap.xml")
        return "\n".join(lines) + "\n"

    # ---- pages ------------------------------------------------------------------------------
    def article(self, i: int) -> bytes:
        return _article(self.pages, self.traps, i)

    def listing(self, n: int) -> bytes:
        per = 50
        start = n * per
        items = "".join(
            f'<li><a href="/articles/{i}">Article {i}</a></li>'
            for i in range(start, min(start + per, self.pages))
        )
        nxt = f'<a href="/list/{n + 1}">Next page</a>' if start + per < self.pages else ""
        body = f"<main><h1>Articles, page {n}</h1><ul>{items}</ul>{nxt}</main>"
        return _wrap(f"Articles {n}", "Listing", body, n)

    def home(self) -> bytes:
        extra = ""
        if self.traps:
            extra = (
                "<h2>Special pages</h2><ul>"
                + "".join(f'<li><a href="/js/{i}">JS page {i}</a></li>' for i in range(JS_PAGES))
                + '<li><a href="/redirect/3">Old article 3</a></li>'
                + '<li><a href="/redirect-chain">Moved</a></li>'
                + '<li><a href="/loop/a">Loop</a></li>'
                + '<li><a href="/redirect-private">Internal</a></li>'
                + '<li><a href="/status/404">Missing</a></li>'
                + '<li><a href="/status/500">Broken</a></li>'
                + '<li><a href="/files/report.pdf">Report (PDF)</a></li>'
                + '<li><a href="/files/logo.png">Logo</a></li>'
                + '<li><a href="/private/0">Private</a></li>'
                + '<li><a href="/private-links">Links to internal hosts</a></li>'
                + '<li><a href="/dup/0">Duplicate</a></li>'
                + '<li><a href="/huge">Huge page</a></li>'
                + "</ul>"
            )
        body = (
            "<main><h1>Welcome to the Conveyor test site</h1>"
            f"<p>{_paragraph(random.Random(-1))}</p>"
            '<p><a href="/list/0">All articles</a> · <a href="/articles/0">First article</a></p>'
            f"{extra}</main>"
        )
        return _wrap("Home", "The home page", body, 0)

    def js_page(self, i: int) -> bytes:
        text = _paragraph(random.Random(10_000 + i))
        return (
            "<!doctype html><html><head><title>JS page "
            f"{i}</title></head><body><noscript>You need to enable JavaScript to run this app."
            '</noscript><div id="root"></div><script>'
            "setTimeout(function(){document.getElementById('root').innerHTML="
            f"'<h1>JS page {i}</h1><p>Rendered by JavaScript: {text}</p>"
            f'<a href="/articles/{i}">Article {i}</a>\';}}, 50);'
            "</script></body></html>"
        ).encode()

    def js_probe(self) -> bytes:
        """A JS page whose scripts try to reach the canary (fetch, image): both must be blocked."""
        return (
            "<!doctype html><html><head><title>Probe</title></head><body>"
            '<div id="root"></div>'
            f'<img src="{self.canary_url}?via=img">'
            f"<script>fetch('{self.canary_url}?via=fetch').catch(function(){{}});"
            "document.getElementById('root').innerHTML='<h1>Probe page</h1><p>"
            + ("Probe content. " * 30)
            + "</p>';</script></body></html>"
        ).encode()

    def sitemap_index(self) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{self.base}/sitemap-articles.xml</loc></sitemap>"
            f"<sitemap><loc>{self.base}/sitemap-orphans.xml</loc></sitemap>"
            "</sitemapindex>"
        ).encode()

    def sitemap(self, name: str) -> bytes | None:
        if name == "articles":
            urls = [f"{self.base}/articles/{i}" for i in range(0, self.pages, 10)]
        elif name == "orphans":
            urls = [f"{self.base}/orphan/{i}" for i in range(ORPHANS)] if self.traps else []
        else:
            return None
        locs = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'
        ).encode()


@lru_cache(maxsize=4096)
def _article(total: int, traps: bool, i: int) -> bytes:
    rng = random.Random(i)
    title = f"Article {i}: {_sentence(rng, 4)[:-1]}"
    sections = []
    for s in range(6):
        paras = "".join(f"<p>{_paragraph(rng)}</p>" for _ in range(4))
        sections.append(f"<h2>Section {s + 1}</h2>{paras}")
    code = (
        '<pre><code class="language-python">def handler(job):\n'
        f"    return job.pages_crawled + {i}\n</code></pre>"
    )
    table = (
        "<table><thead><tr><th>Metric</th><th>Value</th></tr></thead><tbody>"
        f"<tr><td>pages</td><td>{i * 3}</td></tr><tr><td>depth</td><td>{i % 7}</td></tr>"
        "</tbody></table>"
    )
    related = sorted({(i * 7 + k * 13 + 1) % total for k in range(4)} - {i})
    links = "".join(f'<li><a href="/articles/{j}">Related article {j}</a></li>' for j in related)
    nav = []
    if i > 0:
        nav.append(f'<a href="/articles/{i - 1}">Previous</a>')
    if i + 1 < total:
        # A tracking parameter and a fragment that normalisation must see through (traps only:
        # the benchmark site keeps plain links so every crawler fetches the same pages).
        query = "?utm_source=next#top" if traps else ""
        nav.append(f'<a href="/articles/{i + 1}{query}">Next</a>')
    body = (
        f"<main><article><header><h1>{title}</h1><p class='byline'>By Robot {i % 5}</p></header>"
        f"{sections[0]}{code}{sections[1]}{table}{''.join(sections[2:])}"
        f"<h2>Related</h2><ul>{links}</ul><p>{' · '.join(nav)}</p></article></main>"
    )
    return _wrap(title, f"Summary of article {i}", body, i)


def _wrap(title: str, desc: str, body: str, seed: int) -> bytes:
    rng = random.Random(seed + 7)
    popular = "".join(f'<li><a href="/list/0">{_sentence(rng, 3)[:-1]}</a></li>' for _ in range(20))
    menu = "".join(
        f'<li><a href="/list/0">{rng.choice(WORDS).title()} {rng.choice(WORDS)}</a></li>'
        for _ in range(40)
    )
    footer = _paragraph(rng)
    return (
        BOILER_HEAD.format(title=title, desc=desc)
        + f'<nav class="mega-menu"><ul>{menu}</ul></nav>'
        + body
        + BOILER_TAIL.format(popular=popular, footer=footer)
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    owner: GeneratedSite
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "text/html; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 1024:
            body = gzip.compress(body, 1)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self._send(status, b"", headers={"Location": location})

    def do_GET(self) -> None:
        site = self.owner
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        site.hits[path] += 1
        seg = path.strip("/").split("/")
        if path == "/":
            return self._send(200, site.home())
        if path == "/robots.txt":
            return self._send(200, site.robots_txt().encode(), "text/plain")
        if path == "/sitemap.xml":
            return self._send(200, site.sitemap_index(), "application/xml")
        if path.startswith("/sitemap-") and path.endswith(".xml"):
            xml = site.sitemap(path[len("/sitemap-") : -len(".xml")])
            return self._send(200, xml, "application/xml") if xml else self._send(404)
        if len(seg) == 2 and seg[1].isdigit():
            n = int(seg[1])
            if seg[0] == "articles" and n < site.pages:
                return self._send(200, site.article(n))
            if seg[0] == "list" and n * 50 < max(site.pages, 1):
                return self._send(200, site.listing(n))
            if site.traps and seg[0] == "js" and n < JS_PAGES:
                return self._send(200, site.js_page(n))
            if site.traps and seg[0] in ("orphan", "private"):
                return self._send(
                    200,
                    _wrap(
                        f"{seg[0]} {n}",
                        seg[0],
                        f"<main><h1>{seg[0].title()} page {n}</h1>"
                        f"<p>{_paragraph(random.Random(n + 500))}</p></main>",
                        n,
                    ),
                )
            if site.traps and seg[0] == "redirect":
                return self._redirect(301, f"/articles/{n}")
            if site.traps and seg[0] == "dup":
                return self._send(200, site.article(n))
            if seg[0] == "status":
                return self._send(n, f"<html><body><h1>Error {n}</h1></body></html>".encode())
        if not site.traps:
            return self._send(404, b"<html><body>Not found</body></html>")
        return self._trap(path, query)

    def _trap(self, path: str, query: dict[str, list[str]]) -> None:
        site = self.owner
        if path == "/redirect-chain":
            return self._redirect(302, "/redirect-chain/2")
        if path == "/redirect-chain/2":
            return self._redirect(307, f"{site.base}/articles/1")
        if path == "/loop/a":
            return self._redirect(302, "/loop/b")
        if path == "/loop/b":
            return self._redirect(302, "/loop/a")
        if path == "/redirect-private":
            return self._redirect(302, site.canary_url)
        if path == "/slow":
            time.sleep(float(query.get("s", ["3"])[0]))
            return self._send(200, site.article(0))
        if path == "/flaky":
            key = query.get("key", ["x"])[0]
            if site.hits[f"flaky:{key}"] == 0:
                site.hits[f"flaky:{key}"] += 1
                return self._send(503, b"busy", headers={"Retry-After": "1"})
            return self._send(200, site.article(2))
        if path == "/files/report.pdf":
            return self._send(200, b"%PDF-1.4\n" + bytes(range(256)) * 64, "application/pdf")
        if path == "/files/logo.png":
            return self._send(200, b"\x89PNG\r\n\x1a\n" + bytes(2048), "image/png")
        if path == "/huge":
            return self._huge()
        if path == "/private-links":
            links = "".join(
                f'<li><a href="{u}">{u}</a></li>'
                for u in (
                    "http://10.0.0.1/admin",
                    "http://169.254.169.254/latest/meta-data/",
                    "http://[::1]/",
                    "http://2130706433/",
                    "http://localhost/",
                    site.canary_url,
                )
            )
            return self._send(
                200,
                _wrap(
                    "Internal links",
                    "x",
                    f"<main><h1>Internal links</h1><ul>{links}</ul>"
                    f"<p>{_paragraph(random.Random(3))}</p></main>",
                    3,
                ),
            )
        if path == "/echo-headers":
            rows = "".join(
                f"<tr><td>{k.lower()}</td><td>{v}</td></tr>"
                for k, v in sorted(self.headers.items())
            )
            body = f"<main><h1>Request headers</h1><table>{rows}</table></main>"
            return self._send(200, _wrap("Headers", "x", body, 5))
        if path == "/js-probe":
            return self._send(200, site.js_probe())
        if path == "/no-type":
            self.send_response(200)
            body = site.article(4)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return self._send(404, b"<html><body><h1>Not found</h1></body></html>")

    def _huge(self) -> None:
        """Over 10 MB without a Content-Length (chunked), so only a streaming limit stops it."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"<p>" + b"x" * 65_000 + b"</p>"
        sent = 0
        try:
            while sent < HUGE_BYTES:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
