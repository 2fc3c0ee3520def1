"""MockTransport: a public test double that answers requests with a handler function."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .base import Request, Response, Transport, TransportError

__all__ = ["MockTransport"]


class MockTransport(Transport):
    """Calls ``handler(request) -> Response`` for every request and records the requests.

    The handler may raise `TransportError` to simulate a connection failure. A request whose
    cancel event is set fails with a cancelled `TransportError` before the handler sees it
    (and after, when the handler set it). The request's ``on_first_byte`` is called once the
    handler has answered. Bodies larger
    than a GET's ``expected_size`` are rejected, and other bodies over the request's limit
    truncated, as `CurlTransport` does.

    Args:
        handler: Called with each `Request`; returns the `Response` (or raises `TransportError`).
    """

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"MockTransport({getattr(self.handler, '__name__', self.handler)!r})"

    def request(self, request: Request) -> Response:
        if self.closed:
            raise TransportError("transport is closed", url=request.url)
        if request.cancelled:
            raise TransportError(f"{request.method} cancelled", url=request.url, cancelled=True)
        with self._lock:
            self.requests.append(request)
        response = self.handler(request)
        if request.cancelled:  # cancelled while the handler ran, as a transfer in flight is
            raise TransportError(f"{request.method} cancelled", url=request.url, cancelled=True)
        if not isinstance(response, Response):
            raise TypeError(f"MockTransport handler returned {type(response).__name__}, not Response")
        if request.on_first_byte is not None:
            request.on_first_byte(response.status)
        if (request.method == "GET" and 200 <= response.status <= 299 and request.expected_size is not None
                and len(response.body) > request.expected_size):
            raise TransportError(f"GET body longer than the expected {request.expected_size} bytes",
                                 url=request.url)
        if request.method == "HEAD" and response.body:
            response = Response(response.status, response.headers, b"")
        limit = request.limit_for(response.status)
        if limit is not None and len(response.body) > limit:  # as CurlTransport stops reading there
            response = Response(response.status, response.headers, response.body[:limit], truncated=True)
        return response

    def close(self) -> None:
        self.closed = True
