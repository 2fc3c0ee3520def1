"""wait_until: poll a condition against a deadline, for tests that must not sleep and hope."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], object], timeout: float = 10.0, *, interval: float = 0.005,
               what: str = "the condition") -> None:
    """Return as soon as *condition()* is true; raise `TimeoutError` naming *what* after *timeout* s.

    For state that no event announces (a background thread's effect, a server's counter):
    the test goes on the moment it holds, and fails loudly instead of asserting on a guess
    when it never does.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)  # the poll interval, not a guess: the deadline decides
