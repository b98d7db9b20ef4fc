"""Build a tiny generative model on disk for tests and benchmarks (no download).

The model is a randomly initialised 2-layer GPT-2 with a byte-level BPE tokenizer trained
locally on a few sentences; both are written with ``save_pretrained`` so that callers load
them through the same code path as a real model directory.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Conveyor turns every request into a job on a queue.",
    "Workers consume queues and record the outcome of each job.",
    "Hello world! How are you today? I am fine, thank you.",
    "Inference workers hold the model in memory and batch concurrent requests.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "user assistant system: what is the answer? the answer is forty two.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|end|>"]


def build_tiny_model(
    directory: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    context_length: int = 256,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny GPT-2 causal LM and its tokenizer to ``directory``; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|end|>"],
        model_max_length=context_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(target)

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context_length,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(target)
    return target


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """A Conveyor API subprocess and an inference worker subprocess (threads pool).

    ``env`` is the environment of both (it points them at the store, the broker and the
    models); the caller's store must already be migrated.
    """

    def __init__(
        self, env: dict[str, str], *, concurrency: int = 32, log_dir: Path | None = None
    ) -> None:
        import subprocess
        import sys
        import tempfile

        from config import get_settings

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self._logs = None if log_dir else tempfile.TemporaryDirectory(prefix="conveyor-stack-")
        logs = log_dir or Path(self._logs.name)  # type: ignore[union-attr]
        logs.mkdir(parents=True, exist_ok=True)
        self.worker_log = logs / "worker.log"
        self.api_log = logs / "api.log"
        worker_cmd = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-Q", "inference", "-P", "threads", "-c", str(concurrency),
            "-n", f"inference-{self.port}@%h", "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        api_cmd = [
            sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            *get_settings().uvicorn_ws_options(),
        ]  # fmt: skip
        self.worker = subprocess.Popen(
            worker_cmd, env=env, stdout=self.worker_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.api = subprocess.Popen(
            api_cmd, env=env, stdout=self.api_log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, models: list[str], timeout: float = 180.0) -> None:
        """Wait until the API answers and a worker announced every model in ``models``."""
        import time

        import httpx
        import redis

        from inference.relay import MODELS_KEY

        broker = redis.Redis.from_url(self.env["CONVEYOR_BROKER_URL"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in ((self.worker, self.worker_log), (self.api, self.api_log)):
                if proc.poll() is not None:
                    raise RuntimeError(f"process exited: {log.read_text()[-3000:]}")
            announced = {
                k.decode() if isinstance(k, bytes) else k for k in broker.hkeys(MODELS_KEY)
            }
            try:
                api_up = httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                api_up = False
            if api_up and set(models) <= announced:
                return
            time.sleep(0.3)
        worker_tail = self.worker_log.read_text()[-3000:]
        raise RuntimeError(f"stack not ready: {worker_tail}\n{self.api_log.read_text()[-2000:]}")

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        for proc in (self.api, self.worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.api, self.worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._logs is not None:
            self._logs.cleanup()


if __name__ == "__main__":  # python -m inference.testing DIR: a tiny chat model, offline
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt2"))
