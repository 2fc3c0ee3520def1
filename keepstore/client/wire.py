"""How reads and writes reach services: request ids, headers with the token, counted sends, statuses."""

from __future__ import annotations

import dataclasses
import enum
import logging
import secrets
import string

from ..config import Timeout
from ..errors import ConfigError
from ..services import Service, ServiceDirectory
from ..transport import Request, Response, Transport, TransportError
from .rounds import RoundPolicy
from .stats import Counters

__all__ = ["NOT_FOUND_STATUSES", "TRANSIENT_STATUSES", "Link", "Status", "Wire", "classify", "clean_token",
           "new_request_id"]

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 409, 423, 429, 500, 502, 503, 504})
NOT_FOUND_STATUSES = frozenset({403, 404, 410})
FULL = 507

_ID_ALPHABET = string.digits + string.ascii_lowercase


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


def new_request_id() -> str:
    """An Arvados-style request id: ``req-`` and 20 characters of ``[0-9a-z]``."""
    # One draw of 20 base-36 digits: uniform like 20 secrets.choice calls, at one urandom call
    # instead of twenty (60 -> 8 us an id, docs/performance.md).
    n = secrets.randbelow(36**20)
    digits = []
    for _ in range(20):
        n, d = divmod(n, 36)
        digits.append(_ID_ALPHABET[d])
    return "req-" + "".join(digits)


class Wire:
    """Sends requests to services for one client: adds the token and request id, counts
    traffic and failures, and marks a discovered service list stale when a connect fails."""

    def __init__(self, transport: Transport, token: str | None, directory: ServiceDirectory,
                 counters: Counters) -> None:
        self.transport = transport
        self._token = token
        self.directory = directory
        self.counters = counters

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

    def send(self, service: Service, request: Request) -> Response:
        """Send one request, counting traffic; connection failures mark the service list stale."""
        self.counters.add(requests=1, bytes_up=request.body.nbytes if request.body is not None else 0)
        try:
            response = self.transport.request(request)
        except TransportError as exc:
            self.counters.fail(service.root)
            if exc.connect:
                self.directory.mark_stale()
            log.debug("%s %s: %s", request.method, service.root, exc.reason)
            raise
        self.counters.add(bytes_down=len(response.body))
        if classify(response.status) not in (Status.OK, Status.NOT_FOUND):
            self.counters.fail(service.root)
        log.debug("%s %s -> %s", request.method, service.root, response.status)
        return response


@dataclasses.dataclass(frozen=True)
class Link:
    """All a read or a write needs of its client: the wire, the retry rounds and the timeout."""

    wire: Wire
    rounds: RoundPolicy
    timeout: Timeout
