"""Exchange: one request's state in `keep serve`, and the refusal rules, each written once."""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import functools
import re
from email.message import Message
from urllib.parse import urlsplit

from ..errors import LocatorError
from ..locator import EMPTY_BLOCK, MAX_BLOCK_SIZE, Locator
from .faults import FaultKind
from .wire import Headers

__all__ = ["BUSY", "BodyAction", "Exchange", "Refusal", "RequestRecord", "block_target", "decimal",
           "framing_refusal", "public_path", "put_refusal", "read_target", "request_id_of", "token_of",
           "unmodified_since", "wants_local_signature"]

MD5_PATH = re.compile(r"/([0-9a-f]{32})(?:\+([0-9]+))?\Z")
_BLOCK_OF_PATH = re.compile(r"/([0-9a-f]{32})(?:\+|\Z)")
_SIGNATURE = re.compile(r"\+A[0-9a-f]{40}@[0-9a-f]{8}")
_REMOTE_SIGNATURE = re.compile(r"\+R([a-z0-9]{5})-[0-9a-f]{40}@[0-9a-f]{8}")
_TARGET = re.compile(r"/([0-9a-f]{32})(?:\+([0-9]+))?((?:\+[A-Z][A-Za-z0-9@_-]*)*)\Z")
_DIGITS = re.compile(r"[0-9]+\Z")  # ASCII only: str.isdigit() also takes "²", which int() refuses
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_SIZELESS = re.compile(r"/([0-9a-f]{32})((?:\+[A-Z][A-Za-z0-9@_-]*)*)\Z")
_EMPTY_MD5 = EMPTY_BLOCK.split("+")[0]


@dataclasses.dataclass
class RequestRecord:
    """One request as the server saw it (for tests: count requests, check headers' effects).

    A record is added to `KeepServer.requests` just before the response's headers are sent
    (or when the request ends without a response), so a client that has its answer can count
    on finding the record; ``bytes_out`` and ``seconds`` are final once the request ends.

    Args:
        method: The request method.
        path: The path, without signatures or query.
        status: The status answered.
        bytes_out: Response body bytes sent.
        seconds: How long the request took.
        request_id: The ``X-Request-Id`` sent or made.
        fault: The fault applied, if any.
    """

    method: str
    path: str  # without signatures or query
    status: int
    bytes_out: int
    seconds: float
    request_id: str
    fault: str | None = None


class BodyAction(enum.Enum):
    """What becomes of a request body that a refusal leaves unread."""

    DRAIN = "drain"  # read and discard it (its length is known and allowed): keep-alive survives
    CLOSE = "close"  # close the connection after the answer (length unknown, too big, or not sent)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """An answer given instead of handling the request.

    Args:
        status: The status code.
        reason: The reason text, sent as the body.
        body: What to do with the request's body (drain it or close the connection).
        headers: Extra response headers.
    """

    status: int
    reason: str
    body: BodyAction = BodyAction.DRAIN
    headers: tuple[tuple[str, str], ...] = ()


BUSY = Refusal(503, "too many requests in flight", BodyAction.DRAIN, (("Retry-After", "1"),))


@dataclasses.dataclass
class Exchange:
    """What one request asked and what has been done about it so far.

    Args:
        method: The request method.
        target: The request target as sent (path and query).
        headers: The request headers.
        start: When the request arrived (monotonic seconds).
        status: The status answered so far (0: none yet).
        bytes_out: Response body bytes sent.
        fault: The fault applied to the request, if any.
        headers_sent: True once the response headers are out.
        record: The request's `RequestRecord`, once made.
        admitted: Holds an admission slot, released when the request ends.
        send_size: The response body's length.
        send_deadline: When the response body must be out (set by its first write).
    """

    method: str
    target: str  # the request target as sent (path and query)
    headers: Message | Headers  # the standard library's parse, or the lean reader's (keepstore.server.wire)
    start: float
    status: int = 0
    bytes_out: int = 0
    fault: FaultKind | None = None
    headers_sent: bool = False
    record: RequestRecord | None = None
    admitted: bool = False  # holds an admission slot, to be released when the request ends
    send_size: int = 0  # the response body's length
    send_deadline: float | None = None  # when the response body must be out (set by its first write)

    @functools.cached_property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def public_path(self) -> str:
        return public_path(self.path)

    @functools.cached_property
    def md5(self) -> str | None:
        """The block the path names, in any locator form (for fault matching)."""
        match = _BLOCK_OF_PATH.match(self.path)
        return match.group(1) if match else None

    @property
    def token(self) -> str | None:
        return token_of(self.headers)

    @functools.cached_property
    def length(self) -> int | None:
        """The Content-Length (None when absent or not a decimal number)."""
        return decimal(self.headers.get("Content-Length"))

    @property
    def has_body(self) -> bool:
        return (self.length or 0) > 0 or "Transfer-Encoding" in self.headers

    @property
    def request_id(self) -> str:
        return request_id_of(self.headers)

    @property
    def storage_classes(self) -> list[str]:
        return [c.strip() for c in self.headers.get("X-Keep-Storage-Classes", "").split(",") if c.strip()]


def token_of(headers: Message | Headers) -> str | None:
    """The token an ``Authorization: Bearer`` (or ``OAuth2``) header carries, or None."""
    auth = headers.get("Authorization", "")
    for scheme in ("Bearer ", "OAuth2 "):
        if auth.startswith(scheme):
            return auth[len(scheme):].strip() or None
    return None


def request_id_of(headers: Message | Headers) -> str:
    """The ``X-Request-Id`` sent, when it is one we repeat in logs (short, plain), else ""."""
    rid = headers.get("X-Request-Id", "")
    return rid if _REQUEST_ID.match(rid) else ""


def framing_refusal(version: str, headers: Message | Headers) -> Refusal | None:
    """How a strict HTTP/1.1 server refuses an ambiguous request frame (RFC 9112), or None."""
    lengths = {v.strip() for v in headers.get_all("Content-Length") or ()}
    if len(lengths) > 1:
        return Refusal(400, "conflicting Content-Length headers", BodyAction.CLOSE)
    if lengths and "Transfer-Encoding" in headers:
        return Refusal(400, "Content-Length with Transfer-Encoding", BodyAction.CLOSE)
    if version == "HTTP/1.1" and "Host" not in headers:
        return Refusal(400, "HTTP/1.1 request without Host", BodyAction.CLOSE)
    return None


def put_refusal(ex: Exchange, require_signatures: bool) -> Refusal | None:
    """The answer a PUT gets whatever its body holds, if it gets one: checked before
    "100 Continue" and again (for clients that send no Expect) before the body is read."""
    match = MD5_PATH.match(ex.path)
    if not match:
        return Refusal(400, "PUT needs /<md5>")
    if require_signatures and not ex.token:
        return Refusal(401, "no token")
    length = ex.length
    if length is None:
        return Refusal(411, "Content-Length required", BodyAction.CLOSE)  # the body's extent is unknown
    if length > MAX_BLOCK_SIZE:
        return Refusal(413, f"block of {length} bytes is over the 64 MiB maximum", BodyAction.CLOSE)
    if match.group(2) is not None and decimal(match.group(2)) != length:
        return Refusal(400, "size in the locator does not match Content-Length")
    return None


def decimal(text: str | None) -> int | None:
    """A Content-Length or locator size: ASCII digits, any length (huge means too large), else None."""
    if text is None or not _DIGITS.match(text):
        return None
    digits = text.lstrip("0") or "0"
    # int() refuses over 4300 digits with a ValueError; anything past 20 is too large anyway.
    return int(digits) if len(digits) <= 20 else MAX_BLOCK_SIZE + 1


def block_target(path: str) -> tuple[str, int | None] | None:
    """``/<md5>[+size][+hints]`` -> (md5, size or None); None when the path names no block."""
    match = _TARGET.match(path)
    if match is None:
        return None
    size = decimal(match.group(2)) if match.group(2) is not None else None
    return match.group(1), size


def unmodified_since(value: str | None) -> int | None:
    """An ``If-Unmodified-Since`` HTTP date as unix seconds; None when absent or not a date
    (RFC 9110: an invalid date is ignored)."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):  # not an HTTP date
        return None
    return int(when.timestamp()) if when.tzinfo is not None else None


def public_path(path: str) -> str:
    """A path fit for logs: signatures replaced."""
    if "+A" not in path and "+R" not in path:  # nothing to replace (most requests): skip the patterns
        return path
    return _REMOTE_SIGNATURE.sub(r"+R\1-...", _SIGNATURE.sub("+A...", path))


def read_target(path: str, method: str) -> tuple[Locator, str, int | None] | Refusal | None:
    """What a GET or HEAD of *path* names: ``(locator, md5, size or None)``, the refusal (a bad
    locator, a GET without a size), or None for the empty block (always served). A signed
    HEAD may leave out the size (``/<md5>+A<sig>@<exp>``, as Go clients send)."""
    sizeless = _SIZELESS.match(path)
    if sizeless:
        md5 = sizeless.group(1)
        if md5 == _EMPTY_MD5:
            return None
        if method == "GET":
            return Refusal(405, "GET needs the block size in the locator")
        hints = sizeless.group(2)[1:].split("+") if sizeless.group(2) else []
        try:  # the size is not part of a signature: check the hints against a stand-in
            return Locator(md5, 0, tuple(hints)), md5, None
        except LocatorError:
            return Refusal(400, "bad locator")
    try:
        loc = Locator.parse(path[1:])
    except LocatorError:
        return Refusal(400, "bad locator")
    if loc.md5 == _EMPTY_MD5 and loc.size == 0:
        return None
    return loc, loc.md5, loc.size


def wants_local_signature(value: str | None) -> bool:
    """``X-Keep-Signature: local, <UTC time>``: the client asks for a locally signed locator."""
    return value is not None and value.split(",", 1)[0].strip() == "local"
