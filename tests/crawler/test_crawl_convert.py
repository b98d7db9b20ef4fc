"""Conversion quality on saved real-world-shaped pages and on the generated site."""

from __future__ import annotations

import time
from pathlib import Path

from crawler.convert import convert
from tests.sites.site import GeneratedSite, _article

FIXTURES = Path(__file__).parent / "fixtures"


def test_docs_page_main_content_code_tables_links() -> None:
    html = (FIXTURES / "docs_page.html").read_bytes()
    doc = convert(html, "https://docs.fastwidget.dev/en/stable/install.html", want_text=True)
    md = doc.markdown
    assert doc.title == "Installation — FastWidget 2.3 documentation"
    assert doc.description.startswith("How to install")
    assert doc.language == "en-US"
    assert md.startswith("# Installation\n")  # headerlink pilcrow removed, ATX heading
    assert "## From source" in md
    assert "```python\nfrom fastwidget import Widget" in md  # code block with its language
    assert "$ pip install fastwidget" in md
    assert "| Platform | Status | Notes |\n| --- | --- | --- |" in md
    assert (
        "| Windows | beta | see [notes](https://docs.fastwidget.dev/en/stable/windows.html) |" in md
    )
    # <base href> respected, images absolute
    assert "![Architecture diagram](https://docs.fastwidget.dev/en/stable/_images/arch.png)" in md
    for boilerplate in ("Search docs", "Quickstart", "Skip to content", "Copyright", "cookies"):
        assert boilerplate not in md, boilerplate
    assert "https://docs.fastwidget.dev/en/stable/quickstart.html" in doc.links  # links: whole page
    assert "Installation" in doc.text and "```" not in doc.text


def test_news_article_drops_ads_share_hidden_and_keeps_byline() -> None:
    html = (FIXTURES / "news_article.html").read_bytes()
    doc = convert(html, "https://planet.test/2026/03/bike-lanes")
    md = doc.markdown
    assert doc.title == "City opens new bike lanes | The Daily Planet"
    assert doc.description == "Twelve kilometres of protected lanes opened on Monday."
    assert md.startswith("# City opens new bike lanes")
    assert "By Lois Lane" in md  # an article's own header is content
    assert "**twelve kilometres**" in md
    assert "[mayor](https://planet.test/people/mayor)" in md
    assert "> Safer streets are better streets." in md
    assert "- Parking moves to the inner lane." in md
    for junk in (
        "Advertisement",
        "Most read",
        "newsletter",
        "Share on X",
        "Hidden tracking",
        "Invisible promo",
        "Weather",
        "Privacy",
    ):
        assert junk not in md, junk


def test_full_page_and_tag_selection() -> None:
    html = (FIXTURES / "news_article.html").read_bytes()
    full = convert(html, "https://planet.test/x", only_main_content=False)
    assert "Most read" in full.markdown and "Weather" in full.markdown
    picked = convert(html, "https://planet.test/x", include_tags=["h1", "blockquote"])
    assert picked.markdown == "# City opens new bike lanes\n\n> Safer streets are better streets."
    dropped = convert(html, "https://planet.test/x", exclude_tags=["blockquote", "ul"])
    assert "Safer streets" not in dropped.markdown and "inner lane" not in dropped.markdown


def test_js_shell_is_flagged_for_rendering(site: GeneratedSite) -> None:
    shell = site.js_page(0)
    assert convert(shell, f"{site.base}/js/0").needs_render
    assert not convert(site.article(0), f"{site.base}/articles/0").needs_render


def test_generated_site_quality_and_speed() -> None:
    """Every article keeps all its sections, code and table, and none of the boilerplate;
    conversion of main content runs well above markdownify's ~31 pages/s per core."""
    pages = [_article(300, True, i) for i in range(60)]
    started = time.perf_counter()
    docs = [convert(p, f"http://s.test/articles/{i}") for i, p in enumerate(pages)]
    rate = len(pages) / (time.perf_counter() - started)
    for i, doc in enumerate(docs):
        md = doc.markdown
        assert md.startswith(f"# Article {i}:")
        assert all(f"## Section {n}" in md for n in range(1, 7))
        assert "```python" in md and "| Metric | Value |" in md
        assert "cookies" not in md and "Newsletter" not in md and "Conveyor Test Site" not in md
    assert rate > 40, f"{rate:.1f} pages/s"


def test_garbage_never_crashes() -> None:
    for raw in (b"", b"\x00\xff\xfe", b"<html><body>", "caf\u00e9 <b>bold".encode("latin-1")):
        convert(raw, "http://s.test/")
