"""The README works when pasted: every shell block of its Quickstart and Crawling sections runs
against a started platform (a real API on a port, a real worker, a local site to crawl), with
only the variables the README asks the reader to define ($API, $KEY, $SITE) substituted. Each
block must exit 0 and no answer may carry an error envelope."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OrgKey
from tests.sites.site import GeneratedSite

ROOT = Path(__file__).resolve().parents[2]
#: Lines that define what the test provides itself (where the API is, the reader's key).
PROVIDED = re.compile(r"^\s*(export\s+)?(API|KEY|SITE)=")
#: An error answer (a job's own `"error": null` is not one).
ERROR_ENVELOPE = re.compile(r'"error"\s*:\s*\{')


def shell_blocks(section: str) -> list[str]:
    """The ```bash blocks of the README section headed ``## <section>`` (to the next ``## ``)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return re.findall(r"```bash\n(.*?)```", body, flags=re.DOTALL)


@pytest.fixture(scope="module")
def small_site() -> Iterator[GeneratedSite]:
    with GeneratedSite(pages=12) as running:
        yield running


def _run(block: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = "\n".join(line for line in block.splitlines() if not PROVIDED.match(line))
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("section", ["Quickstart", "Crawling"])
def test_the_readme_blocks_run_as_written(
    section: str,
    live_api: str,
    org: OrgKey,
    worker: object,
    runtime: object,
    small_site: GeneratedSite,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from config import get_settings

    # The in-process worker crawls the local site: the allow-list the README names.
    monkeypatch.setattr(get_settings(), "crawl_allowed_hosts", small_site.allowed_hosts)
    monkeypatch.setattr(get_settings(), "crawl_split_threshold", 10**9)
    blocks = shell_blocks(section)
    assert blocks, f"no shell block in {section}"
    env = {
        **os.environ,
        "API": live_api,
        "KEY": org.key,
        "SITE": f"{small_site.base}/",
        # What `conveyor up` writes to the credentials file for the CLI lines.
        "CONVEYOR_API_URL": live_api,
        "CONVEYOR_API_KEY": org.key,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for block in blocks:
        if all(PROVIDED.match(line) or not line.strip() for line in block.splitlines()):
            continue  # the variable definitions: the test provides their values
        done = _run(block, env, tmp_path)
        shown = f"{block}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}"
        assert done.returncode == 0, shown
        assert done.stdout.strip(), shown  # each block answers with JSON
        assert not ERROR_ENVELOPE.search(done.stdout), shown
    for leftover in ("crawl.md", "docs.md"):  # files the Crawling block writes
        path = ROOT / leftover
        if path.exists():
            assert path.stat().st_size > 0
            path.unlink()
