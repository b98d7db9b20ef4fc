"""HTML → clean Markdown (and text, links, metadata) with lxml and markdownify.

Conversion is the crawl's CPU bottleneck, so the page is parsed once with lxml, pruned to its
main content there (cheap), and only that fragment goes through markdownify (with the lxml
parser). :func:`convert` is a pure function of its arguments, so it can run in a thread or a
process pool; :class:`Document` pickles.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import lxml.etree
import lxml.html
from lxml.cssselect import CSSSelector
from markdownify import ATX, MarkdownConverter

# Elements that never carry readable content.
_JUNK_TAGS = (
    "script", "style", "noscript", "template", "iframe", "svg", "canvas", "object", "embed",
    "link", "meta", "button", "input", "select", "textarea", "dialog",
)  # fmt: skip
# Page furniture dropped when only the main content is wanted.
_BOILERPLATE_TAGS = ("nav", "aside", "header", "footer")
_BOILERPLATE_ROLES = ("navigation", "banner", "contentinfo", "complementary", "search")
_BOILERPLATE_WORDS = re.compile(
    r"(^|[\s_-])(cookie|cookies|consent|gdpr|advert|ads|sidebar|newsletter|social|share|"
    r"popup|modal|breadcrumbs?|skip-link|subscribe|promo)([\s_-]|$)",
    re.IGNORECASE,
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_LANGUAGE_CLASS = re.compile(r"^(?:language|lang|highlight|brush)[-:]([\w+#.-]+)$", re.IGNORECASE)
_SPA_ROOT_IDS = ("root", "app", "__next", "__nuxt", "svelte", "main-app")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
# Below this many characters of visible text a page probably needs JavaScript to show content.
RENDER_TEXT_THRESHOLD = 200


@dataclass
class Document:
    """A converted page."""

    title: str = ""
    description: str = ""
    language: str = ""
    markdown: str = ""
    html: str = ""
    text: str = ""
    links: list[str] = field(default_factory=list)
    content_hash: str = ""
    needs_render: bool = False


def _code_language(el: Any) -> str:
    """markdownify callback: the language of a ``<pre>`` block from its or its code's class."""
    candidates = [el] + ([el.code] if el.code is not None else [])
    for node in candidates:
        if node.get("data-lang"):
            return str(node["data-lang"])
        for cls in node.get("class") or []:
            match = _LANGUAGE_CLASS.match(cls)
            if match:
                return match.group(1).lower()
    return ""


class _Converter(MarkdownConverter):
    """markdownify configured for clean output."""

    def __init__(self) -> None:
        super().__init__(
            heading_style=ATX,
            bullets="-",
            code_language_callback=_code_language,
            table_infer_header=True,
            escape_underscores=False,
            escape_asterisks=False,
            newline_style="backslash",
            bs4_options="lxml",
        )


_CONVERTER: _Converter | None = None


def _converter() -> _Converter:
    global _CONVERTER
    if _CONVERTER is None:
        _CONVERTER = _Converter()
    return _CONVERTER


@lru_cache(maxsize=256)
def _selector(css: str) -> CSSSelector:
    return CSSSelector(css, translator="html")


@lru_cache(maxsize=16)
def _parser(encoding: str | None) -> lxml.html.HTMLParser:
    return lxml.html.HTMLParser(encoding=encoding, remove_comments=True, remove_pis=True)


def parse_html(html: str | bytes, charset: str | None = None) -> lxml.html.HtmlElement:
    """Parse a page (bytes are decoded by ``charset``, else by the page's meta charset)."""
    if isinstance(html, str):
        html = html.encode("utf-8")
        charset = "utf-8"
    if not html.strip():
        html = b"<html><body></body></html>"
    try:
        return lxml.html.document_fromstring(html, parser=_parser(charset))
    except (lxml.etree.ParserError, LookupError):
        return lxml.html.document_fromstring(html, parser=_parser("utf-8"))


def _drop(elements: Iterable[lxml.html.HtmlElement]) -> None:
    for el in list(elements):
        if el.getparent() is not None:
            el.drop_tree()


def extract_links(doc: lxml.html.HtmlElement) -> list[str]:
    """Absolute http(s) link targets of the page, in order, without duplicates."""
    links: dict[str, None] = {}
    for el in doc.iter("a"):
        href = (el.get("href") or "").strip()
        if href.startswith(("http://", "https://")):
            links[href] = None
    return list(links)


def _has_app_shell(doc: lxml.html.HtmlElement) -> bool:
    """Scripts, a ``noscript`` notice or a known SPA mount point: content may come from JS."""
    if doc.find(".//script") is not None or doc.find(".//noscript") is not None:
        return True
    return any(doc.get_element_by_id(i, None) is not None for i in _SPA_ROOT_IDS)


def _is_boilerplate(el: lxml.html.HtmlElement) -> bool:
    role = (el.get("role") or "").lower()
    if role in _BOILERPLATE_ROLES:
        return True
    marker = f"{el.get('id') or ''} {el.get('class') or ''}"
    return bool(marker.strip()) and _BOILERPLATE_WORDS.search(marker) is not None


def _prune(body: lxml.html.HtmlElement, only_main: bool) -> None:
    _drop(el for el in body.iter(*_JUNK_TAGS))
    _drop(
        el
        for el in body.iter(lxml.etree.Element)
        if el.get("hidden") is not None
        or el.get("aria-hidden") == "true"
        or _HIDDEN_STYLE.search(el.get("style") or "")
    )
    _drop(el for el in body.iter("a") if "headerlink" in (el.get("class") or ""))
    if not only_main:
        return
    _drop(el for el in body.iter(*_BOILERPLATE_TAGS) if not _inside_content(el))
    _drop(el for el in body.iter(lxml.etree.Element) if el.tag != "body" and _is_boilerplate(el))


def _inside_content(el: lxml.html.HtmlElement) -> bool:
    """Headers/footers inside an article or main belong to the content (titles, bylines)."""
    parent = el.getparent()
    while parent is not None:
        if parent.tag in ("article", "main") or parent.get("role") == "main":
            return True
        parent = parent.getparent()
    return False


def _main_root(body: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    mains = body.xpath(".//main | .//*[@role='main']")
    if mains:
        return mains[0]  # type: ignore[no-any-return,unused-ignore]
    articles = body.xpath(".//article")
    if len(articles) == 1:
        return articles[0]  # type: ignore[no-any-return,unused-ignore]
    return body


def _select(body: lxml.html.HtmlElement, selectors: Sequence[str]) -> lxml.html.HtmlElement:
    container = lxml.html.Element("div")
    seen: set[int] = set()
    for css in selectors:
        for el in _selector(css)(body):
            if id(el) not in seen:
                seen.add(id(el))
                container.append(el)  # moves the element: selections never repeat content
    return container


_BLOCK_TAGS = (
    "p", "div", "section", "article", "main", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
    "pre", "blockquote", "table", "ul", "ol", "dl", "dt", "dd", "br", "hr", "figure", "header",
    "footer", "td", "th",
)  # fmt: skip


def _text_of(root: lxml.html.HtmlElement) -> str:
    """Plain text with one line per block (mutates ``root``: call it last)."""
    for el in root.iter(*_BLOCK_TAGS):
        el.tail = ("\t" if el.tag in ("td", "th") else "\n") + (el.tail or "")
    lines = (" ".join(line.split()) for line in root.text_content().splitlines())
    return "\n".join(line for line in lines if line)


def _meta(doc: lxml.html.HtmlElement, *names: str) -> str:
    for name in names:
        for el in doc.xpath(f"//meta[@name='{name}' or @property='{name}']"):
            content = (el.get("content") or "").strip()
            if content:
                return content
    return ""


def convert(
    html: str | bytes,
    base_url: str,
    *,
    charset: str | None = None,
    only_main_content: bool = True,
    include_tags: Sequence[str] = (),
    exclude_tags: Sequence[str] = (),
    want_html: bool = False,
    want_text: bool = False,
) -> Document:
    """Convert one page. Links and image URLs come out absolute against ``base_url``."""
    doc = parse_html(html, charset)
    doc.make_links_absolute(base_url, resolve_base_href=True, handle_failures="discard")
    title_el = doc.find(".//title")
    out = Document(
        title=" ".join((title_el.text_content() if title_el is not None else "").split())
        or _meta(doc, "og:title"),
        description=_meta(doc, "description", "og:description"),
        language=(doc.get("lang") or "").strip(),
        links=extract_links(doc),
    )
    body = doc.body if doc.find("body") is not None else doc
    app_shell = _has_app_shell(doc)
    _drop(el for css in exclude_tags for el in _selector(css)(body))
    _prune(body, only_main_content and not include_tags)
    if include_tags:
        root = _select(body, include_tags)
    elif only_main_content:
        root = _main_root(body)
    else:
        root = body
    fragment = lxml.html.tostring(root, encoding="unicode", method="html")
    markdown = _converter().convert(fragment)
    markdown = _MANY_NEWLINES.sub("\n\n", _TRAILING_SPACES.sub("\n", markdown)).strip()
    out.markdown = markdown
    out.content_hash = hashlib.sha256(markdown.encode("utf-8")).hexdigest()
    text = _text_of(root) if want_text or len(markdown) < RENDER_TEXT_THRESHOLD * 2 else ""
    out.text = text if want_text else ""
    out.needs_render = app_shell and len(text or markdown) < RENDER_TEXT_THRESHOLD
    if want_html:
        out.html = fragment
    return out
