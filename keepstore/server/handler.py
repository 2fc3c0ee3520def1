"""The HTTP side of `KeepServer`: one handler per connection, speaking the Keep block protocol."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import http.server
import io
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._version import __version__
from ..errors import ConfigError, LocatorError, WriteError, _scrub
from ..locator import EMPTY_BLOCK, MAX_BLOCK_SIZE, Locator
from .faults import Fault
from .volumes import Volume, VolumeFull, rank_volumes

if TYPE_CHECKING:  # pragma: no cover
    from .app import KeepServer

__all__ = ["MIN_BODY_RATE", "RequestRecord"]

log = logging.getLogger("keepstore.server")
access_log = logging.getLogger("keepstore.server.access")

_EMPTY_MD5 = EMPTY_BLOCK.split("+")[0]
_MD5_PATH = re.compile(r"/([0-9a-f]{32})(?:\+([0-9]+))?\Z")
_BLOCK_OF_PATH = re.compile(r"/([0-9a-f]{32})(?:\+|\Z)")
_INDEX_PATH = re.compile(r"/index(?:/([0-9a-f]{0,32}))?\Z")
_QUERY = re.compile(r"\?[^\s'\"]*")
_SIGNATURE = re.compile(r"\+A[0-9a-f]{40}@[0-9a-f]{8}")
_REMOTE_SIGNATURE = re.compile(r"\+R([a-z0-9]{5})-[0-9a-f]{40}@[0-9a-f]{8}")
# A request body must average at least this rate (after one idle_timeout of grace): a client
# dripping a byte per idle_timeout would otherwise hold a thread and an admission slot for days.
MIN_BODY_RATE = 32 * 1024
_DIGITS = re.compile(r"[0-9]+\Z")  # ASCII only: str.isdigit() also takes "²", which int() refuses
_CHUNK = 1 << 20
_SEND_CHUNK = 4 << 20  # read from disk (and hashed) this much at a time
_SOCKET_PIECE = 64 << 10  # ...and sent this much per socket write


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it (for tests: count requests, check headers' effects).

    A record is added to `KeepServer.requests` just before the response's headers are sent
    (or when the request ends without a response), so a client that has its answer can count
    on finding the record; ``bytes_out`` and ``seconds`` are final once the request ends.
    """

    method: str
    path: str  # without signatures or query
    status: int
    bytes_out: int
    seconds: float
    request_id: str
    fault: str | None = None


class _Abort(Exception):
    """The connection is unusable (client went away, or a fault dropped it): stop quietly."""


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type, keep: KeepServer, family: int) -> None:
        self.address_family = family
        self.keep = keep
        try:
            super().__init__(address, handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from exc

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        if self.keep._ssl is not None:  # the handshake runs in the handler's thread, not here
            conn = self.keep._ssl.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each bounded by the idle timeout and, while a request's line and
    headers are being read, by one overall deadline: a client dripping a byte at a time
    (slowloris) must not hold a thread for longer than the idle timeout."""

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
            self.sock.settimeout(min(self.idle, remaining))
        return self.sock.recv_into(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request line the parser cannot read must still get a status line: with the stdlib's
    # default ("HTTP/0.9") a garbage line was answered with a bare HTML body and no status.
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True
    server_version = f"keepstore/{__version__}"
    server: _HTTPServer
    # What this request has done so far (reset by _begin for each request on the connection).
    _status: int = 0
    _bytes_out: int = 0
    _fault: str | None = None
    _headers_sent: bool = False
    _record: RequestRecord | None = None
    _method: str = ""
    _public_path: str = ""
    _admitted: bool | None = None  # set by handle_expect_100 before the body is sent

    # -- connection -------------------------------------------------------------------------

    def setup(self) -> None:
        keep = self.server.keep
        self.timeout = keep.idle_timeout  # type: ignore[misc]  # per-server, read by setup()
        super().setup()
        keep._track(self.connection, True)
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except BaseException:  # finish() will not run: forget the connection here
            keep._track(self.connection, False)
            raise
        self._reader = _DeadlineReader(self.connection, keep.idle_timeout)
        self._buffered = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._buffered

    def handle_one_request(self) -> None:
        # An idle keep-alive connection may wait idle_timeout for its next request; once its
        # first byte is in, the request line and headers must all arrive within idle_timeout.
        self._reader.deadline = None
        try:
            first = self._buffered.peek(1)
        except (TimeoutError, OSError):
            first = b""
        if not first:
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.server.keep.idle_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:  # headers are in (or failed): bodies and responses use the idle timeout
            self._reader.deadline = None
            with contextlib.suppress(OSError):
                self.connection.settimeout(self.server.keep.idle_timeout)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.keep._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib's messages quote raw request lines ("Bad request syntax ('...')"), which may
        # carry a token in a query string or a signed locator: mask those first.
        log.debug("%s: %s", self.address_string(), _scrub(_QUERY.sub("?...", _public(format % args))))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one access line per request is written by _dispatch instead

    def _begin(self, method: str) -> None:
        self._status = 0
        self._bytes_out = 0
        self._fault = None
        self._headers_sent = False
        self._record = None
        self._method = method
        self._public_path = _public(urlsplit(self.path).path)

    def handle_expect_100(self) -> bool:
        # Admission happens before "100 Continue", so a busy server's 503 costs the client no body.
        self._begin(self.command)
        if not hasattr(self, "do_" + self.command):
            return super().handle_expect_100()  # the stdlib answers 501 next: nothing to admit
        keep = self.server.keep
        refusal = self._refuse_before_body() if self.command == "PUT" else None
        if refusal is not None:  # say so before "100 Continue": the client keeps its body
            self._admitted = False
            self.close_connection = True
            self._simple(*refusal)
            self._log(self.command, refusal[0], 0.0)
            return False
        if not keep._admit():
            self._admitted = False
            self.close_connection = True
            self._simple(503, "too many requests in flight", {"Retry-After": "1"})
            self._log(self.command, 503, 0.0)
            return False
        self._admitted = True  # _dispatch, which runs next, releases the slot
        try:
            return super().handle_expect_100()
        except BaseException:  # "100 Continue" could not be sent: _dispatch will not run
            self._admitted = None
            keep._release()
            raise

    def _refuse_before_body(self) -> tuple[int, str] | None:
        """The answer a PUT gets whatever its body holds, if it gets one: the checks of `_put`
        that need no body, in the same order, so both paths answer a request alike."""
        if self.server.keep.require_signatures and not self._token():
            return 401, "no token"
        length = _decimal(self.headers.get("Content-Length"))
        if length is None:
            return 411, "Content-Length required"
        if length > MAX_BLOCK_SIZE:
            return 413, f"block of {length} bytes is over the 64 MiB maximum"
        return None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        keep = self.server.keep
        start = time.monotonic()
        self._begin(method)
        admitted, self._admitted = self._admitted, None
        if admitted is None and not keep._admit():
            self._drain_body()
            self._simple(503, "too many requests in flight", {"Retry-After": "1"})
            self._log(method, 503, start)
            return
        path = urlsplit(self.path).path
        try:
            self._route(method, path)
        except _Abort:
            self.close_connection = True
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            log.debug("%s %s: connection lost: %s", method, _public(path), exc)
            self.close_connection = True
            self._status = self._status or 499
        except Exception:  # a bug must cost one request, not the server
            log.exception("%s %s failed", method, _public(path))
            self.close_connection = True
            if not self._headers_sent:
                with contextlib.suppress(OSError):
                    self._simple(500, "internal error")
        finally:
            keep._release()
            self._log(method, self._status, start)

    def _request_id(self) -> str:
        rid = self.headers.get("X-Request-Id", "") if self.headers else ""
        return rid if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", rid or "") else ""

    def _remember(self, status: int) -> RequestRecord:
        """Add this request's record (once), before the client can see an answer."""
        if self._record is None:
            self._record = RequestRecord(self._method or self.command or "?", self._public_path, status, 0, 0.0,
                                         self._request_id(), self._fault)
            self.server.keep.requests.append(self._record)
        return self._record

    def _log(self, method: str, status: int, start: float) -> None:
        seconds = time.monotonic() - start if start else 0.0
        record = self._remember(status)
        record.status = status
        record.bytes_out = self._bytes_out
        record.seconds = seconds
        record.fault = self._fault
        access_log.info('%s "%s %s" %s %d %.1fms %s', self.client_address[0], method, record.path, status,
                        record.bytes_out, seconds * 1000, record.request_id or "-")

    def _route(self, method: str, path: str) -> None:
        keep = self.server.keep
        index = _INDEX_PATH.match(path)
        if index and method in ("GET", "HEAD"):
            return self._index(index.group(1) or "")
        match = _BLOCK_OF_PATH.match(path)  # any locator form, signed or hinted
        md5 = match.group(1) if match else None
        has_body = (_decimal(self.headers.get("Content-Length")) or 0) > 0 or "Transfer-Encoding" in self.headers
        if has_body and method in ("GET", "HEAD"):
            # A body we do not read would be parsed as the next request on this connection.
            self.close_connection = True
        fault = keep.faults.take(method, md5, skip=("full",)) if method in ("GET", "HEAD", "PUT") else None
        if fault is not None:
            self._fault = fault.kind
            if self._pre_fault(fault, method):
                return None
        if method == "PUT":
            return self._put(path, fault)
        if method in ("GET", "HEAD"):
            return self._get(method, path, fault)
        self._drain_body()
        self._simple(405, f"{method} is not supported")
        return None

    def _pre_fault(self, fault: Fault, method: str) -> bool:
        """Apply the faults that act before the normal handling; True when it answered."""
        if fault.kind == "delay":
            time.sleep(fault.value)
        elif fault.kind == "drop":
            self._remember(0)  # no answer ever goes out: record it before the client can move on
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            raise _Abort()
        elif fault.kind == "status":
            self._drain_body()
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._simple(int(fault.value), f"injected fault {int(fault.value)}", extra)
            return True
        elif fault.kind == "stall" and method in ("HEAD", "PUT"):
            time.sleep(fault.value)
        return False

    # -- PUT --------------------------------------------------------------------------------

    def _put(self, path: str, fault: Fault | None) -> None:
        keep = self.server.keep
        match = _MD5_PATH.match(path)
        if not match:
            self._drain_body()
            return self._simple(400, "PUT needs /<md5>")
        md5 = match.group(1)
        token = self._token()
        if keep.require_signatures and not token:
            self._drain_body()
            return self._simple(401, "no token")
        length_text = self.headers.get("Content-Length")
        length = _decimal(length_text)
        if length is None:
            self.close_connection = True  # the body's extent is unknown
            return self._simple(411, "Content-Length required")
        if length > MAX_BLOCK_SIZE:
            self.close_connection = True
            return self._simple(413, f"block of {length} bytes is over the 64 MiB maximum")
        if match.group(2) is not None and _decimal(match.group(2)) != length:
            self._drain_body(length)
            return self._simple(400, "size in the locator does not match Content-Length")
        found = keep.find(md5, length)
        if found is not None and _intact(found[1], md5):
            return self._put_existing(md5, length, found[0], found[1], token)
        if found is not None:  # damaged on disk: this PUT writes a good copy over it (as keepstore does)
            log.warning("block %s at %s does not match its name; rewriting it from the PUT", md5, found[1])
        if keep.faults.take("PUT", md5, only=("full",)) is not None:  # spent only on a new block
            self._fault = "full"
            self._drain_body(length)
            return self._simple(507, "every volume is full")
        classes = [c.strip() for c in self.headers.get("X-Keep-Storage-Classes", "").split(",") if c.strip()]
        for volume in rank_volumes(md5, keep.volumes, classes or ["default"]):
            try:
                volume.reserve(length)
            except VolumeFull:
                continue
            return self._write(volume, md5, length, token)
        self._drain_body(length)
        return self._simple(507, "every volume is full")

    def _put_existing(self, md5: str, length: int, volume: Volume, path: Path, token: str | None) -> None:
        digest = hashlib.md5()
        for chunk in self._body(length):
            digest.update(chunk)
        if digest.hexdigest() != md5:
            return self._simple(400, "body md5 does not match the block name")
        with contextlib.suppress(OSError):
            os.utime(path)
        self._stored(Locator(md5, length), volume, token)

    def _write(self, volume: Volume, md5: str, length: int, token: str | None) -> None:
        """Write the body to *volume*, which has reserved *length* bytes for it."""
        loc: Locator | None = None
        try:
            loc = self._write_reserved(volume, md5, length)
        finally:
            volume.release(length, stored=loc is not None, md5=md5)
        if loc is not None:
            self._stored(loc, volume, token)

    def _write_reserved(self, volume: Volume, md5: str, length: int) -> Locator | None:
        """The stored block's locator, or None once a refusal has been answered."""
        try:
            mismatch = False
            with volume.store.writer(md5) as writer:
                for chunk in self._body(length):
                    writer.write(chunk)
                try:
                    loc = writer.commit()
                except WriteError:
                    mismatch = True
            if mismatch:  # answered only once the writer has removed its temp file
                self._simple(400, "body md5 does not match the block name")
                return None
        except OSError as exc:
            if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
                raise
            self.close_connection = True
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._simple(507, "volume full")
            else:
                log.error("writing %s to %s: %s", md5, volume.path, exc.strerror or exc)
                self._simple(500, "volume write error")
            return None
        return loc

    def _stored(self, loc: Locator, volume: Volume, token: str | None) -> None:
        body = (str(self.server.keep.sign(loc, token)) + "\n").encode()
        confirmed = ", ".join(f"{c}=1" for c in volume.classes)
        self._respond(200, body, {"X-Keep-Replicas-Stored": "1", "X-Keep-Storage-Classes-Confirmed": confirmed})

    def _body(self, length: int) -> Iterable[bytes]:
        remaining = length
        keep = self.server.keep
        self._reader.deadline = time.monotonic() + keep.idle_timeout + length / MIN_BODY_RATE
        try:
            while remaining:
                chunk = self.rfile.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ConnectionError(f"client sent {length - remaining} of {length} bytes")
                remaining -= len(chunk)
                yield chunk
        finally:
            self._reader.deadline = None
            with contextlib.suppress(OSError):
                self.connection.settimeout(keep.idle_timeout)

    def _drain_body(self, length: int | None = None) -> None:
        if length is None:
            length = _decimal(self.headers.get("Content-Length", "0") if self.headers else "0")
            if length is None or length > MAX_BLOCK_SIZE:
                self.close_connection = True
                return
        for _ in self._body(length):
            pass

    # -- GET / HEAD -------------------------------------------------------------------------

    def _get(self, method: str, path: str, fault: Fault | None) -> None:
        keep = self.server.keep
        text = path[1:]
        bare = _MD5_PATH.match(path)
        if bare and bare.group(2) is None:  # /<md5> without a size
            if bare.group(1) == _EMPTY_MD5:
                return self._respond(200, b"")
            if method == "GET":
                return self._simple(405, "GET needs the block size in the locator")
            if keep.require_signatures:  # a bare md5 carries no signature: enforcement applies
                return self._simple(*(keep.check_signature(Locator(bare.group(1), 0), self._token())
                                      or (400, "unsigned locator")))
            loc = None
            md5, size = bare.group(1), None
        else:
            try:
                loc = Locator.parse(text)
            except LocatorError:
                return self._simple(400, "bad locator")
            md5, size = loc.md5, loc.size
            if str(loc.bare()) == EMPTY_BLOCK:
                return self._respond(200, b"")
            problem = keep.check_signature(loc, self._token())
            if problem is not None:
                return self._simple(*problem)
        found = keep.find(md5, size)
        if found is None:
            return self._simple(404, "not found")
        _, file_path, actual = found
        if method == "HEAD":
            headers = {"Content-Length": str(actual)}
            if loc is not None and _wants_local_signature(self.headers.get("X-Keep-Signature")):
                headers["X-Keep-Locator"] = str(keep.sign(Locator(md5, actual), self._token()))
            return self._head_only(200, headers)
        return self._send_block(md5, file_path, actual, fault)

    def _send_block(self, md5: str, path: Path, size: int, fault: Fault | None) -> None:
        """Stream the file while hashing it; the last chunk is held back until the hash checks,
        so a damaged copy reaches the client as a truncated body (as keepstore 3.x does)."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return self._simple(404, "not found")
        with f:
            self._head_only(200, {"Content-Length": str(size), "Content-Type": "application/octet-stream"})
            kind = fault.kind if fault is not None else None
            if kind == "stall":
                assert fault is not None
                time.sleep(fault.value)
            limit = size // 2 if kind == "truncate" else size
            digest = hashlib.md5()
            held: bytes | None = None
            offset = sent = 0
            while True:
                chunk = f.read(_SEND_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                if kind == "corrupt" and offset <= size // 2 < offset + len(chunk):
                    i = size // 2 - offset
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                offset += len(chunk)
                if held is not None:
                    sent += self._write_body(held, limit - sent, fault)
                    if sent >= limit:
                        break
                held = chunk
            if held is not None and sent < limit:
                if offset != size or digest.hexdigest() != md5:
                    log.error("block %s at %s does not match its locator; truncating the response", md5, path)
                    raise _Abort()
                sent += self._write_body(held, limit - sent, fault)
            if sent < size:
                raise _Abort()
        return None

    def _write_body(self, data: bytes, room: int, fault: Fault | None) -> int:
        data = data[:max(room, 0)]
        if fault is not None and fault.kind == "throttle":
            step = max(1, int(fault.value / 20))
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                time.sleep(len(data[i:i + step]) / fault.value)
        else:
            self._send(data)
        self._bytes_out += len(data)
        return len(data)

    def _send(self, data: bytes) -> None:
        """Write in pieces: the socket timeout (idle_timeout) bounds each send call, so a reader
        at a steady 32 KiB/s must never be asked to take megabytes within one timeout."""
        with memoryview(data) as view:
            for start in range(0, len(view), _SOCKET_PIECE):
                self.wfile.write(view[start:start + _SOCKET_PIECE])

    # -- index ------------------------------------------------------------------------------

    def _index(self, prefix: str) -> None:
        keep = self.server.keep
        problem = keep.check_system_token(self._token())
        if problem is not None:
            return self._simple(*problem)
        seen: set[str] = set()
        lines = []
        for volume in keep.volumes:
            for md5, size, mtime_ns in volume.store.index(prefix):
                if md5 not in seen:
                    seen.add(md5)
                    lines.append(f"{md5}+{size} {mtime_ns}\n")
        lines.append("\n")
        self._respond(200, "".join(lines).encode(), {"Content-Type": "text/plain; charset=utf-8"})
        return None

    # -- responses --------------------------------------------------------------------------

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        for scheme in ("Bearer ", "OAuth2 "):
            if auth.startswith(scheme):
                return auth[len(scheme):].strip() or None
        return None

    def _head_only(self, status: int, headers: dict[str, str]) -> None:
        self._status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._remember(status)
        self.end_headers()
        self._headers_sent = True

    def _respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Content-Length": str(len(body)), "Content-Type": "text/plain; charset=utf-8"}
        all_headers.update(headers or {})
        self._head_only(status, all_headers)
        if self.command != "HEAD" and body:
            self._send(body)
            self._bytes_out = len(body)

    def _simple(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        self._respond(status, f"{status} {reason}\n".encode(), headers)


def _intact(path: Path, md5: str) -> bool:
    """Whether the file at *path* hashes to *md5* (read in pieces; False if it cannot be read)."""
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_SEND_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == md5


def _wants_local_signature(value: str | None) -> bool:
    """``X-Keep-Signature: local, <UTC time>``: the client asks for a locally signed locator."""
    return value is not None and value.split(",", 1)[0].strip() == "local"


def _decimal(text: str | None) -> int | None:
    """A Content-Length or locator size: ASCII digits, any length (huge means too large), else None."""
    if text is None or not _DIGITS.match(text):
        return None
    digits = text.lstrip("0") or "0"
    # int() refuses over 4300 digits with a ValueError; anything past 20 is too large anyway.
    return int(digits) if len(digits) <= 20 else MAX_BLOCK_SIZE + 1


def _public(path: str) -> str:
    """A path fit for logs: signatures replaced."""
    return _REMOTE_SIGNATURE.sub(r"+R\1-...", _SIGNATURE.sub("+A...", path))
