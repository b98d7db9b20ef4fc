"""RAG fixtures: a PostgreSQL server with pgvector from the ``pgserver`` wheel (own data dir, a
Unix socket, started once per session), and the running stack: the API and an inference worker
(tiny chat model + packaged MiniLM) as subprocesses, plus an ingest worker subprocess."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.testing import Stack, build_tiny_model
from tests.helpers import ServiceProcess


@pytest.fixture(scope="session")
def pgvector_url() -> Iterator[str]:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver

    folder = Path(tempfile.mkdtemp(prefix="conveyor-pgvector-"))
    server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    server.psql("CREATE DATABASE rag_index;")
    yield f"postgresql://postgres@/rag_index?host={folder}"
    server.cleanup()


def _stack(tmp: Path, index_url: str) -> tuple[Stack, ServiceProcess]:
    import redis

    from inference.relay import MODELS_KEY

    tiny = build_tiny_model(tmp / "tiny", context_length=2048)
    redis.Redis.from_url(os.environ["CONVEYOR_BROKER_URL"]).delete(MODELS_KEY)
    env = {
        **os.environ,
        "CONVEYOR_MODELS": f"tiny={tiny}",
        "CONVEYOR_INFERENCE_DEVICE": "cpu",
        "CONVEYOR_RAG_INDEX_URL": index_url,
        "CONVEYOR_CRAWL_ALLOWED_HOSTS": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    stack = Stack(env, concurrency=4, log_dir=tmp / "logs")
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "ingest,crawl",
        "-P", "threads", "-c", "2", "-n", f"rag-{stack.port}@%h", "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    ingest = ServiceProcess(cmd, env=env, log=tmp / "logs" / "ingest.log")
    try:
        stack.wait_ready(["tiny", "all-MiniLM-L6-v2"])
    except BaseException:
        stack.stop()
        ingest.stop()
        raise
    return stack, ingest


@pytest.fixture(scope="module")
def rag_stack(
    migrated: dict[str, object],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    backend = getattr(request, "param", "embedded")
    tmp = tmp_path_factory.mktemp(f"rag-{backend}")
    url = (
        f"sqlite:///{tmp / 'index.db'}"
        if backend == "embedded"
        else request.getfixturevalue("pgvector_url")
    )
    stack, ingest = _stack(tmp, url)
    # A crawl job goes to any worker on the crawl queue: the session's in-process worker too,
    # which must allow the local test site as the stack's workers do.
    from config import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(get_settings(), "crawl_allowed_hosts", "127.0.0.1")
        yield stack
    stack.stop()
    ingest.stop()
