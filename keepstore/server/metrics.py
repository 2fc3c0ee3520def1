"""Prometheus metrics of `keep serve` on ``/metrics``: requests, bytes, latency, requests in flight, volume usage."""

from __future__ import annotations

import contextlib
import shutil
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

    Args:
        volumes: The volumes whose usage is reported: objects with ``path`` (and ``capacity``
            and ``used``, the bytes of blocks held, when they have a capacity).
        in_flight: How many requests hold an admission slot now.
        public: Serve ``/metrics`` without the system token.
    """

    def __init__(self, volumes: Sequence[Any], in_flight: Callable[[], int], *, public: bool = False) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.public = public
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("keep_server_requests", "Requests answered, by method and status",
                                ["method", "status"], registry=self.registry)
        self.received = Counter("keep_server_received_bytes", "Bytes of block bodies received and stored (PUT)",
                                registry=self.registry)
        self.sent = Counter("keep_server_sent_bytes", "Bytes of answer bodies sent", registry=self.registry)
        self.latency = Histogram("keep_server_request_duration_seconds", "Seconds from request to last byte",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}  # bounded: METHODS x statuses
        gauge = Gauge("keep_server_requests_in_flight", "Requests being served now", registry=self.registry)
        gauge.set_function(in_flight)
        self.registry.register(_VolumeUsage(volumes))

    def observe(self, method: str, status: int, seconds: float, received: int, sent: int) -> None:
        """Count one finished request."""
        name = method if method in METHODS else "other"
        children = self._children.get((name, status))
        if children is None:  # labels() costs more than the counting: look each pair up once
            children = self._children[name, status] = (self.requests.labels(name, str(status)),
                                                       self.latency.labels(name))
        children[0].inc()
        children[1].observe(max(0.0, seconds))
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)

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
