"""The common async interface every inference engine implements.

A chat engine turns a prompt into a stream of ``TextDelta`` events (one per choice index and
step) that ends with one ``Usage``; an embedding engine turns texts into vectors. Engines own
their model and their batching; callers only see these types.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI names and meanings)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt (already rendered through the chat template when it came from messages)."""

    request_id: str
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class TextDelta:
    """New text for one choice; ``finish_reason`` is set on the last delta of that choice."""

    index: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


GenerationEvent = TextDelta | Usage


@dataclass
class Completion:
    """A finished generation: the text and finish reason of every choice, and usage."""

    texts: list[str]
    finish_reasons: list[FinishReason]
    usage: Usage


@dataclass(frozen=True)
class EmbeddingOutput:
    vectors: list[list[float]]
    prompt_tokens: int


ChatMessage = dict[str, str]


def sampling_from(
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | Sequence[str] | None,
    seed: int | None,
    n: int | None,
) -> SamplingParams:
    """Build ``SamplingParams`` from OpenAI request fields (``None`` means OpenAI's default)."""
    stops: tuple[str, ...] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=tuple(s for s in stops if s),
        seed=seed,
        n=1 if n is None else n,
    )


class ChatEngine(abc.ABC):
    """A text-generation engine serving one model."""

    kind: Literal["chat"] = "chat"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """The model's maximum number of tokens (prompt + completion)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; called once per process before the first request."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model and any background threads."""

    @abc.abstractmethod
    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Render chat messages (and the tools offered, OpenAI format: ``inference.tools``)
        into a prompt with the model's chat template."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yield ``TextDelta`` events as tokens are produced, then exactly one ``Usage``.

        Raises ``ContextLengthError`` before the first event when the request cannot fit.
        Closing the iterator early cancels the request inside the engine.
        """

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to completion (the non-streaming form of ``stream``)."""
        n = request.params.n
        texts = [""] * n
        reasons: list[FinishReason] = ["length"] * n
        usage = Usage(0, 0)
        async for event in self.stream(request):
            if isinstance(event, Usage):
                usage = event
                continue
            texts[event.index] += event.text
            if event.finish_reason is not None:
                reasons[event.index] = event.finish_reason
        return Completion(texts=texts, finish_reasons=reasons, usage=usage)


class EmbeddingEngine(abc.ABC):
    """A text-embedding engine serving one model."""

    kind: Literal["embedding"] = "embedding"

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    @abc.abstractmethod
    def dimensions(self) -> int:
        """Length of every returned vector."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; called once per process before the first request."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model and any background threads."""

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> EmbeddingOutput:
        """Embed ``texts`` (one vector each, in order)."""


Engine = ChatEngine | EmbeddingEngine
