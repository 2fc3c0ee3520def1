"""CurlTransport: HTTP over pycurl with a bounded pool of keep-alive handles per client."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import cast

import pycurl

from .base import FanOut, Headers, Pump, Race, Request, Response, Transport, TransportError
from .exchange import HEADER_LIMIT, BodyReader, Exchange
from .overlap import OverlapCounts
from .race import CurlPump, CurlRace, Slot

__all__ = ["CurlTransport", "default_ca_file"]

log = logging.getLogger(__name__)

_SYSTEM_BUNDLES = (
    "/etc/arvados/ca-certificates.crt",
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Red Hat
)
_UPLOAD_BUFFER = 1 << 20  # fewer read callbacks per PUT
# A body up to this size goes to libcurl whole (POSTFIELDS): no read callback, and libcurl puts
# it in the same buffer as the request head (its own limit for that is 64 KiB too).
_WHOLE_BODY = 64 << 10
_RECEIVE_BUFFER = 512 << 10  # libcurl's default is 16 KiB: 32x the body callbacks on a 64 MiB GET

# libcurl error codes that mean "no connection was made" (the service list may be stale)
_CONNECT_CODES = {pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_RESOLVE_PROXY, pycurl.E_COULDNT_CONNECT}
_REASONS = {
    pycurl.E_COULDNT_RESOLVE_HOST: "cannot resolve host",
    pycurl.E_COULDNT_CONNECT: "connection refused",
    pycurl.E_OPERATION_TIMEDOUT: "timed out",
    pycurl.E_PARTIAL_FILE: "truncated body",
    pycurl.E_GOT_NOTHING: "empty reply",
    pycurl.E_SEND_ERROR: "send failed",
    pycurl.E_RECV_ERROR: "receive failed",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "TLS certificate not trusted",
}


def default_ca_file(environ: dict[str, str] | None = None) -> str:
    """The CA bundle to trust: ``SSL_CERT_FILE``, a system bundle, else certifi's.

    pycurl's wheels carry a CA path from the build machine, so one is always set explicitly.
    """
    env = os.environ if environ is None else environ
    candidates = [env.get("SSL_CERT_FILE", ""), *_SYSTEM_BUNDLES]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    import certifi  # a dependency of the Arvados SDK and of most Python installs

    return str(certifi.where())


class CurlTransport(Transport):
    """A `Transport` on pycurl.

    Handles are reused (HTTP keep-alive) from a LIFO pool of at most *pool_size*; a handle
    that failed below HTTP is closed rather than pooled. The CA bundle is always set
    (*ca_file* or `default_ca_file()`); ``insecure=True`` turns off certificate checks and
    warns. TCP keepalive is on. Connect timeout, the low-speed limit and the overall deadline
    apply to GET, PUT and HEAD alike; answer bodies are bounded (see `Request`). A block GET's
    body of at least `OVERLAP_MIN` bytes is received into the `bytes` answered and hashed on a
    second thread as it arrives (`HashedBody`); ``overlap`` counts those bodies.

    `race` (hedged GETs) runs its requests on one curl multi handle in the caller's thread, so
    a loser is dropped at once and no thread waits for it; those multi handles (each with its
    own kept-alive connections) are pooled too, at most half of *pool_size*. `fan_out` (the
    copies of a PUT, all at once) runs on the same multi handles.

    Args:
        ca_file: CA bundle to trust; default `default_ca_file()`.
        insecure: Skip certificate and host name checks (warns).
        pool_size: Most idle handles (connections) kept for reuse.
        user_agent: The ``User-Agent`` header; default ``keepstore/<version> libcurl/<version>``.
    """

    def __init__(self, *, ca_file: str | None = None, insecure: bool = False, pool_size: int = 16,
                 user_agent: str | None = None) -> None:
        if insecure:
            warnings.warn("TLS certificate verification is disabled (insecure=True)", stacklevel=2)
        self.ca_file = ca_file or default_ca_file()
        self.insecure = insecure
        self.pool_size = pool_size
        self.user_agent = user_agent or _default_user_agent()
        self._pool: queue.LifoQueue[pycurl.Curl] = queue.LifoQueue(maxsize=pool_size)
        self._slots: list[Slot] = []  # idle multi handles for races, most recently used last
        self._slots_lock = threading.Lock()
        self._closed = threading.Event()
        #: Large GET bodies hashed while they arrived (see `HashedBody`), and their threads.
        self.overlap = OverlapCounts()

    def __repr__(self) -> str:
        return f"CurlTransport(ca_file={self.ca_file!r}, insecure={self.insecure}, pool_size={self.pool_size})"

    def request(self, request: Request) -> Response:
        if self._closed.is_set():
            raise TransportError("transport is closed", url=request.url)
        if request.cancelled:
            raise TransportError(f"{request.method} cancelled", url=_strip_query(request.url), cancelled=True)
        curl = self._checkout()
        exchange = Exchange(request)
        healthy = False
        try:
            self._configure(curl, request, exchange)
            try:
                curl.perform()
            except pycurl.error as exc:
                if exchange.truncated:  # we stopped reading an overlong body: an answer all the same
                    return exchange.response()  # (the handle is closed: its connection is mid-body)
                raise _map_error(exc, curl, request, exchange) from exc
            healthy = True
            return exchange.response()
        finally:
            exchange.close()  # a failed large GET's hashing thread ends here
            self._checkin(curl, healthy)

    def race(self, requests: Sequence[Request], hedge_after: float,
             on_start: Callable[[int], None] | None = None) -> Race:
        # A closed transport raises nothing here: each request fails as `request` would fail it.
        with self._slots_lock:
            slot = self._slots.pop() if self._slots else Slot()
        return CurlRace(slot, requests, hedge_after, on_start, self._configure_on_multi, _map_error,
                        self._closed, done=self._checkin_slot)

    def fan_out(self, requests: Sequence[Request], on_start: Callable[[int], None] | None = None) -> FanOut:
        with self._slots_lock:
            slot = self._slots.pop() if self._slots else Slot()
        return CurlRace(slot, requests, 0.0, on_start, self._configure_on_multi, _map_error, self._closed,
                        done=self._checkin_slot, together=True)

    def pump(self, on_start: Callable[[int], None] | None = None) -> Pump:
        return CurlPump(Slot(), on_start, self._configure_on_multi, _map_error, self._closed)

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break
        with self._slots_lock:
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.close()

    def _checkin_slot(self, slot: Slot) -> None:
        with self._slots_lock:
            if not self._closed.is_set() and len(self._slots) < max(1, self.pool_size // 2):
                self._slots.append(slot)
                return
        slot.close()  # closed (close() empties the list under the same lock), or enough idle already

    def _checkout(self) -> pycurl.Curl:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return pycurl.Curl()

    def _checkin(self, curl: pycurl.Curl, healthy: bool) -> None:
        if not healthy or self._closed.is_set():
            curl.close()  # its connection may be in a bad state
            return
        curl.reset()  # keeps the connection cache, drops options and callbacks
        try:
            self._pool.put_nowait(curl)
        except queue.Full:
            curl.close()
            return
        if self._closed.is_set():  # close() ran between our check and the put: empty the pool again
            self.close()

    def _configure_on_multi(self, curl: pycurl.Curl, request: Request, exchange: Exchange) -> None:
        """`_configure` for a `CurlRace`, which sees a cancel itself between its waits."""
        self._configure(curl, request, exchange, progress=False)

    def _configure(self, curl: pycurl.Curl, request: Request, exchange: Exchange, *, progress: bool = True) -> None:
        timeout = request.timeout
        exchange.overlap = self.overlap
        curl.setopt(pycurl.URL, request.url)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.USERAGENT, self.user_agent)
        curl.setopt(pycurl.CAINFO, self.ca_file)
        if self.insecure:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        curl.setopt(pycurl.TCP_KEEPALIVE, 1)
        curl.setopt(pycurl.TCP_KEEPIDLE, 75)
        curl.setopt(pycurl.TCP_KEEPINTVL, 75)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(timeout.connect * 1000)))
        # Abort when fewer than min_bandwidth bytes/s move for `read` seconds (HEAD included:
        # a server that accepts and then says nothing is caught the same way).
        curl.setopt(pycurl.LOW_SPEED_LIMIT, int(timeout.min_bandwidth))
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(timeout.read)))
        # ... and in any case after the request's overall deadline, however fast bytes trickle.
        curl.setopt(pycurl.TIMEOUT_MS, max(1, int(request.deadline() * 1000)))
        if progress:
            # libcurl's perform() calls this many times a second, also while it waits to connect
            # or for a stalled server: a set cancel event aborts the transfer there, and on the
            # main thread Python gets to run its signal handlers (Ctrl-C) instead of waiting for
            # libcurl to return. On a multi handle (a race) control comes back to Python between
            # waits of at most a tenth of a second anyway, and the race makes the check then:
            # about ten Python calls fewer per 4 KiB GET.
            curl.setopt(pycurl.NOPROGRESS, 0)
            curl.setopt(pycurl.XFERINFOFUNCTION, exchange.on_progress)
        curl.setopt(pycurl.HEADERFUNCTION, exchange.on_header)
        curl.setopt(pycurl.WRITEFUNCTION, exchange.on_body)
        headers = cast(Headers, request.headers).lines()  # Request.__post_init__ makes them Headers
        method = request.method.upper()
        if method == "HEAD":
            curl.setopt(pycurl.NOBODY, 1)
        elif method == "GET":
            curl.setopt(pycurl.HTTPGET, 1)
            curl.setopt(pycurl.BUFFERSIZE, _RECEIVE_BUFFER)
        elif method == "PUT":
            body = request.body if request.body is not None else memoryview(b"")
            self._set_upload(curl, method, body, headers)
            # 100-continue costs a round trip per block; Keep servers answer errors fast anyway.
            headers.append("Expect:")
        else:
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            if request.body is not None:
                self._set_upload(curl, method, request.body, headers)
                headers.append("Expect:")
        curl.setopt(pycurl.HTTPHEADER, headers)

    @staticmethod
    def _set_upload(curl: pycurl.Curl, method: str, body: memoryview, headers: list[str]) -> None:
        if body.nbytes <= _WHOLE_BODY:
            # libcurl sends this as a POST with the method renamed: its form Content-Type is
            # dropped, and it resends the bytes itself when a kept-alive connection was closed.
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            curl.setopt(pycurl.POSTFIELDSIZE_LARGE, body.nbytes)
            curl.setopt(pycurl.POSTFIELDS, body.obj if type(body.obj) is bytes and len(body.obj) == body.nbytes
                        else body.tobytes())
            headers.append("Content-Type:")
            return
        curl.setopt(pycurl.UPLOAD, 1)
        curl.setopt(pycurl.INFILESIZE_LARGE, body.nbytes)
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, _UPLOAD_BUFFER)
        reader = BodyReader(body)
        curl.setopt(pycurl.READFUNCTION, reader.read)
        curl.setopt(pycurl.SEEKFUNCTION, reader.seek)


def _map_error(exc: pycurl.error, curl: pycurl.Curl, request: Request, exchange: Exchange) -> TransportError:
    """The one place pycurl errors become keepstore errors."""
    code = exc.args[0] if exc.args else -1
    message = str(exc.args[1]) if len(exc.args) > 1 else ""
    reason = _REASONS.get(code, f"curl error {code}")
    # Whether a connection was made: an HTTP status came back, or libcurl timed the connect, or
    # (a kept-alive connection reused, whose CONNECT_TIME is 0) the socket has a local port.
    # PRETRANSFER_TIME is no sign of it: libcurl 8 reports it > 0 with CONNECT_TIME 0 when the
    # connect itself timed out.
    connected = exchange.status != 0 or _connected(curl)
    timed_out = code == pycurl.E_OPERATION_TIMEDOUT
    if exchange.cancelled:
        return TransportError(f"{request.method} cancelled", url=_strip_query(request.url), connect=False,
                              code=code, cancelled=True)
    if exchange.too_long:
        reason = f"body longer than the expected {exchange.expected_size} bytes"
    elif exchange.headers_too_long:
        reason = f"headers longer than {HEADER_LIMIT} bytes"
    elif timed_out:
        if not connected:
            reason = f"connect timed out after {_secs(request.timeout.connect)}s"
        elif exchange.status == 0:
            reason = f"no response within {_secs(request.timeout.read)}s"
        elif "too slow" in message:  # libcurl's LOW_SPEED message ("Operation too slow. Less than ...")
            reason = (f"transfer slower than {request.timeout.min_bandwidth} B/s "
                      f"for {_secs(request.timeout.read)}s")
        else:
            reason = f"no complete answer within the {_secs(request.deadline())}s deadline"
    return TransportError(
        f"{request.method} {reason}",
        url=_strip_query(request.url),
        connect=code in _CONNECT_CODES or (timed_out and not connected),
        timeout=timed_out,
        code=code,
    )


def _secs(seconds: float) -> str:
    """Seconds for a message: 3 (not 2.99995), 0.05, 2048."""
    return f"{seconds:.3g}" if seconds < 1000 else f"{seconds:.0f}"


def _connected(curl: pycurl.Curl) -> bool:
    """Whether the failed transfer had a TCP connection (new: CONNECT_TIME > 0; reused: a local port)."""
    try:
        return float(curl.getinfo(pycurl.CONNECT_TIME)) > 0 or int(curl.getinfo(pycurl.LOCAL_PORT)) > 0
    except pycurl.error:  # handle in an odd state: treat as not connected
        return False


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0]


def _default_user_agent() -> str:
    from .._version import __version__

    return f"keepstore/{__version__} {pycurl.version.split()[0]}"


