"""How reads and writes reach services: request ids, headers with the token, counted sends, statuses."""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import re
import string
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..config import Timeout
from ..errors import ConfigError, redact, scrub
from ..services import Service, ServiceDirectory
from ..transport import FanOut, Pump, Race, Request, Response, Transport, TransportError
from .health import HedgePolicy, ServiceHealth
from .rounds import RoundPolicy
from .stats import Counters

__all__ = ["NOT_FOUND_STATUSES", "REASON_LIMIT", "TRANSIENT_STATUSES", "Link", "Status", "Wire", "classify",
           "clean_token", "new_request_id", "reason_text"]

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 409, 423, 429, 500, 502, 503, 504})
NOT_FOUND_STATUSES = frozenset({403, 404, 410})
FULL = 507

_ID_ALPHABET = string.digits + string.ascii_lowercase
_ID_DIGITS = bytes(ord(_ID_ALPHABET[i % 36]) for i in range(256))  # byte -> its digit (mod 36)
_ID_DROP = bytes(range(252, 256))  # the bytes past the last whole run of 36

#: Characters of a server's reason text (its answer's first line) kept in a message.
REASON_LIMIT = 100
_TITLE = re.compile(rb"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class Status(enum.Enum):
    """What an HTTP status means to a Keep client."""

    OK = "ok"  # any 2xx (its body is judged separately)
    NOT_FOUND = "not found"  # 403, 404, 410: this service does not have the block for us
    FULL = "full"  # 507: a PUT elsewhere may succeed
    TRANSIENT = "transient"  # worth another round
    PERMANENT = "permanent"  # this service will answer the same again


def classify(status: int) -> Status:
    """The meaning of *status*, as the Arvados SDK's ``check_http_response_success`` has it:
    any 2xx is success; 408, 409, 423, 500, 502, 503, 504 and anything outside 100-599 are
    transient. 429 is transient too (the SDK gives up on it; a busy server asks to be retried)."""
    if 200 <= status <= 299:
        return Status.OK
    if status in NOT_FOUND_STATUSES:
        return Status.NOT_FOUND
    if status == FULL:
        return Status.FULL
    if status in TRANSIENT_STATUSES or not 100 <= status <= 599:
        return Status.TRANSIENT
    return Status.PERMANENT


def clean_token(token: str | None) -> str | None:
    """*token* without surrounding whitespace (a secret file's newline); `ConfigError` when what
    is left could not be sent as one header value. The message never shows the token."""
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        # A line break would end the request's headers early (and could inject new ones).
        raise ConfigError("the Keep token has a space, line break, control or non-ASCII character in it")
    return token


def reason_text(status: int, body: bytes) -> str:
    """What a server said about *status*, for a message: the first line of *body* (an HTML
    page's title), without a leading repeat of the status, printable ASCII only, at most
    `REASON_LIMIT` characters; empty when the body says nothing. Token-shaped text is scrubbed
    here; the client's own token is masked by `Wire.describe`."""
    head = body[:2048]
    title = _TITLE.search(head) if head.lstrip()[:1] == b"<" else None
    text = (title.group(1) if title else head).decode("utf-8", "replace").strip()
    line = text.splitlines()[0].strip() if text else ""
    line = _UNPRINTABLE.sub("?", line)
    if line.startswith(str(status)):
        line = line[len(str(status)):].lstrip(" :-")
    if len(line) > REASON_LIMIT:
        line = line[:REASON_LIMIT - 3].rstrip() + "..."
    return scrub(line)


def new_request_id() -> str:
    """An Arvados-style request id: ``req-`` and 20 characters of ``[0-9a-z]``."""
    # Random bytes from the `random` module's generator (seeded from urandom, and again in a
    # forked child: an id only tells log lines apart; a system call per request showed in a
    # 4 KiB get's profile), mapped to digits in one C call: 252 = 7 * 36, so dropping the bytes
    # 252-255 leaves every digit equally likely. 24 bytes keep 20 but about once in 10^5 draws.
    while True:
        digits = random.randbytes(24).translate(_ID_DIGITS, _ID_DROP)
        if len(digits) >= 20:
            return "req-" + digits[:20].decode("ascii")


class Wire:
    """Sends requests to services for one client: adds the token and request id, counts
    traffic and failures, and marks a discovered service list stale when a connect fails.

    Args:
        transport: The transport requests go through.
        token: The token sent as ``Authorization: Bearer`` (never shown in a repr).
        directory: The service list, marked stale when a connection fails.
        counters: Where traffic and failures are counted.
        clock: The monotonic clock request latencies are measured with.
        cancel: Set to cancel: requests in flight are aborted.
        hedge: The `HedgePolicy` of the services' `health` (hedged GETs, the order failed
            services are tried in; its scores decay on *clock*).
    """

    def __init__(self, transport: Transport, token: str | None, directory: ServiceDirectory,
                 counters: Counters, clock: Callable[[], float] = time.monotonic,
                 cancel: threading.Event | None = None, hedge: HedgePolicy | None = None) -> None:
        self.transport = transport
        self.health = ServiceHealth(hedge, clock)
        self._token = token
        self.directory = directory
        self.counters = counters
        self.clock = clock
        self.cancel = cancel

    def __repr__(self) -> str:
        return f"Wire({self.transport!r})"  # never the token

    def services(self) -> list[Service]:
        """The current service list (discovering or refreshing it when due)."""
        return self.directory.services()

    def headers(self, request_id: str) -> dict[str, str]:
        """``X-Request-Id`` and, with a token, ``Authorization``."""
        headers = {"X-Request-Id": request_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def describe(self, response: Response) -> str:
        """``"<status> <reason>"`` for a message: the status and the server's reason text
        (`reason_text`), with this client's token masked should a server echo it."""
        reason = redact(reason_text(response.status, response.body), self._token)
        return f"{response.status} {reason}" if reason else str(response.status)

    def send(self, service: Service, request: Request) -> Response:
        """Send one request, counting traffic and latency per service; connection failures mark
        the service list stale. A cancelled request counts as neither success nor failure.
        Every request carries the client's cancel event (one-service calls included)."""
        request = self._with_cancel(request)
        self.counters.add(requests=1, bytes_up=request.body.nbytes if request.body is not None else 0)
        started = self.clock()
        try:
            response = self.transport.request(request)
        except TransportError as exc:
            self.failed(service, request, exc, started)
            raise
        self.answered(service, request, response, started)
        return response

    def race(self, services: Sequence[Service], requests: Sequence[Request], hedge_after: float,
             on_start: Callable[[int], None] | None = None) -> "CountedRace":
        """`Transport.race` of *requests* (``requests[i]`` to ``services[i]``; each should carry
        the client's cancel event), counted as `send` counts (see `CountedRace`)."""
        counted = CountedRace(self, services, requests, on_start)
        return counted.running(self.transport.race(requests, hedge_after, counted.started))

    def fan_out(self, services: Sequence[Service], requests: Sequence[Request]) -> "CountedRace | None":
        """`Transport.fan_out` of *requests* (``requests[i]`` to ``services[i]``), counted as
        `send` counts; None when the transport cannot overlap requests in one thread."""
        counted = CountedRace(self, services, requests, None)
        race = self.transport.fan_out(requests, counted.started)
        if race is None:
            return None
        counted.fan = race
        return counted.running(race)

    def pump(self) -> "CountedPump | None":
        """`Transport.pump`, its requests counted as `send` counts; None when the transport
        cannot overlap requests in one thread."""
        counted = CountedPump(self)
        pump = self.transport.pump(counted.started)
        if pump is None:
            return None
        counted.pump = pump
        return counted

    def _with_cancel(self, request: Request) -> Request:
        if request.cancel is None and self.cancel is not None:
            return dataclasses.replace(request, cancel=self.cancel)
        return request

    def failed(self, service: Service, request: Request, exc: TransportError, started: float | None) -> None:
        """Count a request that got no answer (a cancelled one neither succeeded nor failed)."""
        if not exc.cancelled:
            self.counters.fail(service.root)
            if started is not None:
                self.counters.observe(service.root, self.clock() - started)
        if exc.connect:
            self.directory.mark_stale()
        log.debug("%s %s: %s", request.method, service.root, exc.reason)

    def answered(self, service: Service, request: Request, response: Response, started: float) -> None:
        """Count an answer: its bytes, its latency, and a failure for a status worth retrying."""
        self.counters.add(bytes_down=len(response.body))
        if classify(response.status) not in (Status.OK, Status.NOT_FOUND):
            self.counters.fail(service.root)
        self.counters.observe(service.root, self.clock() - started)
        log.debug("%s %s -> %s", request.method, service.root, response.status)


class CountedRace(Iterator[tuple[int, "Response | TransportError"]]):
    """A `Wire`'s race: each request's index and its response or error as it ends, counted as
    `Wire.send` counts. `close` it when done: that abandons what still runs."""

    def __init__(self, wire: Wire, services: Sequence[Service], requests: Sequence[Request],
                 on_start: Callable[[int], None] | None) -> None:
        self._wire = wire
        self._services = list(services)
        self._requests: Sequence[Request] = requests  # not copied: the race builds them lazily
        self._on_start = on_start
        self._started: dict[int, float] = {}
        self._race: Race | None = None
        self.fan: FanOut | None = None  # a fan-out's (`Wire.fan_out`), which can take more requests

    def running(self, race: Race) -> "CountedRace":
        """This, counting *race* (the transport's, made with `started` as its start callback)."""
        self._race = race
        return self

    def add(self, service: Service, request: Request) -> None:
        """One more request, to *service*, in a fan-out (`Wire.fan_out`); it starts at once."""
        assert self.fan is not None  # only a fan-out takes more
        self._services.append(service)
        self._requests = [*self._requests, request]  # (not the caller's list, appended to)
        self.fan.add(request)

    def started(self, index: int) -> None:
        """The transport's start callback: count request *index* (and its body) as sent."""
        body = self._requests[index].body
        self._wire.counters.add(requests=1, bytes_up=body.nbytes if body is not None else 0)
        self._started[index] = self._wire.clock()
        if self._on_start is not None:
            self._on_start(index)

    def __next__(self) -> tuple[int, Response | TransportError]:
        assert self._race is not None  # made by Wire.race / Wire.fan_out, which attach one
        finished = next(self._race)
        index = finished.position
        if finished.response is not None:
            self._wire.answered(self._services[index], self._requests[index], finished.response, self._started[index])
            return index, finished.response
        assert finished.error is not None  # a Finished holds one or the other
        self._wire.failed(self._services[index], self._requests[index], finished.error, self._started.get(index))
        return index, finished.error

    def close(self) -> None:
        if self._race is not None:
            self._race.close()


class CountedPump:
    """A `Wire`'s pump (`Wire.pump`): requests to services, driven by one thread, each counted
    as `Wire.send` counts when it starts and when it ends."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._sent: dict[int, list[Any]] = {}  # index -> [service, request, start time or None]
        self.pump: Pump | None = None

    def add(self, service: Service, request: Request) -> int:
        """Queue *request* to *service* (it starts at the next `step`); its index."""
        assert self.pump is not None  # attached by Wire.pump
        index = self.pump.add(request)
        self._sent[index] = [service, request, None]
        return index

    def started(self, index: int) -> None:
        """The transport's start callback: count request *index* (and its body) as sent."""
        entry = self._sent[index]
        body = entry[1].body
        self._wire.counters.add(requests=1, bytes_up=body.nbytes if body is not None else 0)
        entry[2] = self._wire.clock()

    def step(self, wait: float | None) -> list[tuple[int, Response | TransportError]]:
        """`Pump.step`: each request that ended, by index, with its response or error."""
        assert self.pump is not None
        ended: list[tuple[int, Response | TransportError]] = []
        for finished in self.pump.step(wait):
            service, request, started = self._sent.pop(finished.position)
            if finished.response is not None:
                self._wire.answered(service, request, finished.response, started)
                ended.append((finished.position, finished.response))
            else:
                assert finished.error is not None  # a Finished holds one or the other
                self._wire.failed(service, request, finished.error, started)
                ended.append((finished.position, finished.error))
        return ended

    def wake(self) -> None:
        """End a `step`'s wait (from any thread)."""
        assert self.pump is not None
        self.pump.wake()

    @property
    def running(self) -> int:
        """Requests added and not yet given back by `step`."""
        return len(self._sent)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.close()


@dataclasses.dataclass(frozen=True)
class Link:
    """All a read or a write needs of its client: the wire, the retry rounds and the timeout."""

    wire: Wire
    rounds: RoundPolicy
    timeout: Timeout
