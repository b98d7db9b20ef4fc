"""The token relay's process-wide parts against a real Redis: one ``XREAD`` serving every
followed stream (``RelayReader``), one subscription watching every running job for a cancel
(``CancelWatcher``), and both riding out a Redis restart (a private ``redis-server``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from inference import relay
from tests.faults import harness
from tests.faults.harness import PrivateRedis


def _calls(url: str, command: str) -> int:
    stats = sync_redis.Redis.from_url(url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _jobs(n: int) -> list[str]:
    return [f"relay-test-{uuid.uuid4().hex}" for _ in range(n)]


async def _read_all(client: Redis, job_id: str, timeout: float = 10.0) -> list[relay.RelayEvent]:
    """Read a job's events up to its ``end`` the way the API does (``after`` = last seen)."""
    got: list[relay.RelayEvent] = []
    after = "0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in await relay.read(client, job_id, after, block_ms=250):
            got.append(event)
            after = event.id
            if event.type == "end":
                return got
    raise AssertionError(f"{job_id}: no end after {timeout}s ({len(got)} events)")


def test_one_xread_serves_every_followed_stream(services: dict[str, object]) -> None:
    url = str(services["broker_url"])
    jobs = _jobs(40)

    async def scenario() -> list[list[relay.RelayEvent]]:
        client = Redis.from_url(url)
        readers = [asyncio.ensure_future(_read_all(client, job)) for job in jobs]
        await asyncio.sleep(0.2)  # every reader is following before the first event
        writer = Redis.from_url(url)
        for step in range(10):
            await asyncio.gather(
                *(relay.publish(writer, job, "chunk", f"{job}:{step}") for job in jobs)
            )
            await asyncio.sleep(0.01)
        await asyncio.gather(*(relay.publish(writer, job, "end") for job in jobs))
        try:
            return await asyncio.gather(*readers)
        finally:
            await client.aclose()
            await writer.aclose()

    before = _calls(url, "xread")
    results = asyncio.run(scenario())
    xreads = _calls(url, "xread") - before
    for job, events in zip(jobs, results, strict=True):
        assert [e.data for e in events if e.type == "chunk"] == [f"{job}:{n}" for n in range(10)]
    # 40 streams x 11 events were read one stream at a time before: 440 XREADs at the least.
    assert xreads < 60, xreads


def test_a_new_follower_wakes_the_blocked_xread(services: dict[str, object]) -> None:
    url = str(services["broker_url"])
    idle, busy = _jobs(2)

    async def scenario() -> float:
        client = Redis.from_url(url)
        writer = Redis.from_url(url)
        waiting = asyncio.ensure_future(relay.read(client, idle, "0", block_ms=3000))
        await asyncio.sleep(0.3)  # the reader's XREAD now blocks (up to 5 s) on `idle` alone
        await relay.publish(writer, busy, "chunk", "x")
        start = time.monotonic()
        events = await relay.read(client, busy, "0", block_ms=3000)
        took = time.monotonic() - start
        assert [e.data for e in events] == ["x"]
        waiting.cancel()
        await client.aclose()
        await writer.aclose()
        return took

    assert asyncio.run(scenario()) < 0.5


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with harness.private_redis("cvy_relay_redis_") as server:
        yield server


def test_the_reader_raises_a_lost_redis_then_resumes(private_redis: PrivateRedis) -> None:
    (job,) = _jobs(1)

    async def scenario() -> list[str]:
        client = Redis.from_url(private_redis.url)
        writer = Redis.from_url(private_redis.url)
        await relay.publish(writer, job, "chunk", "before")
        (first,) = await relay.read(client, job, "0")
        assert first.data == "before"
        private_redis.stop()
        with pytest.raises(sync_redis.exceptions.ConnectionError):
            for _ in range(40):  # the failure reaches the job's next read
                assert await relay.read(client, job, first.id, block_ms=250) == []
        private_redis.start()
        await writer.aclose()
        writer = Redis.from_url(private_redis.url)  # the old one's connections died with it
        await relay.publish(writer, job, "chunk", "after")
        seen: list[str] = []
        for _ in range(40):
            try:
                seen += [e.data for e in await relay.read(client, job, first.id, block_ms=250)]
            except sync_redis.exceptions.ConnectionError:
                continue  # a failure recorded before the restart
            if "after" in seen:
                break
        await client.aclose()
        await writer.aclose()
        return seen

    assert "after" in asyncio.run(scenario())


def test_one_subscription_watches_every_job_for_a_cancel(services: dict[str, object]) -> None:
    url = str(services["broker_url"])
    jobs = _jobs(20)
    flagged = _jobs(1)[0]

    async def scenario() -> None:
        client = Redis.from_url(url)
        api = Redis.from_url(url)
        await relay.request_cancel(api, flagged)  # asked before its job started
        async with (
            relay.cancel_watch(client, flagged) as early,
            relay.cancel_watch(client, jobs[0]) as first,
        ):
            assert early.is_set() and not first.is_set()
            events = [first]
            async with asyncio.timeout(5):
                watcher = relay._WATCHERS[client]
                await watcher.subscribed.wait()
            managers = [relay.cancel_watch(client, job) for job in jobs[1:]]
            events += [await m.__aenter__() for m in managers]
            numsub = dict(await api.pubsub_numsub(relay.CANCEL_CHANNEL))
            assert numsub[relay.CANCEL_CHANNEL.encode()] == 1  # not one per job
            await relay.request_cancel(api, jobs[7])
            async with asyncio.timeout(1):
                await events[7].wait()
            assert [e.is_set() for e in events] == [n == 7 for n in range(20)]
            for manager in managers:
                await manager.__aexit__(None, None, None)
        assert not relay._WATCHERS[client].watched
        await client.aclose()
        await api.aclose()

    asyncio.run(scenario())


def test_the_watcher_subscribes_again_after_a_redis_restart(
    private_redis: PrivateRedis,
) -> None:
    (job,) = _jobs(1)

    async def scenario() -> None:
        client = Redis.from_url(private_redis.url)
        async with relay.cancel_watch(client, job) as cancelled:
            watcher = relay._WATCHERS[client]
            async with asyncio.timeout(5):
                await watcher.subscribed.wait()
            private_redis.stop()
            private_redis.start()
            api = Redis.from_url(private_redis.url)
            await relay.request_cancel(api, job)  # announced during or after the gap
            async with asyncio.timeout(10):
                await cancelled.wait()
            await api.aclose()
        await client.aclose()

    asyncio.run(scenario())


def test_the_first_answer_keeps_what_was_read_with_it(services: dict[str, object]) -> None:
    """A stream whose whole reply is in Redis before the API's first read (a fast worker, a
    busy API): the events after the first answer are the next ones, not dropped (the stream
    would otherwise wait for an ``end`` it already read)."""
    from api.routers.openai import _Waiter
    from common.redis_clients import async_client

    (job,) = _jobs(1)

    class Request:
        async def receive(self) -> dict[str, str]:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

    async def scenario() -> list[str]:
        writer = async_client()
        for kind, data in (("started", ""), ("chunk", "a"), ("chunk", "b"), ("end", "")):
            await relay.publish(writer, job, kind, data)  # type: ignore[arg-type]
        waiter = _Waiter(job, Request())  # type: ignore[arg-type]
        try:
            first = await waiter.first_answer()
            rest = await asyncio.wait_for(waiter.next_events(), 2)
        finally:
            waiter.close()
        return [first.data, *(e.type + e.data for e in rest)]

    assert asyncio.run(scenario()) == ["a", "chunkb", "end"]


def test_an_entry_not_written_by_publish_is_skipped(services: dict[str, object]) -> None:
    """A stray entry in a job's stream (no type) neither stops the process's reader nor
    reaches the job's reader; what follows it does."""
    url = str(services["broker_url"])
    (job,) = _jobs(1)

    async def scenario() -> list[str]:
        client = Redis.from_url(url)
        writer = Redis.from_url(url)
        reading = asyncio.ensure_future(_read_all(client, job))
        await asyncio.sleep(0.1)
        await writer.xadd(relay.events_key(job), {"junk": "1"})
        await relay.publish(writer, job, "chunk", "kept")
        await relay.publish(writer, job, "end")
        events = await reading
        await client.aclose()
        await writer.aclose()
        return [e.type + e.data for e in events]

    assert asyncio.run(scenario()) == ["chunkkept", "end"]
