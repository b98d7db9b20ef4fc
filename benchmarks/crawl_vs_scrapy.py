"""Crawl a generated 2,000-page site with Scrapy (+ markdownify pipeline) and with Conveyor
(REST API, production shape: PostgreSQL, Redis, a prefork crawl worker group), same run.

    .venv/bin/python benchmarks/crawl_vs_scrapy.py [--pages 2000] [--rendered 200]

Prints pages/s of each, ``ratio=`` Conveyor ÷ Scrapy, peak RSS of the crawling processes,
time from submit to the first page available, and rendered pages/s with ``render=always``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness

SCRAPY_SPIDER = r"""
import json, sys, time
import scrapy
from scrapy.crawler import CrawlerProcess
from markdownify import markdownify

BASE = sys.argv[1]
STATS = {"pages": 0, "first": None}
START = time.monotonic()


class MarkdownPipeline:
    def process_item(self, item, spider):
        item["markdown"] = markdownify(item.pop("html"), heading_style="ATX")
        STATS["pages"] += 1
        if STATS["first"] is None:
            STATS["first"] = time.monotonic() - START
        return item


class SiteSpider(scrapy.Spider):
    name = "site"
    allowed_domains = ["127.0.0.1"]
    start_urls = [BASE + "/"]

    def parse(self, response):
        if not response.headers.get("Content-Type", b"").startswith(b"text/html"):
            return
        yield {"url": response.url, "html": response.text}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, self.parse)


process = CrawlerProcess(settings={
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    "ROBOTSTXT_OBEY": True,
    "LOG_LEVEL": "ERROR",
    "TELNETCONSOLE_ENABLED": False,
    "ITEM_PIPELINES": {"__main__.MarkdownPipeline": 300},
    "USER_AGENT": "ScrapyBench",
})
process.crawl(SiteSpider)
process.start()
print(json.dumps({"pages": STATS["pages"], "elapsed": time.monotonic() - START,
                  "first": STATS["first"], "cpu_s": time.process_time()}))
"""

SITE_SERVER = r"""
import sys, time
from tests.sites.site import GeneratedSite, _article
pages = int(sys.argv[1])
for i in range(pages):
    _article(pages, False, i)  # warm the page cache: the server then only sends bytes
site = GeneratedSite(pages=pages, traps=False).start()
print(site.port, flush=True)
time.sleep(10**6)
"""


class PeakRSS:
    """Samples the memory of a process tree every 100 ms: the sum of PSS (proportional set
    size), so that libraries shared by a browser's many processes are not counted N times."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = 0
                for proc in procs:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        total += proc.memory_full_info().pss
                self.peak = max(self.peak, total)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.1)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak / 2**20


def start_site(pages: int) -> tuple[subprocess.Popen[str], int]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SITE_SERVER, str(pages)],
        cwd=root, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def run_scrapy(base: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(SCRAPY_SPIDER)
    proc = subprocess.Popen(
        [sys.executable, script.name, base], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    rss = PeakRSS(proc.pid)
    out, err = proc.communicate(timeout=1800)
    peak = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"scrapy failed: {err[-2000:]}")
    stats = json.loads(out.strip().splitlines()[-1])
    stats["peak_mem_mb"] = peak
    stats["pages_per_s"] = stats["pages"] / stats["elapsed"]
    stats["cpu_ms_per_page"] = 1000 * stats.pop("cpu_s") / max(1, stats["pages"])
    return stats


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_conveyor(
    api: str, headers: dict[str, str], body: dict[str, Any], worker_pid: int
) -> dict[str, Any]:
    rss = PeakRSS(worker_pid)
    cpu = tree_cpu_s(worker_pid)
    started = time.monotonic()
    r = httpx.post(f"{api}/v1/crawls", json=body, headers=headers, timeout=30)
    r.raise_for_status()
    job_id = r.json()["id"]
    first = None
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if first is None and job.get("pages_crawled", 0) >= 1:
                first = time.monotonic() - started
            if job["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu = tree_cpu_s(worker_pid) - cpu
    peak = rss.stop()
    if job["status"] != "completed":
        raise RuntimeError(f"conveyor crawl ended {job['status']}: {job['error']}")
    return {
        "pages": job["pages_crawled"],
        "failed": job["pages_failed"],
        "elapsed": elapsed,
        "first": first,
        "peak_mem_mb": peak,
        "pages_per_s": job["pages_crawled"] / elapsed,
        "cpu_ms_per_page": 1000 * cpu / max(1, job["pages_crawled"]),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["pages_per_s"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--rendered", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=1, help="Alternate Scrapy/Conveyor runs; medians reported."
    )
    args = parser.parse_args()

    site, port = start_site(args.pages)
    base = f"http://127.0.0.1:{port}"
    scrapy_runs: list[dict[str, Any]] = []
    conveyor_runs: list[dict[str, Any]] = []
    try:
        harness.log(f"site: {args.pages} pages at {base}")
        with harness.services() as bench:
            env = {"CONVEYOR_CRAWL_ALLOWED_HOSTS": f"127.0.0.1:{port}"}
            api_port = harness.free_port()
            api_proc = bench.start(
                "api",
                harness.uvicorn_command("api.app:create_app", api_port, 1, factory=True),
                env,
            )
            worker = bench.start(
                "worker", [sys.executable, "-m", "cli.main", "worker", "--group", "crawl"], env
            )
            api = f"http://127.0.0.1:{api_port}"
            harness.wait_http(f"{api}/v1/health", proc=api_proc)
            org = harness.make_org()
            # Warm-up: a single-page crawl proves the workers are consuming (not timed).
            run_conveyor(api, org.headers, {"url": f"{base}/articles/0"}, worker.pid)
            for round_ in range(args.rounds):
                # Alternate the two in one run so that load on the machine hits both alike.
                scrapy_runs.append(run_scrapy(base))
                harness.log(f"round {round_ + 1} scrapy: {scrapy_runs[-1]}")
                full_crawl = {"url": f"{base}/", "mode": "full", "max_pages": args.pages * 2}
                conveyor_runs.append(run_conveyor(api, org.headers, full_crawl, worker.pid))
                harness.log(f"round {round_ + 1} conveyor: {conveyor_runs[-1]}")
            rendered = run_conveyor(
                api, org.headers,
                {"url": f"{base}/list/0", "mode": "full", "max_pages": args.rendered,
                 "render": "always", "use_sitemap": False},
                worker.pid,
            )  # fmt: skip
            harness.log(f"conveyor render=always: {rendered}")
    finally:
        site.terminate()
        site.wait(timeout=10)

    scrapy_stats, static = _median_run(scrapy_runs), _median_run(conveyor_runs)
    ratio = static["pages_per_s"] / scrapy_stats["pages_per_s"]
    rounds = " ".join(
        f"{c['pages_per_s'] / s['pages_per_s']:.2f}"
        for s, c in zip(scrapy_runs, conveyor_runs, strict=True)
    )
    print(f"site_pages={args.pages} machine_cores={psutil.cpu_count()} rounds={args.rounds}")
    print(
        f"scrapy: pages={scrapy_stats['pages']} pages_per_s={scrapy_stats['pages_per_s']:.1f} "
        f"peak_mem_mb={scrapy_stats['peak_mem_mb']:.0f} first_page_s={scrapy_stats['first']:.2f} "
        f"cpu_ms_per_page={scrapy_stats['cpu_ms_per_page']:.1f}"
    )
    print(
        f"conveyor: pages={static['pages']} pages_per_s={static['pages_per_s']:.1f} "
        f"peak_mem_mb={static['peak_mem_mb']:.0f} (crawl worker group) "
        f"first_page_s={static['first']:.2f} (submit to first page available) "
        f"cpu_ms_per_page={static['cpu_ms_per_page']:.1f} (crawl worker group)"
    )
    print(
        f"conveyor_rendered: pages={rendered['pages']} "
        f"pages_per_s={rendered['pages_per_s']:.1f} peak_mem_mb={rendered['peak_mem_mb']:.0f}"
    )
    mem_ratio = static["peak_mem_mb"] / scrapy_stats["peak_mem_mb"]
    print(f"ratio_per_round={rounds}")
    print(
        f"memory_ratio={mem_ratio:.2f} load_average={' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
