"""The transport interface: `Request`, `Response`, `Headers`, `TransportError` and `Transport`."""

from __future__ import annotations

import abc
import dataclasses
import datetime
import email.utils
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple, Protocol, TypeVar

from ..config import Timeout
from ..errors import KeepError

__all__ = ["DEFAULT_BODY_LIMIT", "ERROR_BODY_LIMIT", "FanOut", "Finished", "Headers", "Pump", "Race", "Request",
           "Response", "Transport", "TransportError"]

_T = TypeVar("_T", bound="Transport")
_SECRET_HEADERS = frozenset({"authorization"})

#: Bytes of a non-block answer body kept by default (a PUT answers a locator of < 200 bytes).
DEFAULT_BODY_LIMIT = 64 << 10
#: Bytes of an error body kept (only its start is ever shown, in a message).
ERROR_BODY_LIMIT = 4096


class Headers(Mapping[str, str]):
    """An immutable, case-insensitive mapping of HTTP header names to values.

    Args:
        items: Header names and values (names are matched without regard to case).
    """

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

    def lines(self) -> list[str]:
        """``Name: value`` for each header, as given (what a transport sends)."""
        return [f"{name}: {value}" for name, value in self._items.values()]

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
    one early. Any other answer body (a PUT's locator, an error page, a JSON list) is kept up
    to ``body_limit`` bytes (`DEFAULT_BODY_LIMIT`; an error body at most `ERROR_BODY_LIMIT`):
    past that the transport stops reading and marks the response ``truncated``. Every request
    must also finish within ``timeout.deadline()`` of the bytes it moves. ``repr()`` never
    shows the Authorization header.

    Args:
        method: ``GET``, ``HEAD``, ``PUT`` (or another verb).
        url: The full URL.
        headers: Request headers (kept as an immutable, case-insensitive `Headers`).
        body: The body to send, read in place (never copied whole).
        expected_size: The exact size of a GET's 2xx body (a block's size), or None.
        timeout: The `Timeout` for this request.
        body_limit: Most bytes of a non-block answer body to read (0: `DEFAULT_BODY_LIMIT`).
        cancel: An event that, once set, aborts the request (also while it waits to connect or
            for a stalled server): the transport raises `TransportError` with ``cancelled``.
        on_first_byte: Called with the status once the answer's status line and headers are in,
            before any of its body (the first-byte signal hedged reads time and wait on); it
            runs on the transport's thread and must not raise.
        sink: (with *expected_size*) called as ``sink(offset, piece)`` with each piece of a 2xx
            body as it arrives, instead of keeping it: the answer's body is then empty and its
            ``body_size``/``body_md5`` say what came; a sink returning 0 aborts the transfer.
            A transport that ignores it answers the body as usual.
    """

    method: str
    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=Headers)  # stored as Headers
    body: memoryview | None = dataclasses.field(default=None, repr=False)
    expected_size: int | None = None
    timeout: Timeout = dataclasses.field(default_factory=Timeout)
    body_limit: int = 0  # 0: DEFAULT_BODY_LIMIT
    cancel: threading.Event | None = dataclasses.field(default=None, repr=False, compare=False)
    on_first_byte: Callable[[int], None] | None = dataclasses.field(default=None, repr=False, compare=False)
    sink: Callable[[int, bytes], int | None] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """Whether the request's cancel event is set."""
        return self.cancel is not None and self.cancel.is_set()

    def limit_for(self, status: int) -> int | None:
        """Bytes of an answer body with *status* worth reading (None: exactly ``expected_size``)."""
        if not 200 <= status <= 299:
            return min(ERROR_BODY_LIMIT, self.body_limit or DEFAULT_BODY_LIMIT)
        if self.method.upper() == "GET" and self.expected_size is not None:
            return None
        return self.body_limit or DEFAULT_BODY_LIMIT

    def deadline(self) -> float:
        """Seconds this request may take in all (`Timeout.deadline` of the bytes it moves)."""
        sent = self.body.nbytes if self.body is not None else 0
        return self.timeout.deadline(sent + (self.expected_size or 0))

    def __post_init__(self) -> None:
        if not isinstance(self.headers, Headers):
            object.__setattr__(self, "headers", Headers(self.headers))
        if self.body is not None and not isinstance(self.body, memoryview):
            object.__setattr__(self, "body", memoryview(self.body).cast("B"))


@dataclasses.dataclass(frozen=True)
class Response:
    """A service's answer.

    Args:
        status: The HTTP status.
        headers: Response headers (kept as `Headers`).
        body: The body (for HEAD, empty).
        body_md5: Hex md5 of *body* when the transport hashed it while receiving (so callers
            need not hash again), else None.
        truncated: The body went on past the request's limit; *body* is its start.
        body_size: Bytes of the body received, when a request's ``sink`` took them.
    """

    status: int
    headers: Mapping[str, str] = dataclasses.field(default_factory=Headers)  # stored as Headers
    body: bytes = dataclasses.field(default=b"", repr=False)
    body_md5: str | None = None
    truncated: bool = False
    body_size: int | None = None

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
    made (so the service list may be stale); ``timeout`` when a time limit expired;
    ``cancelled`` when the request's cancel event stopped it.
    """

    def __init__(self, reason: str, *, url: str = "", connect: bool = False, timeout: bool = False,
                 code: int | None = None, cancelled: bool = False) -> None:
        super().__init__(f"{reason} ({url})" if url else reason)
        self.reason = reason
        self.url = url
        self.connect = connect
        self.timeout = timeout
        self.code = code
        self.cancelled = cancelled


class Finished(NamedTuple):
    """One request of a `Transport.race` that ended: its index in the race, and its response
    or the error it failed with (exactly one of the two is set). A named tuple rather than a
    frozen dataclass: one is made per request on the hot path of every hedged GET.

    Args:
        position: The request's index in the sequence handed to `Transport.race`.
        response: The answer (any HTTP status), when there was one.
        error: Why there was none (``cancelled`` also when the race abandoned it).
    """

    position: int
    response: Response | None = None
    error: TransportError | None = None


class Race(Protocol):
    """What `Transport.race` returns: the requests as they end, and `close` to drop the rest."""

    def __iter__(self) -> Iterator[Finished]: ...

    def __next__(self) -> Finished: ...

    def close(self) -> None:
        """Abandon the requests still running (their connections closed, not pooled)."""


class FanOut(Race, Protocol):
    """What `Transport.fan_out` returns: a `Race` whose requests all run at once, and more can join."""

    def add(self, request: Request) -> int:
        """Start *request* too; its index (the next after the last)."""


class Pump(Protocol):
    """What `Transport.pump` returns: requests that one thread drives, step by step, for as long
    as it likes. `add` and `step` are for that thread only; `wake` may be called from any."""

    def add(self, request: Request) -> int:
        """Queue *request* (it starts at the next `step`); its index, unique for the pump's life."""

    def step(self, wait: float | None) -> list[Finished]:
        """Start what was added, move the transfers on, and give those that ended; when none did,
        first wait up to *wait* seconds (None: until something happens) for activity or a `wake`."""

    def wake(self) -> None:
        """End the wait of a `step` now or the next one (safe from any thread)."""

    @property
    def running(self) -> int:
        """Requests added and not yet given back by `step`."""

    def close(self) -> None:
        """Abandon what still runs (connections closed) and release the pump's handles."""


class Transport(abc.ABC):
    """Sends a `Request`, returns a `Response` for any HTTP status, raises `TransportError`
    when there is no HTTP answer. Implementations must be safe to call from many threads."""

    @abc.abstractmethod
    def request(self, request: Request) -> Response:
        """Perform *request*."""

    def race(self, requests: Sequence[Request], hedge_after: float,
             on_start: Callable[[int], None] | None = None) -> Race:
        """Perform *requests* (the same thing asked of different services, best first), giving
        each as it ends, until the caller has what it wants and closes the race.

        A transport that can overlap requests starts the next one when the one running has
        failed, or when it has had no first byte (status and headers) within *hedge_after*
        seconds; never more than two are in flight, and one whose answer has started streaming
        is never doubled. Closing the race abandons the requests still running (their
        connections are closed, not pooled). *on_start* is called with each request's index as
        it starts. This default runs them one at a time, in order, on `request`.
        """
        return self._one_at_a_time(requests, on_start)

    def fan_out(self, requests: Sequence[Request], on_start: Callable[[int], None] | None = None) -> FanOut | None:
        """Perform *requests* (to different services) all at once in the caller's thread, giving
        each as it ends; `FanOut.add` starts another; closing abandons those still running.
        None (this default): the transport cannot overlap requests in one thread, and the
        caller runs them its own way (the client: on its replica pool)."""
        return None

    def pump(self, on_start: Callable[[int], None] | None = None) -> Pump | None:
        """A `Pump`: many requests in flight at once, driven by one thread (the client's put
        loop); *on_start* is called with each request's index as it starts. None (this default):
        the transport cannot overlap requests in one thread."""
        return None

    def _one_at_a_time(self, requests: Sequence[Request],
                       on_start: Callable[[int], None] | None) -> Generator[Finished, None, None]:
        for index, request in enumerate(requests):
            if on_start is not None:
                on_start(index)
            try:
                response = self.request(request)
            except TransportError as exc:
                yield Finished(index, error=exc)
            else:
                yield Finished(index, response=response)

    def close(self) -> None:  # noqa: B027  (optional: stateless transports need nothing)
        """Release pooled connections."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
