"""What ``keep`` shows while it retries, and how Ctrl-C stops a command: `RetryNotices`, `interruptible`."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client loads only when a command needs a store
    from ..client.rounds import RetryNotice

__all__ = ["RetryNotices", "interruptible", "leave_within"]


class RetryNotices:
    """The ``on_retry`` callback of ``keep``'s client: one stderr line per service and cause.

    A line is printed once for each (operation, service, cause, round): many blocks failing
    alike on one service in the same round give one line, and the next round's line shows
    the count going up. Lines go to stderr, through ``tqdm.write`` once tqdm is loaded, so they
    never tear a progress bar. Every notice also goes to each listener added with `listen` (a
    bar can show "waiting 1.3 s to retry" from ``notice.wait``).

    Args:
        write: Prints one line; default stderr (through tqdm when it is loaded).
    """

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self.write = write or _write_line
        self._seen: set[tuple[str, str, str, int]] = set()
        self._listeners: list[Callable[["RetryNotice"], Any]] = []
        self._lock = threading.Lock()

    def listen(self, listener: Callable[["RetryNotice"], Any]) -> None:
        """Also hand every notice to *listener* (called on the thread that retries)."""
        with self._lock:
            self._listeners.append(listener)

    def __call__(self, notice: "RetryNotice") -> None:
        lines = []
        with self._lock:
            for (root, cause), line in zip(notice.failures.items(), notice.lines(), strict=True):
                key = (notice.operation, root, cause, notice.round)
                if key not in self._seen:
                    self._seen.add(key)
                    lines.append(line)
            listeners = list(self._listeners)
        for line in lines:
            self.write(f"keep: retrying: {line}")
        for listener in listeners:
            listener(notice)


def _write_line(line: str) -> None:
    """One line on stderr; through tqdm when it is loaded, so that a progress bar on screen is
    cleared, the line printed above it and the bar drawn again (no torn bar)."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        tqdm.tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def interruptible(cancel: threading.Event) -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) sets *cancel* first and then raises `KeyboardInterrupt`.

    Setting the event first matters: the client's worker threads abort their transfers and
    backoff waits on it while the interrupt unwinds the main thread (whose own transfer libcurl
    lets Python interrupt within its progress callback). Outside the main thread, or when
    someone else handles SIGINT, nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        cancel.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def leave_within(budget: float = 2.0) -> None:
    """Make sure the process ends within *budget* seconds although a thread may be stuck in a
    transfer that will not abort: after that, a watchdog flushes and ends the process by SIGINT
    (as an interrupted program should: a shell sees 130) rather than let the interpreter wait
    for the thread at exit. A second Ctrl-C ends it at once. Call it from the main thread of the
    ``keep`` process itself, never in-process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    def stop() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # already closed: nothing to flush
                stream.flush()
        os.kill(os.getpid(), signal.SIGINT)

    watchdog = threading.Timer(budget, stop)
    watchdog.daemon = True  # it must not be what the interpreter waits for
    watchdog.start()
