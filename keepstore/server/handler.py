"""The HTTP side of `keep serve`: one handler per connection, speaking the Keep block protocol."""

from __future__ import annotations

import contextlib
import http.server
import io
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from .._version import __version__
from ..errors import scrub
from ..locator import MAX_BLOCK_SIZE
from .blocks import BlockDamaged, verified_chunks
from .connection import Body, DeadlineReader, KeepHTTPServer, reset_on_close, send_now, set_timeout
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
    read_target,
    unmodified_since,
    wants_local_signature,
)
from .faults import Fault, FaultKind
from .quick import Served, account, quick_get
from .shaping import Before, before, shape_body
from .trash import Outcome
from .verified import cached_copy, file_key, open_copy, send_file
from .wire import MAX_HEAD, SMALL_BODY, read_head, response_head

__all__ = ["MIN_BODY_RATE", "Context", "KeepHandler"]

log = logging.getLogger("keepstore.server")

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

    ctx: Context  # the server's, set by setup() (an attribute: read a dozen times per request)

    # -- connection -------------------------------------------------------------------------

    def setup(self) -> None:
        self.ctx = self.server.context
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
            set_timeout(self.connection, wait)
            first = self._buffered.peek(1)
        except (TimeoutError, OSError):
            first = b""
        if not first:
            self.close_connection = True
            return
        admission.busy(self.connection)
        self._requests += 1
        with contextlib.suppress(OSError):  # gone: the next read says so
            set_timeout(self.connection, self.ctx.idle_timeout)
        self._reader.deadline = time.monotonic() + self.ctx.idle_timeout
        if not self._lean_request():
            super().handle_one_request()

    def _lean_request(self) -> bool:
        """Serve the next request as the standard library would, without its (slow) header
        parser, when its head is whole in the buffer and plain (`read_head`); False when it is
        not, and nothing was read: the standard library then reads and answers it."""
        head = read_head(self._buffered.peek(MAX_HEAD))
        if head is None:
            return False
        self._buffered.read(head.length)
        self._reader.deadline = None  # as after parse_request: bodies and answers use the idle timeout
        self.command, self.path, self.request_version = head.command, head.path, "HTTP/1.1"
        self.requestline, self.raw_requestline = f"{head.command} {head.path} HTTP/1.1", b""
        self.headers = head.headers  # type: ignore[assignment]  # get/get_all/in: all Exchange uses
        self.close_connection = (head.headers.get("Connection") or "").lower() == "close"
        try:
            set_timeout(self.connection, self.ctx.idle_timeout)
            if (head.headers.get("Expect") or "").lower() == "100-continue" and not self.handle_expect_100():
                return True
            if self.server.tls is None and (served := quick_get(
                    self.ctx, self.connection, head, close=self.close_connection, server=self.version_string(),
                    client=self.client_address[0])) is not Served.PASSED:
                self.close_connection |= served is Served.LOST
                return True
            getattr(self, "do_" + head.command)()
        except TimeoutError as exc:  # as the standard library's handle_one_request
            self.log_error("Request timed out: %r", exc)
            self.close_connection = True
        return True

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:  # headers are in (or failed): bodies and responses use the idle timeout
            self._reader.deadline = None
            with contextlib.suppress(OSError):  # the connection is gone: the next read says so
                set_timeout(self.connection, self.ctx.idle_timeout)

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

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # every method goes through _dispatch

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
                reset_on_close(self.connection)
            ex.status = ex.status or 499
        except Exception:  # a bug must cost one request, not the server
            log.exception("%s %s failed", ex.method, ex.public_path)
            self.close_connection = True
            if not ex.headers_sent:
                with contextlib.suppress(OSError):  # the client is gone too
                    self._simple(ex, 500, "internal error")
        finally:  # recorded before the slot is freed: no request in flight means every one recorded
            try:
                self._log(ex)
            finally:
                self._end(ex)

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
        record = self._remember(ex, ex.status)
        record.status = ex.status
        record.bytes_out = ex.bytes_out
        record.seconds = time.monotonic() - ex.start
        record.fault = ex.fault.value if ex.fault else None
        stored = ex.length or 0 if ex.method == "PUT" and ex.status == 200 else 0
        account(self.ctx, self.client_address[0], record, stored)

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
        target = read_target(ex.path, ex.method)
        if target is None:  # the empty block: always there
            return self._respond(ex, 200, b"")
        if isinstance(target, Refusal):
            return self._simple(ex, target.status, target.reason)
        loc, md5, size = target
        problem = permissions.check_read(loc, ex.token)
        if problem is not None:  # a bare md5 carries no signature: refused like an unsigned locator
            return self._simple(ex, *problem)
        if ex.method == "GET" and size is not None:
            return self._send_block(ex, md5, size, fault)
        copies = self.ctx.blocks.locate(md5, size)
        if not copies:
            return self._simple(ex, 404, "not found")
        found = copies[0]
        headers = {"Content-Length": str(found.size)}
        if wants_local_signature(ex.headers.get("X-Keep-Signature")):
            local = permissions.local_signature(loc, found.size, ex.token)
            if local is not None:
                headers["X-Keep-Locator"] = str(local)
        return self._head_only(ex, 200, headers)

    def _send_block(self, ex: Exchange, md5: str, size: int, fault: Fault | None) -> None:
        """Send the first volume's copy that opens. A copy verified before, and unchanged since
        (`VerifiedFiles`), goes out unread (``sendfile``; a small one from bytes kept, found by
        one ``stat``) unless a fault or TLS is in the way; any other is streamed while hashed,
        the last chunk held back until the hash checks, so a damaged copy reaches the client as
        a truncated body (as keepstore 3.x does), every time. A copy that cannot be opened
        gives way to the next."""
        verified, volumes = self.ctx.blocks.verified, self.ctx.blocks.volumes
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        unread = fault is None and self.server.tls is None
        if unread and size <= SMALL_BODY and (data := cached_copy(volumes, md5, size, verified)) is not None:
            ex.send_size = size
            return self._head_only(ex, 200, headers, data)
        copy = open_copy(volumes, md5, size)
        if copy is None:
            return self._simple(ex, 404, "not found")
        key, path = file_key(copy.st), copy.path
        ex.send_size = size
        if unread and verified.holds(path, key):
            try:
                return self._send_unread(ex, copy.fd, size, headers, lambda data: verified.keep(path, key, data))
            finally:
                os.close(copy.fd)
        with open(copy.fd, "rb", buffering=0) as f:
            self._head_only(ex, 200, headers)
            try:
                for piece in shape_body(fault, verified_chunks(f, md5, size, lambda: verified.add(path, key)), size):
                    self._send(ex, piece)
            except BlockDamaged:
                # Not quarantined here: `keep check` tells a damaged copy from a missing one by
                # reading it; the scrubber moves it aside.
                log.error("block %s at %s does not match its locator; truncating the response", md5, path)
                verified.forget(path)
                raise _Abort() from None
            if ex.bytes_out < size:
                raise _Abort()
        return None

    def _send_unread(self, ex: Exchange, fd: int, size: int, headers: dict[str, str],
                     keep: Callable[[bytes], object]) -> None:
        """A verified copy: a small one read, *kept*, and sent with its head in one write, a big
        one by ``sendfile`` under the same idle timeout and minimum rate as every response."""
        if size <= SMALL_BODY:
            data = os.pread(fd, size, 0)
            if len(data) != size:  # truncated since its stat: never send a short body as whole
                raise _Abort()
            keep(data)
            return self._head_only(ex, 200, headers, data)
        self._head_only(ex, 200, headers)
        idle = self.ctx.idle_timeout
        deadline = time.monotonic() + idle + size / self.ctx.min_rate
        for sent in send_file(self.connection, fd, size, idle=idle, deadline=deadline):
            ex.bytes_out += sent
        if ex.bytes_out < size:
            raise _Abort()
        return None

    def _send(self, ex: Exchange, data: bytes) -> None:
        """Write in pieces, each bounded by the idle timeout and all by the response's deadline
        (`min_rate`, as for request bodies): a reader draining a little per idle timeout must
        not hold a thread and a slot for hours. Pieces sized so a reader at a steady `min_rate`
        takes each in a quarter of the idle timeout."""
        idle = self.ctx.idle_timeout
        if ex.send_deadline is None:
            ex.send_deadline = time.monotonic() + idle + ex.send_size / self.ctx.min_rate
        # A reader at the minimum rate takes one piece in a quarter of the idle timeout.
        step = max(_SOCKET_PIECE, min(1 << 20, int(self.ctx.min_rate * idle / 4)))
        with memoryview(data) as view:
            try:
                for start in range(0, len(view), step):
                    remaining = ex.send_deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"reader below {self.ctx.min_rate:g} B/s: response cut off")
                    self.connection.settimeout(min(idle, remaining))
                    piece = view[start:start + step]
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

    def _head_only(self, ex: Exchange, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Send the status line and *headers* (and a small *body* with them, in one write)."""
        ex.status = status
        self._remember(ex, status)
        send_now(self.connection, response_head(status, headers, self.version_string(),
                                                close=self.close_connection) + body)
        ex.headers_sent = True
        ex.bytes_out += len(body)

    def _respond(self, ex: Exchange, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        all_headers.update(headers or {})
        ex.send_size = len(body)
        small = ex.method != "HEAD" and len(body) <= SMALL_BODY
        self._head_only(ex, status, all_headers, body if small else b"")
        if ex.method != "HEAD" and not small:
            self._send(ex, body)

    def _simple(self, ex: Exchange, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        self._respond(ex, status, f"{status} {reason}\n".encode(), headers)
