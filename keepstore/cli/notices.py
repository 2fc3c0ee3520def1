"""What ``keep`` shows while it retries, and how Ctrl-C stops a command: `RetryNotices`, `interruptible`."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client loads only when a command needs a store
    from ..client.rounds import RetryNotice

__all__ = ["RetryNotices", "exit_if_stuck", "interruptible"]


class RetryNotices:
    """The ``on_retry`` callback of ``keep``'s client: one stderr line per service and cause.

    A line is printed once for each (operation, service, cause, round): many blocks failing
    alike on one service in the same round give one line, and the next round's line shows
    the count going up. *write* prints a line (default: to stderr); a progress bar swaps in its
    own (``tqdm.write``) so lines do not tear the bar. Every notice also goes to each listener
    added with `listen` (a bar can show "waiting 1.3 s to retry" from ``notice.wait``).

    Args:
        write: Prints one line; default ``print(line, file=sys.stderr)``.
    """

    def __init__(self, write: Callable[[str], Any] | None = None) -> None:
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
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


def exit_if_stuck(budget: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
    """Give the other threads *budget* seconds to end; when some are still running (a transfer
    that would not abort), flush and end the process by SIGINT at once (as an interrupted
    program should: a shell sees 130), rather than have the interpreter wait for them at exit.
    For the ``keep`` process itself, never for in-process use."""
    end = clock() + budget
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, end - clock()))
        if thread.is_alive():
            break
    else:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # already closed: nothing to flush
            stream.flush()
    import os

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
