"""Wire: a lean reader of plain HTTP/1.1 request heads, and response heads assembled in one piece."""

from __future__ import annotations

import dataclasses
import email.utils
import re
import time
from http import HTTPStatus
from typing import Any

__all__ = ["MAX_HEAD", "SMALL_BODY", "Headers", "LeanRequest", "http_date", "read_head", "response_head"]

SMALL_BODY = 64 << 10  # an answer body up to this size goes out with its head in one write
MAX_HEAD = 64 * 1024  # a head bigger than this goes to the standard library's parser (and its limits)
_MAX_HEADERS = 100  # the standard library's limit: more is its 431, so more goes to it
# The request lines this reader takes: the methods keep serve answers, an origin-form target
# of visible ASCII, HTTP/1.1. Anything else (HTTP/1.0, absolute targets, "//" paths, odd
# spacing) is left to the standard library, which then answers it as it always has.
_REQUEST_LINE = re.compile(r"(GET|HEAD|PUT|DELETE|POST) (/(?!/)[!-~]*) HTTP/1\.1")
# A field line of RFC 9110 tokens and visible ASCII (with spaces and tabs) only: no obs-fold,
# no bare CR or LF, no NUL, no field name with a space before its colon. The head is checked
# whole by one match and its fields taken by one findall: two calls, however many fields. A
# value starts with a visible character, so the spaces before it can be split only one way:
# with ``[ \t]*([\t -~]*)`` a line of 60,000 spaces and a NUL took the matcher seconds.
_FIELD = r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[!-~][\t -~]*)?)\r\n"
_FIELDS = re.compile(f"(?:{_FIELD})*")
_FIELD_PARTS = re.compile(_FIELD)
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Headers:
    """Request header fields: case-insensitive names, the first value by `get`, all by
    `get_all` (as `email.message.Message`, which the standard library's parser makes)."""

    __slots__ = ("_all", "_names")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._names = [k for k, _ in fields]
        self._all: dict[str, list[str]] = {}
        for key, value in fields:
            self._all.setdefault(key.lower(), []).append(value)

    def get(self, name: str, default: Any = None) -> Any:  # Any, as Message.get: the default's type
        values = self._all.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, failobj: Any = None) -> Any:
        return list(self._all.get(name.lower(), ())) or failobj

    def bodiless(self) -> bool:
        """A Host, and no Content-Length, Transfer-Encoding or Expect: a request with no body
        and nothing in its framing for `framing_refusal` to refuse."""
        fields = self._all
        return ("host" in fields and "content-length" not in fields and "transfer-encoding" not in fields
                and "expect" not in fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._all

    def __repr__(self) -> str:  # names only: a value may be a token
        return f"Headers({self._names})"


@dataclasses.dataclass(frozen=True)
class LeanRequest:
    """A request head read from the connection's buffer.

    Args:
        command: The method.
        path: The request target.
        headers: The header fields.
        length: How many bytes of the buffer the head took (request line to the empty line).
    """

    command: str
    path: str
    headers: Headers
    length: int


def read_head(buffer: bytes) -> LeanRequest | None:
    """The request head at the start of *buffer*, when it is whole there and plain (see the
    patterns above); None otherwise, and the standard library's parser reads it instead.

    Every request this accepts, the standard library parses to the same method, target and
    fields: it is a subset of what that parser takes, chosen to be simple to recognise.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return None
    head = buffer[:end + 2].decode("latin-1")  # the request line and each field, ending in CRLF
    first = head.index("\r\n")
    line = _REQUEST_LINE.fullmatch(head, 0, first)
    if line is None or _FIELDS.fullmatch(head, first + 2) is None:
        return None
    fields = _FIELD_PARTS.findall(head, first + 2)
    if len(fields) > _MAX_HEADERS:
        return None
    return LeanRequest(line.group(1), line.group(2), Headers(fields), end + 4)


class _Clock:
    """The HTTP ``Date`` of the current second, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.text = email.utils.formatdate(second, usegmt=True)
            self.second = second
        return self.text


_clock = _Clock()


def http_date() -> str:
    """Now as an HTTP date (``Wed, 02 Dec 2026 03:04:05 GMT``)."""
    return _clock.now()


def response_head(status: int, headers: dict[str, str], server: str, *, close: bool) -> bytes:
    """The status line and header fields of an answer, ending in the empty line: what the
    standard library's ``send_response``, ``send_header`` and ``end_headers`` send."""
    parts = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nServer: {server}\r\nDate: {http_date()}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if close:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")
