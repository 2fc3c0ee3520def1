"""The receiving side of one curl request (status, headers, a bounded hashed body) and a PUT body's feeder."""

from __future__ import annotations

import hashlib
import io
import os

import pycurl

from .base import Headers, Request, Response
from .overlap import OVERLAP_MIN, HashedBody, OverlapCounts, overlap_supported

__all__ = ["HEADER_LIMIT", "BodyReader", "Exchange"]

HEADER_LIMIT = 256 << 10  # all header lines of one exchange (1xx answers included)


class Exchange:
    """The receiving side of one request: status, headers and a bounded, hashed body.

    A block GET's 2xx body must be exactly ``expected_size`` bytes; any other body is kept up
    to the request's limit, and reading stops there (``truncated``): a hostile or broken
    server cannot grow our memory or hold us with an endless answer. A block body of at least
    `OVERLAP_MIN` bytes is received into a `HashedBody` (hashed on a second thread as it
    arrives; counted in *overlap*); `close` ends that thread when the body is not taken.
    """

    def __init__(self, request: Request, overlap: OverlapCounts | None = None) -> None:
        self.request = request
        self.status = 0
        self.headers: dict[str, str] = {}
        self.expected_size = request.expected_size if request.method.upper() == "GET" else None
        self.body = io.BytesIO()
        self.received = 0
        self.header_bytes = 0
        self.md5 = hashlib.md5(usedforsecurity=False) if self.expected_size is not None else None
        self.too_long = False
        self.truncated = False
        self.headers_too_long = False
        self.cancelled = False
        self.answered = False  # the final status line and headers are in (the first-byte signal)
        self.overlap = overlap
        self.large: HashedBody | None = None
        self._whole: bytes | None = None  # a block body that came in one piece
        self._limit: int | None = 0
        self._last_header: str | None = None
        # libcurl calls on_progress about ten times in a 4 KiB GET: ask the event directly.
        self._cancel_set = request.cancel.is_set if request.cancel is not None else None

    def on_progress(self, *_counts: int) -> int:
        """libcurl's progress callback (and a race's own check, each step): non-zero (abort)
        once the request is cancelled."""
        cancel_set = self._cancel_set
        if cancel_set is not None and cancel_set():
            self.cancelled = True
            return 1
        return 0

    def on_header(self, raw: bytes) -> int | None:
        self.header_bytes += len(raw)
        if self.header_bytes > HEADER_LIMIT:
            self.headers_too_long = True
            return 0  # makes libcurl abort the transfer
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if not line:
            if self.status >= 200 and not self.answered:  # the end of a final answer's headers (not a 100's)
                self.answered = True
                if self.request.on_first_byte is not None:
                    self.request.on_first_byte(self.status)
        elif line.startswith("HTTP/"):
            # a new response (after 100 Continue or a redirect): start over
            parts = line.split(None, 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = {}
            self._last_header = None
            self._limit = self.request.limit_for(self.status)
            self.close()  # a body begun before this status line (none comes before a 100's)
            if (self._limit is None and self.expected_size and self.expected_size >= OVERLAP_MIN
                    and self.request.sink is None and overlap_supported()):
                self.large = HashedBody(self.expected_size, self.overlap)
        elif line[:1] in (" ", "\t") and self._last_header:
            self.headers[self._last_header] += " " + line.strip()
        elif ":" in line:
            name, value = line.split(":", 1)
            self._last_header = name.strip()
            self.headers[self._last_header] = value.strip()
        return None

    def on_body(self, chunk: bytes) -> int | None:
        large = self.large
        if large is not None:  # first: 4,096 calls per 64 MiB block
            if large.write(chunk):
                self.received += len(chunk)
                return None
            self.too_long = True
            return 0  # makes libcurl abort with E_WRITE_ERROR, long before the body ends
        size = len(chunk)
        if self._limit is not None:
            room = self._limit - self.received
            if size > room:
                self.body.write(chunk[:room])
                self.received += room
                self.truncated = True
                return 0  # stop reading: libcurl aborts with E_WRITE_ERROR, and we answer what we have
            self.body.write(chunk)
            self.received += size
            return None
        assert self.expected_size is not None
        if self.received + size > self.expected_size:
            self.too_long = True
            return 0  # makes libcurl abort with E_WRITE_ERROR, long before the body ends
        assert self.md5 is not None
        self.md5.update(chunk)
        if self.request.sink is not None:  # the caller writes the pieces where they belong
            self.received += size
            return self.request.sink(self.received - size, chunk)
        if self.received == 0:
            if size == self.expected_size:  # a block in one piece (any more is too long, above): kept uncopied
                self._whole = chunk
                self.received = size
                return None
            # Preallocate once; BytesIO.getvalue() then hands the buffer over without a copy.
            self.body.seek(self.expected_size - 1)
            self.body.write(b"\0")
            self.body.seek(0)
        self.body.write(chunk)
        self.received += size
        return None

    def response(self) -> Response:
        if self.large is not None:
            large, self.large = self.large, None
            return Response(self.status, Headers(self.headers), *large.result())
        if self._limit is None and self.expected_size is not None:
            value = self._whole if self._whole is not None else self.body.getvalue()
            body = value if self.received == len(value) else value[: self.received]
            md5 = self.md5.hexdigest() if self.md5 is not None else None
            size = self.received if self.request.sink is not None else None
            return Response(self.status, Headers(self.headers), body, md5, body_size=size)
        return Response(self.status, Headers(self.headers), self.body.getvalue(), truncated=self.truncated)

    def close(self) -> None:
        """End a large body's hashing thread and drop its buffer, unless `response` took it
        (a failed or abandoned transfer); idempotent, and cheap for every other exchange."""
        if self.large is not None:
            self.large.close()
            self.large = None


class BodyReader:
    """Feeds a PUT body to libcurl from a memoryview, one bounded slice at a time."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def read(self, size: int) -> bytes:
        chunk = self.view[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk.tobytes()

    def seek(self, offset: int, origin: int) -> int:
        """Rewind for libcurl, which resends a request whose kept-alive connection turned out
        to be closed (without this it fails the PUT with "send failed since rewinding")."""
        if origin != os.SEEK_SET or not 0 <= offset <= self.view.nbytes:
            return pycurl.SEEKFUNC_CANTSEEK
        self.pos = offset
        return pycurl.SEEKFUNC_OK
