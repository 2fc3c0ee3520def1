"""Prometheus metrics of `keep serve` on ``/metrics``: requests, bytes, latency, requests in flight, volume usage."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LATENCY_BUCKETS", "METHODS", "ServerMetrics"]

#: Methods counted by name; any other is counted as ``other`` (a client cannot grow the label set).
METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "POST"})
#: Upper bounds (seconds) of the request latency histogram's buckets: a HEAD takes a
#: millisecond, a 64 MiB block at the minimum rate half an hour.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 1800.0)


class ServerMetrics:
    """One server's metrics, in a registry of its own (two servers in a process never mix).

    ``keep_server_requests_total{method,status}``, ``keep_server_received_bytes_total`` (bodies of
    blocks stored), ``keep_server_sent_bytes_total`` (answer bodies), the histogram
    ``keep_server_request_duration_seconds{method}``, the gauge ``keep_server_requests_in_flight``
    and, per volume, ``keep_server_volume_used_bytes`` / ``keep_server_volume_free_bytes``
    (its file system's), with ``keep_server_volume_capacity_bytes`` and
    ``keep_server_volume_block_bytes`` for a volume given a capacity.

    Each request is counted in plain numbers under one lock (`observe`), and the families are
    made from them at scrape time: counting through ``prometheus_client``'s metric objects
    cost more per request than the rest of answering a small GET's accounting.

    Args:
        volumes: The volumes whose usage is reported: objects with ``path`` (and ``capacity``
            and ``used``, the bytes of blocks held, when they have a capacity).
        in_flight: How many requests hold an admission slot now.
        public: Serve ``/metrics`` without the system token.
    """

    def __init__(self, volumes: Sequence[Any], in_flight: Callable[[], int], *, public: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.public = public
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}  # bounded: METHODS x statuses
        self._buckets: dict[str, list[int]] = {}  # per method: observations per LATENCY_BUCKETS bound, then +Inf
        self._seconds: dict[str, float] = {}
        self._received = self._sent = 0
        gauge = Gauge("keep_server_requests_in_flight", "Requests being served now", registry=self.registry)
        gauge.set_function(in_flight)
        self.registry.register(_RequestCounts(self))
        self.registry.register(_VolumeUsage(volumes))

    def observe(self, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        """Count one finished request."""
        name = method if method in METHODS else "other"
        seconds = max(0.0, seconds)
        bucket = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds (le), or +Inf
        with self._lock:
            self._requests[name, status] = self._requests.get((name, status), 0) + 1
            counts = self._buckets.get(name)
            if counts is None:
                counts = self._buckets[name] = [0] * (len(LATENCY_BUCKETS) + 1)
            counts[bucket] += 1
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            self._received += received
            self._sent += sent

    def snapshot(self) -> tuple[dict[tuple[str, int], int], dict[str, list[int]], dict[str, float], int, int]:
        """The counts so far: requests by (method, status), latency buckets and seconds by method,
        bytes received and sent."""
        with self._lock:
            return (dict(self._requests), {m: list(c) for m, c in self._buckets.items()}, dict(self._seconds),
                    self._received, self._sent)

    def answer(self, token: str | None, permissions: Any) -> tuple[int, bytes, dict[str, str]]:
        """The answer to ``GET /metrics`` with *token*: status, body and headers. The system
        token is needed (as for ``/index``: *permissions* ``check_system_token`` decides)
        unless the metrics are public."""
        problem = None if self.public else permissions.check_system_token(token)
        if problem is not None:
            status, reason = problem
            return status, f"{status} {reason}\n".encode(), {}
        body, content_type = self.render()
        return 200, body, {"Content-Type": content_type}

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _RequestCounts:
    """A collector making the request families from a `ServerMetrics`'s counts at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # families are made at collect time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        requests, buckets, seconds, received, sent = self.metrics.snapshot()
        answered = CounterMetricFamily("keep_server_requests", "Requests answered, by method and status",
                                       labels=["method", "status"])
        for (method, status), count in sorted(requests.items()):
            answered.add_metric([method, str(status)], count)
        latency = HistogramMetricFamily("keep_server_request_duration_seconds", "Seconds from request to last byte",
                                        labels=["method"])
        bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
        for method, counts in sorted(buckets.items()):
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([method], list(zip(bounds, cumulative, strict=True)), seconds[method])
        yield answered
        yield CounterMetricFamily("keep_server_received_bytes", "Bytes of block bodies received and stored (PUT)",
                                  value=received)
        yield CounterMetricFamily("keep_server_sent_bytes", "Bytes of answer bodies sent", value=sent)
        yield latency


class _VolumeUsage:
    """A collector reading each volume's file system usage at scrape time."""

    def __init__(self, volumes: Iterable[Any]) -> None:
        self.volumes = list(volumes)

    def describe(self) -> list[Any]:
        return []  # families are made at collect time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("keep_server_volume_used_bytes", "Bytes used on the volume's file system",
                                 labels=["volume"])
        free = GaugeMetricFamily("keep_server_volume_free_bytes", "Bytes free on the volume's file system",
                                 labels=["volume"])
        capacity = GaugeMetricFamily("keep_server_volume_capacity_bytes",
                                     "Bytes of blocks the volume may hold (volumes given a capacity)",
                                     labels=["volume"])
        blocks = GaugeMetricFamily("keep_server_volume_block_bytes",
                                   "Bytes of blocks the volume holds (volumes given a capacity)", labels=["volume"])
        for volume in self.volumes:
            path = str(Path(volume.path))
            with contextlib.suppress(OSError):  # gone or unreadable now: leave it out of this scrape
                usage = shutil.disk_usage(path)
                used.add_metric([path], usage.used)
                free.add_metric([path], usage.free)
            if getattr(volume, "capacity", None) is not None:  # only then are its block bytes counted
                capacity.add_metric([path], volume.capacity)
                blocks.add_metric([path], volume.used)
        yield from (used, free, capacity, blocks)
