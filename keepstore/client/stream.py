"""Streamed block reads: a GET's bytes handed over as they arrive, verified when the last one came."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator

from ..config import Timeout
from ..errors import BlockNotFound, KeepError, NoServicesError, ReadError
from ..locator import Locator
from ..services import Service, probe_order
from ..transport import Headers, Request, TransportError
from .rounds import GiveUp, RoundResult, run_rounds
from .wire import Link, Status, classify, new_request_id

__all__ = ["Spread", "Write", "stream_block"]

log = logging.getLogger(__name__)

#: ``write(offset, piece)``: where a streamed block's bytes go. After a failed replica the next
#: one starts again at offset 0, so what was written must be taken as unverified until
#: `stream_block` returns.
Write = Callable[[int, bytes], object]


class Spread:
    """Spreads concurrent streamed reads over the replicas: of the first *holders* services in
    a block's probe order (where its copies most likely are), the one with the fewest streams
    in flight goes first. Without it, two 64 MiB blocks whose probe orders start with the same
    server both come from that server while the other idles. One per group of reads that run
    together (a `BlockSource` has one)."""

    def __init__(self, holders: int = 2) -> None:
        self.holders = holders
        self._lock = threading.Lock()
        self._busy: collections.Counter[str] = collections.Counter()

    def order(self, services: list[Service]) -> list[Service]:
        with self._lock:
            head = sorted(services[:self.holders], key=lambda s: self._busy[s.root])  # stable: probe order on ties
        return head + services[self.holders:]

    @contextlib.contextmanager
    def busy(self, service: Service) -> Iterator[None]:
        with self._lock:
            self._busy[service.root] += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[service.root] -= 1


class _Sink:
    """What one attempt hands the transport: counts the bytes and keeps the writer's own error."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self.error: BaseException | None = None

    def __call__(self, offset: int, piece: bytes) -> int | None:
        try:
            self.write(offset, piece)
        except BaseException as exc:  # a disk error: stop this transfer, and raise it after
            self.error = exc
            return 0
        return None


class _Stream:
    """The state of one `stream_block` call (a `RoundJob`): replicas in probe order, one at a time."""

    operation = "GET"

    def __init__(self, link: Link, loc: Locator, write: Write, request_id: str, spread: Spread | None) -> None:
        self.link = link
        self.spread = spread
        self.loc = loc
        self.write = write
        self.request_id = request_id
        self.subject = str(loc.bare())
        self.notes: dict[str, str] = {}
        self.statuses: dict[str, int] = {}
        self.retired: set[str] = set()

    def run_round(self, number: int, timeout: Timeout) -> RoundResult[None]:
        order = probe_order(self.loc, self.link.wire.services())
        if self.spread is not None:
            order = self.spread.order(order)
        if not order:
            raise NoServicesError(f"[{self.request_id}] no Keep services to read {self.loc} from")
        failures: dict[str, str] = {}
        retry_after: float | None = None
        for service in order:
            if service.root in self.retired:
                continue
            note, status, after = self.attempt(service, timeout)
            if not note:
                return RoundResult(done=True)
            failures[service.root] = self.notes[service.root] = note
            if status is not None:
                self.statuses[service.root] = status
                if classify(status) not in (Status.OK, Status.TRANSIENT):  # this one will say the same again
                    self.retired.add(service.root)
            if after is not None:
                retry_after = max(retry_after or 0.0, after)
        if all(classify(self.statuses.get(s.root, 0)) is Status.NOT_FOUND for s in order):
            raise BlockNotFound(f"[{self.request_id}] {self.loc} not found on {len(order)} service(s)",
                                locator=str(self.loc), request_id=self.request_id, attempts=dict(self.notes))
        hopeful = not all(s.root in self.retired for s in order)
        return RoundResult(hopeful=hopeful, retry_after=retry_after, failures=failures)

    def attempt(self, service: Service, timeout: Timeout) -> tuple[str, int | None, float | None]:
        """One GET: ``("", status, None)`` when every byte came and matched, else what went wrong."""
        headers = self.link.wire.headers(self.request_id)
        headers["Accept"] = "application/octet-stream"
        sink = _Sink(self.write)
        request = Request("GET", service.root + str(self.loc), Headers(headers), expected_size=self.loc.size,
                          timeout=timeout, cancel=self.link.rounds.cancel, sink=sink)
        try:
            with self.spread.busy(service) if self.spread is not None else contextlib.nullcontext():
                response = self.link.wire.send(service, request)
        except TransportError as exc:
            if sink.error is not None:
                raise sink.error from None
            return exc.reason, None, None
        if sink.error is not None:
            raise sink.error
        status = response.status
        if classify(status) is not Status.OK:
            return self.link.wire.describe(response), status, response.retry_after()
        body = response.body
        if response.body_size is None:  # a transport that kept the body: hand it over whole
            size = len(body)
            digest = response.body_md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()
            if size == self.loc.size and digest == self.loc.md5 and not response.truncated:
                self.write(0, body)
        else:
            size, digest = response.body_size, response.body_md5 or ""
            self.link.wire.counters.add(bytes_down=size)
        if size != self.loc.size or response.truncated:
            self.link.wire.counters.fail(service.root)
            return f"{status} with {size} of {self.loc.size} bytes", status, None
        if digest != self.loc.md5:
            self.link.wire.counters.fail(service.root)
            log.warning("checksum mismatch reading %s from %s", self.loc.bare(), service.root)
            return f"{status} with a checksum mismatch", status, None
        return "", status, None

    def give_up(self, why: GiveUp, rounds: int) -> KeepError:
        detail = "; ".join(f"{root}: {note}" for root, note in self.notes.items())
        when = "(the client was closed)" if why is GiveUp.CLOSED else f"after {rounds} round(s)"
        return ReadError(f"[{self.request_id}] failed to read {self.loc} {when}: {detail}",
                         locator=str(self.loc), request_id=self.request_id, attempts=dict(self.notes))


def stream_block(link: Link, loc: Locator, write: Write, *, request_id: str | None = None,
                 spread: Spread | None = None) -> None:
    """GET *loc*, handing its bytes to *write* as they arrive; return once they all came and
    their size and md5 match, or raise as a read would (`BlockNotFound`, `ReadError`). A
    replica that fails part-way is followed by the next, written again from offset 0. An error
    *write* raises ends the read at once and is raised as it is. *spread* (shared by reads
    running together) starts each at the least busy of the block's likely holders."""
    if link.rounds.is_closed():
        raise KeepError("this KeepClient is closed")
    run_rounds(_Stream(link, loc, write, request_id or new_request_id(), spread), link.rounds)
