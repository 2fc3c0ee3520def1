"""Admission: the request slots and open connections of a `KeepServer`, counted in one place."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["Admission"]


class Admission:
    """At most *max_requests* requests in flight; a register of open connections.

    A request takes a slot with `admit()` (False: answer 503) and gives it back with
    `release()`. Connections are registered while a handler thread serves them, so `stop()`
    can close idle keep-alive ones and tests can count them.
    """

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._state = threading.Condition()
        self._inflight = 0
        self._connections: set[socket.socket] = set()

    @property
    def in_flight(self) -> int:
        """How many requests hold a slot now."""
        with self._state:
            return self._inflight

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        with self._state:
            return len(self._connections)

    def admit(self) -> bool:
        """Take a slot; False when all *max_requests* are taken."""
        with self._state:
            if self._inflight >= self.max_requests:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        """Give back a slot `admit()` gave."""
        with self._state:
            self._inflight -= 1
            self._state.notify_all()

    def opened(self, conn: socket.socket) -> None:
        with self._state:
            self._connections.add(conn)

    def closed(self, conn: socket.socket) -> None:
        with self._state:
            self._connections.discard(conn)
            self._state.notify_all()

    def drain(self, grace: float) -> None:
        """Wait (up to *grace* s) for the requests in flight, then shut every connection down."""
        deadline = time.monotonic() + grace
        with self._state:
            while self._inflight and (remaining := deadline - time.monotonic()) > 0:
                self._state.wait(remaining)
            connections = list(self._connections)
        for conn in connections:  # idle keep-alive connections (and stragglers past the grace)
            with contextlib.suppress(OSError):  # already closed by its handler
                conn.shutdown(socket.SHUT_RDWR)
