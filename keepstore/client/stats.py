"""Client traffic statistics: the `ClientStats` snapshot and the thread-safe counters behind it."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

__all__ = ["ClientStats", "Counters", "ServiceStats"]


@dataclasses.dataclass(frozen=True)
class ServiceStats:
    """One service's share of a client's traffic: requests answered or failed, failures, latency.

    Args:
        requests: Requests that got an answer or failed (cancelled ones are not counted).
        errors: Failures: no answer, an error status (not 403/404/410), or a damaged body.
        seconds: Time spent in those requests, added up.
        max_seconds: The slowest one.
    """

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0

    @property
    def mean_latency(self) -> float:
        """Seconds a request took on average (0.0 before the first)."""
        return self.seconds / self.requests if self.requests else 0.0


@dataclasses.dataclass(frozen=True)
class ClientStats:
    """A snapshot of a client's traffic since it was created.

    ``failures`` counts failures per service root; ``services`` has each root's `ServiceStats`
    (requests, errors and latency).

    Args:
        bytes_up: Request body bytes sent.
        bytes_down: Response body bytes received.
        requests: Requests sent.
        retries: Retry rounds run.
        cache_hits: Gets served by the block cache.
        failures: Failed requests per service root.
        services: Each service root's `ServiceStats` (requests, failures, latency).
    """

    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: Mapping[str, int] = dataclasses.field(default_factory=dict)
    services: Mapping[str, ServiceStats] = dataclasses.field(default_factory=dict)


class Counters:
    """Thread-safe mutable counters behind `ClientStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict(bytes_up=0, bytes_down=0, requests=0, retries=0, cache_hits=0)
        self._failures: dict[str, int] = {}
        self._latency: dict[str, list[float]] = {}  # root -> [requests, seconds, max seconds]

    def add(self, **amounts: int) -> None:
        """Add to the named counters (``bytes_up``, ``bytes_down``, ``requests``, ...)."""
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def fail(self, root: str) -> None:
        """Count one failure of the service at *root*."""
        with self._lock:
            self._failures[root] = self._failures.get(root, 0) + 1

    def observe(self, root: str, seconds: float) -> None:
        """Count one request to *root* that took *seconds*."""
        with self._lock:
            entry = self._latency.setdefault(root, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += seconds
            entry[2] = max(entry[2], seconds)

    def snapshot(self) -> ClientStats:
        """The counters now."""
        with self._lock:
            roots = dict.fromkeys([*self._latency, *self._failures])
            services = {}
            for root in roots:
                count, seconds, slowest = self._latency.get(root, [0, 0.0, 0.0])
                services[root] = ServiceStats(int(count), self._failures.get(root, 0), seconds, slowest)
            return ClientStats(failures=dict(self._failures), services=services, **self._values)
