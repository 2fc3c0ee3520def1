"""One request to one named service: HEAD, verified GET and PUT, without failover or retries."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..config import Timeout
from ..errors import BlockNotFound, LocatorError, NoServicesError, ReadError, WriteError
from ..locator import Locator
from ..services import Service
from ..transport import Headers, Request, TransportError
from .wire import Status, Wire, classify, new_request_id
from .write import PUT_ANSWER_LIMIT

__all__ = ["discovery_fetch", "get_from", "head_on", "put_to"]


def discovery_fetch(wire: Wire, timeout: Timeout, limit: int) -> Callable[[str], tuple[int, bytes]]:
    """What service discovery fetches with: a GET of a URL with the token, as (status, body);
    `NoServicesError` for no answer or one over *limit* bytes."""

    def fetch(url: str) -> tuple[int, bytes]:
        headers = wire.headers(new_request_id())
        headers["Accept"] = "application/json"
        request = Request("GET", url, Headers(headers), timeout=timeout, body_limit=limit)
        try:
            response = wire.transport.request(request)
        except TransportError as exc:
            raise NoServicesError(f"Keep service discovery failed: {exc}") from exc
        if response.truncated:
            raise NoServicesError(f"Keep service discovery failed: an answer over {limit} bytes")
        return response.status, response.body

    return fetch


def head_on(wire: Wire, service: Service, loc: Locator, timeout: Timeout, request_id: str) -> bool:
    """True when *service* answers HEAD with 2xx, False for 403/404/410; `ReadError` otherwise."""
    headers = wire.headers(request_id)
    response = wire.send(service, Request("HEAD", service.root + str(loc), Headers(headers), timeout=timeout))
    kind = classify(response.status)
    if kind is Status.OK:
        return True
    if kind is Status.NOT_FOUND:
        return False
    raise ReadError(f"[{request_id}] HEAD {loc.bare()} on {service.root}: status {wire.describe(response)}",
                    locator=str(loc.bare()), request_id=request_id)


def get_from(wire: Wire, service: Service, loc: Locator, timeout: Timeout, request_id: str) -> bytes:
    """The block from *service*, checked against the locator's size and md5.

    `BlockNotFound` for 403/404/410; `ReadError` for any other status, a short body or a
    checksum mismatch (the bytes are never returned then).
    """
    headers = wire.headers(request_id)
    headers["Accept"] = "application/octet-stream"
    request = Request("GET", service.root + str(loc), Headers(headers), expected_size=loc.size, timeout=timeout)
    response = wire.send(service, request)
    bare = str(loc.bare())
    kind = classify(response.status)
    if kind is Status.NOT_FOUND:
        raise BlockNotFound(f"[{request_id}] {bare} not found on {service.root}", locator=bare,
                            request_id=request_id)
    if kind is not Status.OK:
        raise ReadError(f"[{request_id}] GET {bare} on {service.root}: status {wire.describe(response)}",
                        locator=bare, request_id=request_id)
    body = response.body
    if response.truncated or len(body) != loc.size:
        raise ReadError(f"[{request_id}] GET {bare} on {service.root}: {len(body)} of {loc.size} bytes",
                        locator=bare, request_id=request_id)
    if (response.body_md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()) != loc.md5:
        raise ReadError(f"[{request_id}] GET {bare} on {service.root}: checksum mismatch", locator=bare,
                        request_id=request_id)
    return bytes(body)


def put_to(wire: Wire, service: Service, data: bytes, timeout: Timeout, request_id: str) -> Locator:
    """PUT *data* (one replica) to *service*; the locator it answers, checked to name *data*.

    `WriteError` for a non-2xx status, a transport failure or an answer naming another block.
    """
    loc = Locator.for_data(data)
    headers = wire.headers(request_id)
    headers["X-Keep-Desired-Replicas"] = "1"
    request = Request("PUT", service.root + loc.md5, Headers(headers), memoryview(data), timeout=timeout,
                      body_limit=PUT_ANSWER_LIMIT)
    response = wire.send(service, request)
    where = f"[{request_id}] PUT {loc} to {service.root}"
    if classify(response.status) is not Status.OK:
        raise WriteError(f"{where}: status {wire.describe(response)}", wanted=1, done=0, locator=str(loc),
                         request_id=request_id)
    try:
        answered = Locator.parse(response.body.decode("ascii", "replace").strip())
    except LocatorError:
        raise WriteError(f"{where}: the answer is not a locator", wanted=1, done=0, locator=str(loc),
                         request_id=request_id) from None
    if answered.md5 != loc.md5 or answered.size != loc.size:
        raise WriteError(f"{where}: the answer names another block ({answered.bare()})", wanted=1, done=0,
                         locator=str(loc), request_id=request_id)
    return answered
