"""The HTTP side of `keep serve`: one handler per connection, speaking the Keep block protocol."""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import re
import socket
import ssl
import struct
import time
from typing import Any

from .._version import __version__
from ..errors import LocatorError, scrub
from ..locator import EMPTY_BLOCK, MAX_BLOCK_SIZE, Locator
from .blocks import BlockDamaged, Found, verified_chunks
from .connection import Body, DeadlineReader, KeepHTTPServer
from .context import MIN_BODY_RATE, Context
from .exchange import (
    BUSY,
    MD5_PATH,
    BodyAction,
    Exchange,
    Refusal,
    RequestRecord,
    block_target,
    decimal,
    framing_refusal,
    public_path,
    put_refusal,
    unmodified_since,
)
from .faults import Fault, FaultKind
from .shaping import Before, before, shape_body
from .trash import Outcome

__all__ = ["MIN_BODY_RATE", "Context", "KeepHandler"]

log = logging.getLogger("keepstore.server")
access_log = logging.getLogger("keepstore.server.access")

_EMPTY_MD5 = EMPTY_BLOCK.split("+")[0]
_SIZELESS = re.compile(r"/([0-9a-f]{32})((?:\+[A-Z][A-Za-z0-9@_-]*)*)\Z")
_INDEX_PATH = re.compile(r"/index(?:/([0-9a-f]{0,32}))?\Z")
_UNTRASH_PATH = re.compile(r"/untrash(/.*)\Z")
_QUERY = re.compile(r"\?[^\s'\"]*")
_SOCKET_PIECE = 64 << 10  # sent this much per socket write


class _Abort(Exception):
    """The connection is unusable (client went away, or a fault dropped it): stop quietly."""


class KeepHandler(http.server.BaseHTTPRequestHandler):
    """Serves one connection; each request on it gets an `Exchange`."""

    protocol_version = "HTTP/1.1"
    # A request line the parser cannot read must still get a status line: with the stdlib's
    # default ("HTTP/0.9") a garbage line was answered with a bare HTML body and no status.
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True
    server_version = f"keepstore/{__version__}"
    server: KeepHTTPServer
    _ex: Exchange | None = None  # the request being served (None between requests)
    _requests = 0  # requests seen on this connection

    @property
    def ctx(self) -> Context:
        context: Context = self.server.context
        return context

    # -- connection -------------------------------------------------------------------------

    def setup(self) -> None:
        self.timeout = self.ctx.idle_timeout  # type: ignore[misc]  # per-server, read by setup()
        super().setup()
        if not self.ctx.admission.opened(self.connection):
            raise ConnectionRefusedError("too many connections, none idle")  # socketserver closes it
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except BaseException:  # finish() will not run: forget the connection here
            self.ctx.admission.closed(self.connection)
            raise
        self._reader = DeadlineReader(self.connection, self.ctx.idle_timeout)
        self._buffered = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._buffered

    def handle_one_request(self) -> None:
        # An idle keep-alive connection may wait idle_timeout for its next request; once its
        # first byte is in, the request line and headers must all arrive within idle_timeout.
        # A connection that has sent nothing yet gets a shorter wait: idle floods cost less.
        self._ex = None
        self._reader.deadline = None
        admission = self.ctx.admission
        admission.waiting(self.connection)
        wait = self.ctx.idle_timeout if self._requests else min(self.ctx.idle_timeout, self.ctx.first_byte_timeout)
        try:
            self.connection.settimeout(wait)
            first = self._buffered.peek(1)
        except (TimeoutError, OSError):
            first = b""
        if not first:
            self.close_connection = True
            return
        admission.busy(self.connection)
        self._requests += 1
        with contextlib.suppress(OSError):  # gone: the next read says so
            self.connection.settimeout(self.ctx.idle_timeout)
        self._reader.deadline = time.monotonic() + self.ctx.idle_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:  # headers are in (or failed): bodies and responses use the idle timeout
            self._reader.deadline = None
            with contextlib.suppress(OSError):  # the connection is gone: the next read says so
                self.connection.settimeout(self.ctx.idle_timeout)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client is gone: nothing left to flush to
            super().finish()
        self.ctx.admission.closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib's messages quote raw request lines ("Bad request syntax ('...')"), which may
        # carry a token in a query string or a signed locator: mask those first.
        log.debug("%s: %s", self.address_string(), scrub(_QUERY.sub("?...", public_path(format % args))))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one access line per request is written by _log instead

    def _exchange(self) -> Exchange:
        if self._ex is None:
            self._ex = Exchange(self.command, self.path, self.headers, time.monotonic())
        return self._ex

    # -- admission: the rules checked before a body is read, on both paths ------------------

    def _before_body(self, ex: Exchange) -> Refusal | None:
        """The refusal a request gets before its body is read, or None with a slot taken."""
        framing = framing_refusal(self.request_version, ex.headers)
        if framing is not None:
            return framing
        if ex.method == "PUT" and not _UNTRASH_PATH.match(ex.path):
            refusal = put_refusal(ex, self.ctx.permissions.require_signatures)
            if refusal is not None:
                return refusal
        if not self.ctx.admission.admit():
            return BUSY
        ex.admitted = True
        return None

    def handle_expect_100(self) -> bool:
        # Admission happens before "100 Continue", so a refused PUT costs the client no body.
        if not hasattr(self, "do_" + self.command):
            return True  # the stdlib answers 501 next, as the only answer: no "100 Continue" first
        ex = self._exchange()
        refusal = self._before_body(ex)
        if refusal is not None:  # the client keeps its body: this connection cannot go on
            self._refuse(ex, refusal, body_sent=False)
            self._log(ex)
            return False
        try:
            return super().handle_expect_100()
        except BaseException:  # "100 Continue" could not be sent: _dispatch will not run
            self._end(ex)
            raise

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        ex = self._exchange()
        if not ex.admitted:  # no "Expect: 100-continue": the same rules, now
            refusal = self._before_body(ex)
            if refusal is not None:
                self._refuse(ex, refusal)
                self._log(ex)
                return
        try:
            self._route(ex)
        except _Abort:
            self.close_connection = True
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("%s %s: connection lost: %s", ex.method, ex.public_path, exc)
            self.close_connection = True
            if isinstance(exc, TimeoutError):  # too slow: reset, or the kernel keeps sending its buffer
                with contextlib.suppress(OSError):  # already gone
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ex.status = ex.status or 499
        except Exception:  # a bug must cost one request, not the server
            log.exception("%s %s failed", ex.method, ex.public_path)
            self.close_connection = True
            if not ex.headers_sent:
                with contextlib.suppress(OSError):  # the client is gone too
                    self._simple(ex, 500, "internal error")
        finally:
            self._end(ex)
            self._log(ex)

    def _end(self, ex: Exchange) -> None:
        if ex.admitted:
            ex.admitted = False
            self.ctx.admission.release()

    def _remember(self, ex: Exchange, status: int) -> RequestRecord:
        """Add this request's record (once), before the client can see an answer."""
        if ex.record is None:
            ex.record = RequestRecord(ex.method or "?", ex.public_path, status, 0, 0.0, ex.request_id,
                                      ex.fault.value if ex.fault else None)
            self.ctx.requests.append(ex.record)
        return ex.record

    def _log(self, ex: Exchange) -> None:
        seconds = time.monotonic() - ex.start
        record = self._remember(ex, ex.status)
        record.status = ex.status
        record.bytes_out = ex.bytes_out
        record.seconds = seconds
        record.fault = ex.fault.value if ex.fault else None
        access_log.info('%s "%s %s" %s %d %.1fms %s', self.client_address[0], ex.method, record.path, ex.status,
                        record.bytes_out, seconds * 1000, record.request_id or "-")
        if self.ctx.metrics is not None:
            stored = ex.length or 0 if ex.method == "PUT" and ex.status == 200 else 0
            self.ctx.metrics.observe(ex.method or "?", ex.status, seconds, stored, ex.bytes_out)

    def _route(self, ex: Exchange) -> None:
        method = ex.method
        index = _INDEX_PATH.match(ex.path)
        if index and method in ("GET", "HEAD"):
            return self._index(ex, index.group(1) or "")
        if ex.path == "/metrics" and method == "GET" and self.ctx.metrics is not None:
            return self._respond(ex, *self.ctx.metrics.answer(ex.token, self.ctx.permissions))
        untrash = _UNTRASH_PATH.match(ex.path)
        if method == "DELETE" or (untrash and method == "PUT"):
            if ex.has_body:  # none is expected, and one we do not read would be the next request
                self.close_connection = True
            return self._trash(ex, untrash.group(1) if untrash else None)
        if ex.has_body and method in ("GET", "HEAD"):
            # A body we do not read would be parsed as the next request on this connection.
            self.close_connection = True
        fault = None
        if method in ("GET", "HEAD", "PUT"):
            fault = self.ctx.faults.take(method, ex.md5, skip=(FaultKind.FULL,))
        if fault is not None:
            ex.fault = fault.kind
            step = before(fault, method)
            if step is Before.DROP:
                self._remember(ex, 0)  # no answer ever goes out: record it before the client can move on
                with contextlib.suppress(OSError):  # already closed by the client
                    self.connection.shutdown(socket.SHUT_RDWR)
                raise _Abort()
            if step is Before.ANSWER:
                extra = (("Retry-After", f"{fault.retry_after:g}"),) if fault.retry_after is not None else ()
                return self._refuse(ex, Refusal(int(fault.value), f"injected fault {int(fault.value)}",
                                                BodyAction.DRAIN, extra))
        if method == "PUT":
            return self._put(ex)
        if method in ("GET", "HEAD"):
            return self._get(ex, fault)
        return self._refuse(ex, Refusal(405, f"{method} is not supported"))

    # -- PUT --------------------------------------------------------------------------------

    def _put(self, ex: Exchange) -> None:
        match = MD5_PATH.match(ex.path)
        length = ex.length
        assert match is not None and length is not None  # put_refusal checked both
        md5 = match.group(1)
        body = self._body(length)

        def full() -> bool:  # an injected "full" is spent only where a new copy would be written
            if self.ctx.faults.take("PUT", md5, only=(FaultKind.FULL,)) is None:
                return False
            ex.fault = FaultKind.FULL
            return True

        result = self.ctx.blocks.store(md5, length, body, ex.storage_classes, full)
        if isinstance(result, Refusal):
            return self._refuse(ex, result, body=body)
        signed = self.ctx.permissions.sign(result.locator, ex.token)
        return self._respond(ex, 200, f"{signed}\n".encode(), {
            "X-Keep-Replicas-Stored": str(len(result.volumes)),
            "X-Keep-Storage-Classes-Confirmed": result.confirmed})

    def _body(self, length: int) -> Body:
        return Body(self._buffered, self._reader, length, self.ctx.min_rate)

    def _refuse(self, ex: Exchange, refusal: Refusal, *, body_sent: bool = True, body: Body | None = None) -> None:
        """Answer *refusal*, disposing of the request body as it says (unsent: close)."""
        if not body_sent or refusal.body is BodyAction.CLOSE:
            self.close_connection = True
        elif body is not None:
            body.drain()
        else:
            length = decimal(ex.headers.get("Content-Length", "0"))
            if length is None or length > MAX_BLOCK_SIZE or "Transfer-Encoding" in ex.headers:
                self.close_connection = True  # the body's extent is unknown, or too big to read
            elif length:
                self._body(length).drain()
        self._simple(ex, refusal.status, refusal.reason, dict(refusal.headers))

    # -- GET / HEAD -------------------------------------------------------------------------

    def _get(self, ex: Exchange, fault: Fault | None) -> None:
        permissions = self.ctx.permissions
        sizeless = _SIZELESS.match(ex.path)  # /<md5>, or /<md5>+A<sig>@<exp>... as Go clients send
        size: int | None
        if sizeless:
            md5, size = sizeless.group(1), None
            if md5 == _EMPTY_MD5:
                return self._respond(ex, 200, b"")
            if ex.method == "GET":
                return self._simple(ex, 405, "GET needs the block size in the locator")
            hints = sizeless.group(2)[1:].split("+") if sizeless.group(2) else []
            try:  # the size is not part of a signature: check the hints against a stand-in
                loc = Locator(md5, 0, tuple(hints))
            except LocatorError:
                return self._simple(ex, 400, "bad locator")
        else:
            try:
                loc = Locator.parse(ex.path[1:])
            except LocatorError:
                return self._simple(ex, 400, "bad locator")
            md5, size = loc.md5, loc.size
            if str(loc.bare()) == EMPTY_BLOCK:
                return self._respond(ex, 200, b"")
        problem = permissions.check_read(loc, ex.token)
        if problem is not None:  # a bare md5 carries no signature: refused like an unsigned locator
            return self._simple(ex, *problem)
        copies = self.ctx.blocks.locate(md5, size)
        if not copies:
            return self._simple(ex, 404, "not found")
        found = copies[0]
        if ex.method == "HEAD":
            headers = {"Content-Length": str(found.size)}
            if _wants_local_signature(ex.headers.get("X-Keep-Signature")):
                local = permissions.local_signature(loc, found.size, ex.token)
                if local is not None:
                    headers["X-Keep-Locator"] = str(local)
            return self._head_only(ex, 200, headers)
        return self._send_block(ex, md5, copies, fault)

    def _send_block(self, ex: Exchange, md5: str, copies: list[Found], fault: Fault | None) -> None:
        """Stream the first copy that opens while hashing it; the last chunk is held back until
        the hash checks, so a damaged copy reaches the client as a truncated body (as keepstore
        3.x does). A copy that cannot be opened (removed, unreadable) gives way to the next."""
        for found in copies:
            try:
                f = open(found.path, "rb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("volume %s: cannot open block %s: %s", found.volume.path, md5, exc.strerror or exc)
                continue
            break
        else:
            return self._simple(ex, 404, "not found")
        path, size = found.path, found.size
        with f:
            self._head_only(ex, 200, {"Content-Length": str(size), "Content-Type": "application/octet-stream"})
            ex.send_size = size
            try:
                for piece in shape_body(fault, verified_chunks(f, md5, size), size):
                    self._send(ex, piece)
            except BlockDamaged:
                log.error("block %s at %s does not match its locator; truncating the response", md5, path)
                raise _Abort() from None
            if ex.bytes_out < size:
                raise _Abort()
        return None

    def _send(self, ex: Exchange, data: bytes) -> None:
        """Write in pieces, each bounded by the idle timeout and all by the response's deadline
        (`min_rate`, as for request bodies): a reader draining a little per idle timeout must
        not hold a thread and a slot for hours. Small pieces: a reader at a steady `min_rate`
        is never asked to take megabytes within one timeout."""
        idle = self.ctx.idle_timeout
        if ex.send_deadline is None:
            ex.send_deadline = time.monotonic() + idle + ex.send_size / self.ctx.min_rate
        with memoryview(data) as view:
            try:
                for start in range(0, len(view), _SOCKET_PIECE):
                    remaining = ex.send_deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"reader below {self.ctx.min_rate:g} B/s: response cut off")
                    self.connection.settimeout(min(idle, remaining))
                    piece = view[start:start + _SOCKET_PIECE]
                    self.wfile.write(piece)
                    ex.bytes_out += len(piece)
            finally:
                self.connection.settimeout(idle)

    # -- index ------------------------------------------------------------------------------

    def _index(self, ex: Exchange, prefix: str) -> None:
        problem = self.ctx.permissions.check_system_token(ex.token)
        if problem is not None:
            return self._simple(ex, *problem)
        return self._respond(ex, 200, self.ctx.blocks.index(prefix), {"Content-Type": "text/plain; charset=utf-8"})

    # -- trash ------------------------------------------------------------------------------

    def _trash(self, ex: Exchange, untrash: str | None) -> None:
        """``DELETE /<locator>``, ``PUT /untrash/<locator>``: system token only (see docs/server.md)."""
        problem = self.ctx.permissions.check_system_token(ex.token)
        if problem is not None:
            return self._simple(ex, *problem)
        target = block_target(ex.path if untrash is None else untrash)
        if target is None:
            return self._simple(ex, 400, "bad locator")
        md5, size = target
        if untrash is not None:
            if self.ctx.blocks.untrash(md5):
                return self._respond(ex, 200, b"")
            return self._simple(ex, 404, "not in the trash")
        outcomes = self.ctx.blocks.trash(md5, size, unmodified_since(ex.headers.get("If-Unmodified-Since")))
        if all(o is Outcome.ABSENT for o in outcomes):
            return self._simple(ex, 404, "not found")
        if Outcome.MODIFIED in outcomes:
            return self._simple(ex, 412, "modified since If-Unmodified-Since; nothing trashed")
        return self._respond(ex, 200, b"", {"X-Keep-Trashed": str(sum(o.removed for o in outcomes))})

    # -- responses --------------------------------------------------------------------------

    def _head_only(self, ex: Exchange, status: int, headers: dict[str, str]) -> None:
        ex.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._remember(ex, status)
        self.end_headers()
        ex.headers_sent = True

    def _respond(self, ex: Exchange, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        all_headers.update(headers or {})
        self._head_only(ex, status, all_headers)
        ex.send_size = len(body)
        if ex.method != "HEAD" and body:
            self._send(ex, body)

    def _simple(self, ex: Exchange, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        self._respond(ex, status, f"{status} {reason}\n".encode(), headers)


def _wants_local_signature(value: str | None) -> bool:
    """``X-Keep-Signature: local, <UTC time>``: the client asks for a locally signed locator."""
    return value is not None and value.split(",", 1)[0].strip() == "local"

