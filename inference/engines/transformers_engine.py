"""Transformers engine: a Hugging Face causal LM with dynamic batching (CPU or GPU).

Requests from any number of concurrent callers go into one queue. A single generation thread
collects them for a few milliseconds, left-pads their prompts into one batch and decodes it
token by token under ``torch.inference_mode``; requests arriving meanwhile join the running
batch between steps (continuous batching by recomputing the joined rows' prefill). Every
choice's new text streams back to its caller's event loop as it is produced. Each row samples
with its own temperature, top-p and seeded generator, and stops on EOS, its own ``max_tokens``
or one of its stop strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.engines import batching
from inference.engines.base import (
    ChatEngine,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from inference.errors import ContextLengthError, EngineUnavailableError, InvalidRequestError
from inference.tools import apply_template, render_messages

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_GREEDY_BELOW = 1e-5  # temperatures under this decode greedily (OpenAI's temperature=0)
_END = object()  # end-of-stream marker put on a caller's queue


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when a GPU is visible, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_cpu_threads(device: str, threads: int) -> None:
    """Set PyTorch's intra-op threads for a model on the CPU (process-wide): ``threads``, or
    with 0 one core fewer than the machine has (at least one), leaving a core to the Python
    threads and processes beside the engine."""
    if device != "cpu":
        return
    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) - 1))


@dataclass
class _Pending:
    """One caller's request, as seen by the generation thread."""

    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[object]
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows_left: int = 0
    completion_tokens: int = 0

    outbox: _Outbox | None = None

    def emit(self, item: object) -> None:
        if self.outbox is not None:
            self.outbox.put(self.loop, self.events, item)


class _Outbox:
    """Events produced during one decoding step, handed to each caller loop in one callback
    (one wake-up per loop and step instead of one per token and row)."""

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[object], object]]]
        self._items = {}

    def put(
        self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[object], item: object
    ) -> None:
        self._items.setdefault(loop, []).append((events, item))

    def flush(self) -> None:
        items, self._items = self._items, {}
        for loop, batch in items.items():
            # The caller's loop may be gone (closed after a cancel); nothing is waiting then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, batch)


def _deliver(batch: list[tuple[asyncio.Queue[object], object]]) -> None:
    for events, item in batch:
        events.put_nowait(item)


@dataclass
class _Row:
    """One choice (of ``n``) of one request inside a running batch."""

    pending: _Pending
    index: int
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    sent_chars: int = 0
    finished: bool = False


@dataclass
class _BatchState:
    """The running batch's KV cache, last logits and per-row sampling settings."""

    past: Any
    logits: torch.Tensor
    attention: torch.Tensor
    last_pos: torch.Tensor
    temperatures: torch.Tensor
    top_ps: torch.Tensor
    greedy: list[bool]


class TransformersEngine(ChatEngine):
    """Serve one Hugging Face causal LM directory with dynamic batching."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        device: str = "auto",
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        default_max_tokens: int = 256,
        cpu_threads: int = 0,
    ) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.device = device
        self.cpu_threads = cpu_threads
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.default_max_tokens = default_max_tokens
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._outbox = _Outbox()  # written and flushed by the generation thread only
        self._thread: threading.Thread | None = None
        self._tokenizer_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._context_length = 0
        self.batches_run = 0  # observable by tests and benchmarks
        self.max_rows_seen = 0
        self.rows_cancelled = 0
        self.batches_joined = 0  # newcomers joined to a running batch's cache

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self._context_length

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(
            target=self._generation_loop, name=f"engine-{self.name}", daemon=True
        )
        self._thread.start()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.device = resolve_device(self.device)
        use_cpu_threads(self.device, self.cpu_threads)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.path, local_files_only=True, dtype=dtype
        )
        model = model.to(self.device).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer = tokenizer
        self._model = model
        config_limit = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", None
        )
        tokenizer_limit = tokenizer.model_max_length
        limits = [v for v in (config_limit, tokenizer_limit) if v and v < 10**9]
        self._context_length = int(min(limits)) if limits else 2048
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        logger.info("loaded %s from %s on %s", self.name, self.path, self.device)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        await batching.stop(self._queue, thread)
        self._model = None

    # -- request side (caller's event loop) ---------------------------------------------
    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        tokenizer = self._require_tokenizer()
        if getattr(tokenizer, "chat_template", None):
            with self._tokenizer_lock:
                return apply_template(tokenizer, messages, tools)
        lines = [f"{m['role']}: {m['content']}" for m in render_messages(messages, tools)]
        return "\n".join([*lines, "assistant:"])

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        tokenizer = self._require_tokenizer()
        with self._tokenizer_lock:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        return list(ids)

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineUnavailableError(f"Model '{self.name}' is not loaded.")
        return self._tokenizer

    def _admit(self, request: GenerationRequest) -> tuple[list[int], int]:
        """Tokenize and check the context limit; return prompt ids and the token budget."""
        params = request.params
        if params.n < 1:
            raise InvalidRequestError("n must be at least 1.", param="n")
        prompt_ids = self._encode(request.prompt)
        if not prompt_ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        limit = self._context_length
        room = limit - len(prompt_ids)
        if params.max_tokens is None:
            if room < 1:
                raise ContextLengthError(limit=limit, prompt_tokens=len(prompt_ids), max_tokens=1)
            return prompt_ids, min(self.default_max_tokens, room)
        if params.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1.", param="max_tokens")
        if params.max_tokens > room:
            raise ContextLengthError(
                limit=limit, prompt_tokens=len(prompt_ids), max_tokens=params.max_tokens
            )
        return prompt_ids, params.max_tokens

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._thread is None:
            raise EngineUnavailableError(f"Model '{self.name}' is not started.")
        prompt_ids, max_tokens = self._admit(request)
        pending = _Pending(
            request=request,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
            outbox=self._outbox,
        )
        self._queue.put(pending)
        try:
            while True:
                item = await pending.events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TextDelta | Usage)
                yield item
        finally:
            pending.cancelled.set()

    # -- generation thread --------------------------------------------------------------
    def _generation_loop(self) -> None:
        """Continuous batching: requests join the running batch between decoding steps.

        When new requests arrive (or most rows have finished), the batch is rebuilt
        (``_rebuild``): finished rows leave it, the newcomers are prefilled on their own and
        joined to the running rows' KV cache, then decoding goes on step by step.
        """
        import torch

        with torch.inference_mode():
            rows: list[_Row] = []
            state: _BatchState | None = None
            stopping = False
            while True:
                live = [r for r in rows if not r.finished]
                if not live:
                    if stopping:
                        return
                    first = self._queue.get()
                    if first is None:
                        return
                    jobs, stopping = self._collect(first)
                else:
                    jobs, stop_now = self._drain(self.max_batch_size - len(live))
                    stopping = stopping or stop_now
                if jobs or state is None or len(live) * 2 <= len(rows):
                    newcomers = self._new_rows(jobs)
                    try:
                        rows, state = self._rebuild(rows, state, newcomers)
                    except Exception as exc:
                        self._fail([*rows, *newcomers], exc)
                        self._outbox.flush()
                        rows, state = [], None
                        continue
                    if state is None:
                        continue
                try:
                    self._step(rows, state)
                except Exception as exc:  # a bad batch fails its callers, not the engine
                    self._fail(rows, exc)
                    rows, state = [], None
                self._outbox.flush()

    def _rebuild(
        self, rows: list[_Row], state: _BatchState | None, newcomers: list[_Row]
    ) -> tuple[list[_Row], _BatchState | None]:
        """The batch without its finished rows and with the newcomers. The running rows keep
        their KV cache (rows are selected from it, newcomers prefilled alone and joined to it),
        so a request arriving mid-generation costs its own prompt, not everyone's again; a
        cache that cannot be joined (not a plain per-layer dynamic cache) is recomputed."""
        keep = [i for i, r in enumerate(rows) if not r.finished]
        live = [rows[i] for i in keep]
        if not live and not newcomers:
            return [], None
        if state is None or not live or not _joinable(state.past):
            everyone = live + newcomers
            return everyone, self._prefill(everyone)
        if len(keep) < len(rows):
            state = _select(state, keep)
        if newcomers:
            state = _join(state, self._prefill(newcomers))
            self.batches_joined += 1
        return live + newcomers, state

    def _fail(self, rows: list[_Row], exc: Exception) -> None:
        logger.exception("generation batch failed", exc_info=exc)
        for job in {id(r.pending): r.pending for r in rows if not r.finished}.values():
            job.emit(EngineUnavailableError(f"Generation failed: {exc}"))
        for row in rows:
            row.finished = True

    def _collect(self, first: _Pending) -> tuple[list[_Pending], bool]:
        """Gather requests arriving within the batching window (up to the batch size)."""
        return batching.collect(
            self._queue,
            first,
            size=lambda pending: pending.request.params.n,
            capacity=self.max_batch_size,
            wait_s=self.batch_wait_s,
        )

    def _drain(self, capacity: int) -> tuple[list[_Pending], bool]:
        """Requests already waiting, up to ``capacity`` rows (never blocks)."""
        jobs: list[_Pending] = []
        while capacity > 0:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return jobs, True
            jobs.append(item)
            capacity -= item.request.params.n
        return jobs, False

    def _new_rows(self, jobs: list[_Pending]) -> list[_Row]:
        import torch

        rows: list[_Row] = []
        for job in jobs:
            if job.cancelled.is_set():
                continue
            params = job.request.params
            job.rows_left = params.n
            for index in range(params.n):
                generator = None
                if params.temperature >= _GREEDY_BELOW:
                    generator = torch.Generator(device=self.device)
                    if params.seed is not None:
                        generator.manual_seed(params.seed + index)
                    else:
                        generator.seed()
                rows.append(_Row(pending=job, index=index, generator=generator))
        return rows

    def _prefill(self, rows: list[_Row]) -> _BatchState:
        """Left-pad every row's prompt + generated tokens and run them through the model."""
        import torch

        self.batches_run += 1
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        sequences = [r.pending.prompt_ids + r.token_ids for r in rows]
        pad_id = int(self._tokenizer.pad_token_id)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(sequences):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[i, width - len(ids) :] = 1
        input_ids = input_ids.to(self.device)
        attention = attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self._model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True
        )
        params = [r.pending.request.params for r in rows]
        return _BatchState(
            past=out.past_key_values,
            logits=out.logits[:, -1, :],
            attention=attention,
            last_pos=positions[:, -1:],
            temperatures=torch.tensor(
                [max(p.temperature, _GREEDY_BELOW) for p in params], device=self.device
            ),
            top_ps=torch.tensor([p.top_p for p in params], device=self.device),
            greedy=[r.generator is None for r in rows],
        )

    def _step(self, rows: list[_Row], state: _BatchState) -> None:
        """Sample one token for every row, stream it, and feed it back to the model."""
        import torch

        next_ids = self._sample(state.logits, state.temperatures, state.top_ps, state.greedy, rows)
        for row, token in zip(rows, next_ids.tolist(), strict=True):
            if not row.finished:
                self._advance(row, int(token))
        if all(r.finished for r in rows):
            return
        state.attention = torch.cat(
            [state.attention, state.attention.new_ones((len(rows), 1))], dim=1
        )
        state.last_pos = state.last_pos + 1
        out = self._model(
            input_ids=next_ids[:, None],
            attention_mask=state.attention,
            position_ids=state.last_pos,
            past_key_values=state.past,
            use_cache=True,
        )
        state.past = out.past_key_values
        state.logits = out.logits[:, -1, :]

    def _sample(
        self,
        logits: torch.Tensor,
        temperatures: torch.Tensor,
        top_ps: torch.Tensor,
        greedy: list[bool],
        rows: list[_Row],
    ) -> torch.Tensor:
        import torch

        logits = logits.float()
        chosen = logits.argmax(dim=-1)
        if all(greedy):
            return chosen
        scaled = logits / temperatures[:, None]
        sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass before them already reaches top_p (keep at least one).
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_ps[:, None]
        drop &= (top_ps < 1.0)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
        probs = scaled.softmax(dim=-1)
        for i, row in enumerate(rows):
            if row.generator is not None and not row.finished:
                chosen[i] = torch.multinomial(probs[i], 1, generator=row.generator)[0]
        return chosen

    def _advance(self, row: _Row, token: int) -> None:
        job = row.pending
        if job.cancelled.is_set():
            self.rows_cancelled += 1
            self._finish(row, None)
            return
        row.token_ids.append(token)
        job.completion_tokens += 1
        if token in self._eos_ids:
            text = self._decode(row.token_ids[:-1])
            self._finish(row, "stop", text[row.sent_chars :])
            return
        text = self._decode(row.token_ids)
        stops = job.request.params.stop
        if stops:
            cut = _first_stop(text, stops, row.sent_chars)
            if cut is not None:
                self._finish(row, "stop", text[row.sent_chars : cut])
                return
        if len(row.token_ids) >= job.max_tokens:
            self._finish(row, "length", text[row.sent_chars :])
            return
        # Hold back a trailing partial UTF-8 character and any tail that may begin a stop.
        end = len(text)
        while end > row.sent_chars and text[end - 1] == "\ufffd":
            end -= 1
        end -= _stop_prefix_overlap(text[:end], stops)
        if end > row.sent_chars:
            job.emit(TextDelta(index=row.index, text=text[row.sent_chars : end]))
            row.sent_chars = end

    def _finish(self, row: _Row, reason: FinishReason | None, text: str = "") -> None:
        row.finished = True
        job = row.pending
        if reason is not None:
            job.emit(TextDelta(index=row.index, text=text, finish_reason=reason))
        job.rows_left -= 1
        if job.rows_left == 0:
            job.emit(Usage(len(job.prompt_ids), job.completion_tokens))
            job.emit(_END)


def _layers(past: Any) -> list[Any]:
    return list(getattr(past, "layers", None) or [])


def _joinable(past: Any) -> bool:
    """Whether the cache is per-layer ``keys``/``values`` tensors that grow with every token
    (``DynamicLayer``), which rows can be selected from and joined to."""
    from transformers.cache_utils import DynamicLayer

    layers = _layers(past)
    return bool(layers) and all(
        type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None for layer in layers
    )


def _select(state: _BatchState, keep: list[int]) -> _BatchState:
    """The batch's rows ``keep`` only; leading columns no remaining row uses are cut."""
    import torch

    index = torch.tensor(keep, device=state.attention.device)
    attention = state.attention.index_select(0, index)
    used = attention.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    for layer in _layers(state.past):
        layer.keys = layer.keys.index_select(0, index)[:, :, start:, :]
        layer.values = layer.values.index_select(0, index)[:, :, start:, :]
    return _BatchState(
        past=state.past,
        logits=state.logits.index_select(0, index),
        attention=attention[:, start:],
        last_pos=state.last_pos.index_select(0, index),
        temperatures=state.temperatures.index_select(0, index),
        top_ps=state.top_ps.index_select(0, index),
        greedy=[state.greedy[i] for i in keep],
    )


def _join(running: _BatchState, added: _BatchState) -> _BatchState:
    """Two batches as one: the shorter one's cache and mask are left-padded (masked out)."""
    import torch

    width = max(running.attention.shape[1], added.attention.shape[1])

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for mine, theirs in zip(_layers(running.past), _layers(added.past), strict=True):
        mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)], dim=0)
        mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)], dim=0)
    return _BatchState(
        past=running.past,
        logits=torch.cat([running.logits, added.logits], dim=0),
        attention=torch.cat([pad(running.attention, 1), pad(added.attention, 1)], dim=0),
        last_pos=torch.cat([running.last_pos, added.last_pos], dim=0),
        temperatures=torch.cat([running.temperatures, added.temperatures], dim=0),
        top_ps=torch.cat([running.top_ps, added.top_ps], dim=0),
        greedy=running.greedy + added.greedy,
    )


def _first_stop(text: str, stops: Sequence[str], sent: int) -> int | None:
    """Index where the earliest stop string starts in ``text`` (searching unsent text)."""
    longest = max(len(s) for s in stops)
    start = max(0, sent - longest + 1)
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_overlap(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
