"""Keep ``conveyor up``'s processes running, as a process supervisor would.

A child that exits (a crash, a SIGKILL, beat or a worker giving up on a broker that blinked) is
logged and started again after 1, 2, 4 … seconds, at most ``backoff_max``; a child that then
stays up for ``stable_after`` seconds starts over at the first delay. Nothing a child does stops
the others: only ``stop()`` (SIGTERM, then SIGKILL after a grace period) ends them.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("conveyor.up")


@dataclass
class Child:
    """One supervised process: its command, its current process and its restart state."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    log: Path | None = None  # its stdout and stderr go here (appended); None: the terminal
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.log is None:
            self.proc = subprocess.Popen(self.command, env=self.env)
        else:
            with self.log.open("ab") as sink:
                self.proc = subprocess.Popen(
                    self.command, env=self.env, stdout=sink, stderr=subprocess.STDOUT
                )
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Start children, restart those that exit (with exponential backoff), stop them all."""

    def __init__(
        self,
        children: list[Child],
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 60.0,
    ) -> None:
        self.children = children
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after

    def start(self) -> None:
        for child in self.children:
            child.start()

    def add(self, child: Child) -> None:
        """Start one more child (one that must wait for others, e.g. Flower for the workers)."""
        self.children.append(child)
        child.start()

    def delay(self, failures_in_a_row: int) -> float:
        """Seconds before the next start after this many exits in a row (1, 2, 4 … max)."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** (failures_in_a_row - 1)))

    def poll(self) -> None:
        """One pass: notice children that exited, restart those whose delay is over."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is None or child.running():
                continue
            if child.restart_at is None:
                stable = now - child.started_at >= self.stable_after
                child.failures_in_a_row = 1 if stable else child.failures_in_a_row + 1
                wait = self.delay(child.failures_in_a_row)
                child.restart_at = now + wait
                log.warning(
                    "%s (pid %s) exited with %s; restarting it in %.0f s (restart %d)",
                    child.name,
                    child.proc.pid,
                    _describe(child.proc.returncode),
                    wait,
                    child.restarts + 1,
                )
            elif now >= child.restart_at:
                child.restarts += 1
                child.start()
                log.warning("%s restarted (pid %s)", child.name, child.pid)

    def run(self, stopping: Callable[[], bool], interval: float = 0.5) -> None:
        """Supervise until ``stopping()`` is true."""
        while not stopping():
            self.poll()
            time.sleep(interval)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every child, wait up to ``grace`` seconds in all, SIGKILL what is left."""
        running = [c.proc for c in self.children if c.proc is not None and c.running()]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _describe(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
