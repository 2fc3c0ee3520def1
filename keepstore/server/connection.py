"""Connections of `keep serve`: the listening socket, and reads bounded by deadlines."""

from __future__ import annotations

import contextlib
import errno
import http.server
import io
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigError

__all__ = ["Body", "DeadlineReader", "KeepHTTPServer", "reset_on_close", "send_now", "set_timeout"]

log = logging.getLogger("keepstore.server")


class KeepHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that carries the request handlers' *context* and TLS.

    Args:
        address: ``(host, port)`` to listen on.
        handler: The request handler class.
        context: What the handlers share (the server's `Context`).
        family: The socket address family.
        tls: A TLS context to wrap connections in, or None for plain HTTP.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    _backoff = 0.0

    def __init__(self, address: tuple[str, int], handler: type, context: Any, family: int,
                 tls: ssl.SSLContext | None = None, *, reuse_port: bool = False) -> None:
        self.address_family = family
        self.context = context
        self.tls = tls
        self.reuse_port = reuse_port
        try:
            super().__init__(address, handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from exc

    on_fd_exhausted: Callable[[], object] | None = None  # frees descriptors (closes idle connections)

    def server_bind(self) -> None:
        if self.reuse_port:  # several worker processes, each its own socket on one port: the kernel spreads connections
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[Any, Any]:
        try:
            conn, addr = super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: free some, and back off instead of spinning on accept().
                if self.on_fd_exhausted is not None:
                    self.on_fd_exhausted()
                self._backoff = min(1.0, max(0.01, self._backoff * 2))
                log.warning("out of file descriptors (%s); backing off %.2fs", exc.strerror, self._backoff)
                time.sleep(self._backoff)  # the accept loop's own thread: nothing else waits on it
            raise
        self._backoff = 0.0
        if self.tls is not None:  # the handshake runs in the handler's thread, not here
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def set_timeout(sock: socket.socket, seconds: float) -> None:
    """``sock.settimeout(seconds)`` unless it has that timeout already: each call is a system
    call (the socket's blocking mode is set again), and a request would make several."""
    if sock.gettimeout() != seconds:
        sock.settimeout(seconds)


def reset_on_close(sock: socket.socket) -> None:
    """Make closing *sock* reset it (``SO_LINGER`` 0): for a reader too slow to take its answer,
    whose unsent bytes the kernel would otherwise go on trying to deliver."""
    with contextlib.suppress(OSError):  # already gone
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def send_now(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)``, one system call fewer when a plain socket's buffer has room
    (nearly always, for a response head): Python polls before every send on a socket with a
    timeout, so try one write of the (non-blocking) descriptor first, and let ``sendall`` (its
    timeout, its errors) send whatever that write did not. A TLS socket just sends."""
    sent = 0
    if sock.gettimeout() and not isinstance(sock, ssl.SSLSocket):  # non-blocking underneath: cannot hang
        try:
            sent = os.write(sock.fileno(), data)
        except BlockingIOError:  # no room: sendall waits for it
            sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the idle timeout and, while a request's line and
    headers (or its body) are being read, by one overall deadline: a client dripping a byte at
    a time (slowloris) must not hold a thread for longer than the deadline allows.

    Args:
        sock: The connection's socket.
        idle: The idle timeout of each read, in seconds.
    """

    def __init__(self, sock: socket.socket, idle: float) -> None:
        super().__init__()
        self.sock = sock
        self.idle = idle
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request not received in time")
            set_timeout(self.sock, min(self.idle, remaining))
        return self.sock.recv_into(buffer)


class Body:
    """A request body of *length* bytes, read in chunks under one deadline: it must average
    *min_rate* bytes/s after one idle timeout of grace, or the read ends in `TimeoutError`
    (a client dripping a byte per idle timeout would otherwise hold a thread for days).

    Args:
        rfile: The buffered connection the body is read from.
        reader: The connection's `DeadlineReader`, whose deadline bounds the whole body.
        length: The body's length in bytes.
        min_rate: The average rate, in bytes/s, the client must keep up after one idle timeout.
        chunk: Bytes read at a time.
    """

    def __init__(self, rfile: io.BufferedReader[DeadlineReader], reader: DeadlineReader, length: int, min_rate: float,
                 chunk: int = 1 << 20) -> None:
        self.rfile = rfile
        self.reader = reader
        self.length = self.remaining = length
        self.chunk = chunk
        self.deadline = time.monotonic() + reader.idle + length / min_rate

    def __iter__(self) -> Iterator[memoryview]:
        """The body's chunks, each read into one buffer reused for the next (no allocation, no
        fresh pages per chunk): a chunk is valid until the next is asked for."""
        buffer = memoryview(bytearray(min(self.chunk, self.remaining)))
        return self.into(lambda: buffer)

    def into(self, buffers: Callable[[], memoryview]) -> Iterator[memoryview]:
        """The body's chunks, each read into the buffer *buffers* gives for it (a pool, so a
        chunk can still be hashed on another thread while the next is read)."""
        self.reader.deadline = self.deadline
        try:
            while self.remaining:
                buffer = buffers()
                count = self.rfile.readinto(buffer[:min(len(buffer), self.remaining)])
                if not count:
                    raise ConnectionError(f"client sent {self.length - self.remaining} of {self.length} bytes")
                self.remaining -= count
                yield buffer[:count]
        finally:
            self.reader.deadline = None
            with contextlib.suppress(OSError):  # the connection is gone: the next read says so
                set_timeout(self.reader.sock, self.reader.idle)

    def drain(self) -> None:
        """Read and discard what is left, so the connection can carry the next request."""
        for _ in self:
            pass
