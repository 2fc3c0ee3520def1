"""HTTP transports for KeepClient: the `Transport` interface, `CurlTransport`, `MockTransport`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import FanOut, Finished, Headers, Pump, Race, Request, Response, Transport, TransportError
from .mock import MockTransport

if TYPE_CHECKING:  # pragma: no cover
    from .curl import CurlTransport

__all__ = ["CurlTransport", "FanOut", "Finished", "Headers", "MockTransport", "Pump", "Race", "Request", "Response",
           "Transport", "TransportError"]


def __getattr__(name: str) -> object:
    # pycurl loads only when the real transport is wanted, so MockTransport users need no libcurl.
    if name == "CurlTransport":
        from .curl import CurlTransport

        return CurlTransport
    raise AttributeError(f"module 'keepstore.transport' has no attribute {name!r}")
