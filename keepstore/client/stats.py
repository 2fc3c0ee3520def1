"""Client traffic statistics: the `ClientStats` snapshot and the thread-safe counters behind it."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

__all__ = ["ClientStats", "Counters"]


@dataclasses.dataclass(frozen=True)
class ClientStats:
    """A snapshot of a client's traffic since it was created."""

    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: Mapping[str, int] = dataclasses.field(default_factory=dict)


class Counters:
    """Thread-safe mutable counters behind `ClientStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict(bytes_up=0, bytes_down=0, requests=0, retries=0, cache_hits=0)
        self._failures: dict[str, int] = {}

    def add(self, **amounts: int) -> None:
        """Add to the named counters (``bytes_up``, ``bytes_down``, ``requests``, ...)."""
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def fail(self, root: str) -> None:
        """Count one failure of the service at *root*."""
        with self._lock:
            self._failures[root] = self._failures.get(root, 0) + 1

    def snapshot(self) -> ClientStats:
        """The counters now."""
        with self._lock:
            return ClientStats(failures=dict(self._failures), **self._values)
