"""Shared by the PUT-hashing tests: the hashing threads a test started (the fixture is in conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from keepstore.server.hashing import HASHER_THREAD

Threads = Callable[[], list[threading.Thread]]  # the hashing threads a test started


def started_since() -> Threads:
    """The hashing threads alive now that were not when the test began (another test's server
    may still be ending a request of its own)."""
    before = set(threading.enumerate())
    return lambda: [t for t in threading.enumerate() if t.name == HASHER_THREAD and t not in before]
