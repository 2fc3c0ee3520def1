"""The transport interface: `Request`, `Response`, `Headers`, `TransportError` and `Transport`."""

from __future__ import annotations

import abc
import dataclasses
import datetime
import email.utils
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TypeVar

from ..config import Timeout
from ..errors import KeepError

__all__ = ["Headers", "Request", "Response", "Transport", "TransportError"]

_T = TypeVar("_T", bound="Transport")
_SECRET_HEADERS = frozenset({"authorization"})


class Headers(Mapping[str, str]):
    """An immutable, case-insensitive mapping of HTTP header names to values."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {
            name.lower(): (name, str(value)) for name, value in (items or {}).items()
        }

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return {k: v for k, (_, v) in self._items.items()} == {str(k).lower(): str(v) for k, v in other.items()}

    def __hash__(self) -> int:
        return hash(frozenset((k, v) for k, (_, v) in self._items.items()))

    def __repr__(self) -> str:
        shown = {orig: ("***" if key in _SECRET_HEADERS else v) for key, (orig, v) in self._items.items()}
        return f"Headers({shown!r})"


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request to a Keep service.

    ``expected_size`` (GET only) lets a transport preallocate the body and reject a longer
    one early. ``repr()`` never shows the Authorization header.
    """

    method: str
    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=Headers)  # stored as Headers
    body: memoryview | None = dataclasses.field(default=None, repr=False)
    expected_size: int | None = None
    timeout: Timeout = dataclasses.field(default_factory=Timeout)

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))
        if self.body is not None and not isinstance(self.body, memoryview):
            object.__setattr__(self, "body", memoryview(self.body).cast("B"))


@dataclasses.dataclass(frozen=True)
class Response:
    """A service's answer. ``body_md5`` is the hex md5 of ``body`` when the transport hashed it
    while receiving (so callers need not hash again), else None."""

    status: int
    headers: Mapping[str, str] = dataclasses.field(default_factory=Headers)  # stored as Headers
    body: bytes = dataclasses.field(default=b"", repr=False)
    body_md5: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))

    def retry_after(self, now: float | None = None) -> float | None:
        """The ``Retry-After`` delay in seconds, or None when absent or unreadable.

        Both forms of RFC 9110: delay seconds, or an HTTP date (measured from *now*, Unix
        seconds, default the current time; a date in the past means no wait).
        """
        value = self.headers.get("Retry-After", "").strip()
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None  # junk: fall back to our own backoff
            if when.tzinfo is None:  # "-0000": the RFC's "UTC, zone unknown"
                when = when.replace(tzinfo=datetime.timezone.utc)
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
        return seconds if seconds >= 0 else None  # also refuses NaN


class TransportError(KeepError):
    """A request got no usable HTTP answer: connect failure, timeout, TLS, reset, bad length.

    ``reason`` is short and never holds a token; ``connect`` is True when no connection was
    made (so the service list may be stale); ``timeout`` when a time limit expired.
    """

    def __init__(self, reason: str, *, url: str = "", connect: bool = False, timeout: bool = False,
                 code: int | None = None) -> None:
        super().__init__(f"{reason} ({url})" if url else reason)
        self.reason = reason
        self.url = url
        self.connect = connect
        self.timeout = timeout
        self.code = code


class Transport(abc.ABC):
    """Sends a `Request`, returns a `Response` for any HTTP status, raises `TransportError`
    when there is no HTTP answer. Implementations must be safe to call from many threads."""

    @abc.abstractmethod
    def request(self, request: Request) -> Response:
        """Perform *request*."""

    def close(self) -> None:  # noqa: B027  (optional: stateless transports need nothing)
        """Release pooled connections."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
