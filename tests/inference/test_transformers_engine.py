"""The transformers engine on a tiny GPT-2: sampling, streaming, batching, stops, limits."""

from __future__ import annotations

import asyncio

import pytest

from inference.engines.base import GenerationRequest, SamplingParams, TextDelta, Usage
from inference.engines.transformers_engine import TransformersEngine
from inference.errors import ContextLengthError, InvalidRequestError


def _req(prompt: str = "Hello world", **params: object) -> GenerationRequest:
    return GenerationRequest(request_id="t", prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


def test_loads_model_directory_and_counts_usage(tiny_engine: TransformersEngine) -> None:
    assert tiny_engine.context_length == 256
    result = asyncio.run(tiny_engine.generate(_req(max_tokens=7, seed=1)))
    assert result.finish_reasons == ["length"]
    assert result.usage.prompt_tokens == tiny_engine.count_tokens("Hello world")
    assert result.usage.completion_tokens == 7
    assert result.texts[0]


def test_stream_yields_deltas_matching_the_full_text(tiny_engine: TransformersEngine) -> None:
    async def run() -> tuple[list[TextDelta], list[Usage]]:
        deltas: list[TextDelta] = []
        usages: list[Usage] = []
        async for event in tiny_engine.stream(_req(max_tokens=20, seed=5)):
            (usages if isinstance(event, Usage) else deltas).append(event)  # type: ignore[arg-type]
        return deltas, usages

    deltas, usages = asyncio.run(run())
    full = asyncio.run(tiny_engine.generate(_req(max_tokens=20, seed=5)))
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == full.texts[0]
    assert deltas[-1].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert usages == [full.usage]


def test_seed_makes_sampling_reproducible(tiny_engine: TransformersEngine) -> None:
    a = asyncio.run(tiny_engine.generate(_req(max_tokens=20, seed=11)))
    b = asyncio.run(tiny_engine.generate(_req(max_tokens=20, seed=11)))
    c = asyncio.run(tiny_engine.generate(_req(max_tokens=20, seed=12)))
    assert a.texts == b.texts
    assert a.texts != c.texts


def test_concurrent_requests_are_batched_and_padding_keeps_results(
    tiny_engine: TransformersEngine,
) -> None:
    prompt = "Workers consume queues"
    alone = asyncio.run(tiny_engine.generate(_req(prompt, max_tokens=12, temperature=0)))

    async def together() -> list[list[str]]:
        others = [f"{'x ' * i}The quick brown fox" for i in range(1, 8)]
        results = await asyncio.gather(
            tiny_engine.generate(_req(prompt, max_tokens=12, temperature=0)),
            *(tiny_engine.generate(_req(p, max_tokens=12, temperature=0)) for p in others),
        )
        return [r.texts for r in results]

    before = tiny_engine.batches_run
    texts = asyncio.run(together())
    assert tiny_engine.batches_run - before < 8  # 8 requests ran in fewer batches
    assert tiny_engine.max_rows_seen >= 2
    assert texts[0] == alone.texts  # left padding does not change a greedy continuation


def test_stop_string_cuts_the_text(tiny_engine: TransformersEngine) -> None:
    full = asyncio.run(tiny_engine.generate(_req(max_tokens=30, seed=21))).texts[0]
    stop = full[10:13]
    expected = full[: full.index(stop)]
    result = asyncio.run(tiny_engine.generate(_req(max_tokens=30, seed=21, stop=(stop,))))
    assert result.texts == [expected]
    assert result.finish_reasons == ["stop"]
    assert result.usage.completion_tokens < 30


def test_n_choices_are_independent_samples(tiny_engine: TransformersEngine) -> None:
    result = asyncio.run(tiny_engine.generate(_req(max_tokens=10, seed=3, n=3)))
    assert len(result.texts) == 3
    assert len(set(result.texts)) == 3
    assert result.usage.completion_tokens == 30


def test_top_p_near_zero_is_greedy(tiny_engine: TransformersEngine) -> None:
    greedy = asyncio.run(tiny_engine.generate(_req(max_tokens=10, temperature=0)))
    narrow = asyncio.run(tiny_engine.generate(_req(max_tokens=10, top_p=1e-6, seed=99)))
    assert narrow.texts == greedy.texts


def test_context_length_is_checked_before_generation(tiny_engine: TransformersEngine) -> None:
    with pytest.raises(ContextLengthError) as err:
        asyncio.run(tiny_engine.generate(_req(max_tokens=300)))
    assert err.value.limit == 256
    assert err.value.status_code == 400
    assert "256" in err.value.message
    with pytest.raises(ContextLengthError):
        asyncio.run(tiny_engine.generate(_req("fox " * 400)))
    with pytest.raises(InvalidRequestError):
        asyncio.run(tiny_engine.generate(_req(n=0)))


def test_closing_a_stream_cancels_the_request(tiny_engine: TransformersEngine) -> None:
    async def run() -> None:
        stream = tiny_engine.stream(_req(max_tokens=200, seed=1))
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]

    before = tiny_engine.rows_cancelled
    asyncio.run(run())
    result = asyncio.run(tiny_engine.generate(_req(max_tokens=3, seed=1)))
    assert tiny_engine.rows_cancelled == before + 1
    assert result.usage.completion_tokens == 3


def test_a_request_joins_a_running_batch(tiny_engine: TransformersEngine) -> None:
    async def run() -> tuple[bool, int]:
        long_done = asyncio.Event()

        async def long() -> None:
            async for _ in tiny_engine.stream(_req(max_tokens=220, seed=1)):
                pass
            long_done.set()

        long_task = asyncio.create_task(long())
        await asyncio.sleep(0.2)  # the long request is decoding now
        assert not long_done.is_set()
        short = await tiny_engine.generate(_req("Hello", max_tokens=3, seed=2))
        finished_first = not long_done.is_set()
        await long_task
        return finished_first, short.usage.completion_tokens

    finished_first, tokens = asyncio.run(run())
    assert finished_first  # it did not wait for the 220-token request to end
    assert tokens == 3


def test_joining_a_running_batch_keeps_both_continuations(tiny_engine: TransformersEngine) -> None:
    """A newcomer is prefilled alone and joined to the running rows' cache (left-padded), and
    a finished row leaves it: neither changes a greedy continuation."""
    running_prompt = "Conveyor turns every request into a job"
    joining_prompt = "x x x The quick brown fox jumps over"
    alone_running = asyncio.run(
        tiny_engine.generate(_req(running_prompt, max_tokens=200, temperature=0))
    )
    alone_joining = asyncio.run(
        tiny_engine.generate(_req(joining_prompt, max_tokens=20, temperature=0))
    )

    async def run() -> tuple[list[str], list[str], list[str]]:
        running = asyncio.create_task(
            tiny_engine.generate(_req(running_prompt, max_tokens=200, temperature=0))
        )
        short = asyncio.create_task(tiny_engine.generate(_req("Hello", max_tokens=2, seed=3)))
        await short  # both decoded together; the short one finished and left the batch
        assert not running.done()  # 200 tokens: still decoding, whatever the machine's speed
        joining = await tiny_engine.generate(_req(joining_prompt, max_tokens=20, temperature=0))
        assert not running.done()  # the newcomer joined a batch that was still running
        return (await running).texts, joining.texts, (await short).texts

    joined = tiny_engine.batches_joined
    running_texts, joining_texts, _ = asyncio.run(run())
    assert tiny_engine.batches_joined > joined  # the newcomer was prefilled on its own
    assert running_texts == alone_running.texts
    assert joining_texts == alone_joining.texts


def test_cpu_threads_default_leaves_a_core_to_the_platform(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CPU engine sets PyTorch's intra-op threads: the setting, or one core fewer than the
    machine has (at least one); a GPU engine leaves them alone."""
    import os

    import torch

    from inference.engines.transformers_engine import use_cpu_threads

    before = torch.get_num_threads()
    try:
        use_cpu_threads("cpu", 3)
        assert torch.get_num_threads() == 3
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
        use_cpu_threads("cpu", 0)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(os, "cpu_count", lambda: 16)
        use_cpu_threads("cpu", 0)
        assert torch.get_num_threads() == 15
        use_cpu_threads("cuda", 4)
        assert torch.get_num_threads() == 15
    finally:
        torch.set_num_threads(before)
