"""Periodic: a server's background job (emptying the trash, scrubbing), run on its own thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

log = logging.getLogger("keepstore.server")


class Periodic:
    """Run *job* every *interval* seconds on a daemon thread, from `start()` until `stop()`.

    `passes` counts the runs finished; `wait_for_passes(n)` blocks until that many are (tests
    wait on it instead of sleeping). A run that raises is logged, and the next one runs on
    time. `stop()` sets *stop* (an event the job may wait on, or check, to end early) and so
    interrupts the wait between runs.

    Args:
        name: The thread's name (and the log's).
        job: What to run.
        interval: Seconds between runs.
        stop: The event `stop()` sets (default: a new one).
    """

    def __init__(self, name: str, job: Callable[[], object], interval: float,
                 stop: threading.Event | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"{name}: interval must be positive, got {interval}")
        self.name = name
        self.job = job
        self.interval = interval
        self.passes = 0
        self._done = threading.Condition()
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Periodic({self.name!r}, every {self.interval:g}s, {self.passes} passes)"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout)

    def wait_for_passes(self, count: int, timeout: float = 60.0) -> bool:
        """Block until *count* runs have finished in all (False after *timeout* seconds)."""
        with self._done:
            return self._done.wait_for(lambda: self.passes >= count, timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.job()
            except Exception:  # a bug or a vanished volume must not end the job for good
                log.exception("%s failed; trying again in %gs", self.name, self.interval)
            with self._done:
                self.passes += 1
                self._done.notify_all()
            if self._stop.wait(self.interval):
                return
