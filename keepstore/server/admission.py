"""Admission: the request slots and open connections of a `KeepServer`, counted in one place."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time

__all__ = ["Admission", "default_max_connections"]


class Admission:
    """At most *max_requests* requests in flight and *max_connections* connections open.

    A request takes a slot with `admit()` (False: answer 503) and gives it back with
    `release()`. Connections are registered while a handler thread serves them (one thread
    each), so `stop()` can close idle keep-alive ones and tests can count them. When a new
    connection would pass *max_connections*, the connection that has waited longest for a
    request is closed to make room (an idle flood cannot lock out new clients); when none is
    waiting, the new one is refused.
    """

    def __init__(self, max_requests: int, max_connections: int = 1024) -> None:
        self.max_requests = max_requests
        self.max_connections = max_connections
        # Every count is guarded by the plain lock, taken directly (a C call: a Condition's
        # ``with`` is Python code, and this runs four times per request); the condition on it
        # is notified only while `drain` waits, the one wait there is.
        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._draining = 0  # threads waiting in drain()
        self._inflight = 0
        self._connections: dict[socket.socket, float | None] = {}  # -> waiting since (None: busy)
        self.evicted = 0  # idle connections closed to make room (for tests and figures)

    @property
    def in_flight(self) -> int:
        """How many requests hold a slot now."""
        with self._lock:
            return self._inflight

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._connections)

    def admit(self) -> bool:
        """Take a slot; False when all *max_requests* are taken."""
        with self._lock:
            if self._inflight >= self.max_requests:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        """Give back a slot `admit()` gave."""
        with self._lock:
            self._inflight -= 1
            if self._draining:  # only drain() waits, and only on this count
                self._state.notify_all()

    def opened(self, conn: socket.socket) -> bool:
        """Register a new connection (waiting for its first request); False: refuse it."""
        with self._lock:
            if len(self._connections) >= self.max_connections and not self._evict(1):
                return False
            self._connections[conn] = time.monotonic()
            return True

    def waiting(self, conn: socket.socket) -> None:
        """*conn* waits for its next request (it may be closed to make room)."""
        with self._lock:
            if conn in self._connections:
                self._connections[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> None:
        """*conn* is sending or being answered a request."""
        with self._lock:
            if conn in self._connections:
                self._connections[conn] = None

    def closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)  # drain() waits on requests, not connections: no notify

    def evict_idle(self, count: int) -> int:
        """Close up to *count* connections waiting for a request, longest-waiting first."""
        with self._lock:
            return self._evict(count)

    def _evict(self, count: int) -> int:
        idle = sorted((since, id(c), c) for c, since in self._connections.items() if since is not None)
        for _, _, conn in idle[:count]:
            del self._connections[conn]  # its handler's closed() finds it gone: fine
            with contextlib.suppress(OSError):  # closed by its client meanwhile
                conn.shutdown(socket.SHUT_RDWR)
        self.evicted += min(count, len(idle))
        return min(count, len(idle))

    def drain(self, grace: float) -> None:
        """Wait (up to *grace* s) for the requests in flight, then shut every connection down."""
        deadline = time.monotonic() + grace
        with self._lock:
            self._draining += 1
            try:
                while self._inflight and (remaining := deadline - time.monotonic()) > 0:
                    self._state.wait(remaining)
            finally:
                self._draining -= 1
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections (and stragglers past the grace)
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)


def default_max_connections() -> int:
    """What the open-file limit allows, keeping a quarter (at most 64) for block files."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # no limit to read: the stdlib select() default
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(8, min(4096, soft - min(64, soft // 4)))
