"""Verified block reads: GET and HEAD in probe order, round by round, with failover and hedging between replicas."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

from ..config import Timeout
from ..errors import BlockNotFound, KeepError, LocatorError, NoServicesError, ReadError
from ..locator import Locator
from ..services import Service, probe_order
from ..transport import Headers, Request, Response, TransportError
from .health import ServiceHealth
from .rounds import GiveUp, RoundResult, run_rounds
from .wire import Link, Status, classify

__all__ = ["SIGNATURE_HEADER", "read_block"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Keep-Signature"


@dataclasses.dataclass(frozen=True)
class _Attempt:
    """What one GET or HEAD to one service gave."""

    data: bytes | None = None  # set on success (b"" for HEAD)
    status: int | None = None
    note: str = ""
    permanent: bool = False
    retry_after: float | None = None
    cancelled: bool = False
    unhealthy: bool = False  # counts against the service's health (not a 404, not a cancel)


@dataclasses.dataclass
class _Try:
    """One request of a hedged GET: when it started and how long its first byte took."""

    service: Service
    health: ServiceHealth
    started: float | None = None
    first_byte: float | None = None
    stopped: float | None = None  # when it was dropped for another service's answer
    ended: bool = False  # it gave an answer or failed on its own

    def start(self) -> None:
        self.started = time.perf_counter()

    def answered(self, status: int) -> None:
        """The first-byte signal (on the transport's thread, which is the reading one)."""
        if self.started is not None:
            self.first_byte = time.perf_counter() - self.started
            self.health.first_byte(self.service.root, self.first_byte)


class _Built(Sequence[Request]):
    """A hedged GET's requests, each built when the transport first needs it (mostly only the first)."""

    def __init__(self, count: int, make: Callable[[int], Request]) -> None:
        self._made: list[Request | None] = [None] * count
        self._make = make

    def __len__(self) -> int:
        return len(self._made)

    @typing.overload
    def __getitem__(self, index: int) -> Request: ...

    @typing.overload
    def __getitem__(self, index: slice) -> Sequence[Request]: ...

    def __getitem__(self, index: int | slice) -> Request | Sequence[Request]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        made = self._made[index]
        if made is None:
            made = self._made[index] = self._make(index)
        return made


@dataclasses.dataclass
class _Round:
    """What one round of a read has gathered: failures by service, the largest Retry-After."""

    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    retry_after: float | None = None


class _Read:
    """The state of one `read_block` call (a `RoundJob`)."""

    def __init__(self, link: Link, loc: Locator, method: str, request_id: str,
                 extra: Mapping[str, str] | None, now: datetime.datetime | None) -> None:
        self.link = link
        self.loc = loc
        self.method = method
        self.request_id = request_id
        self.extra = dict(extra or {})
        self.refreshing = SIGNATURE_HEADER in self.extra
        self.now = now
        self.retired: set[str] = set()
        self.last: dict[str, _Attempt] = {}
        self.order: list[Service] = []
        self.operation = method

    @property
    def subject(self) -> str:
        """The block, for messages (only a failed or cancelled read has any)."""
        return str(self.loc.bare())

    def run_round(self, number: int, timeout: Timeout) -> RoundResult[bytes]:
        self.order = probe_order(self.loc, self.link.wire.services())
        if not self.order:
            raise NoServicesError(f"[{self.request_id}] no Keep services to read {self.loc} from")
        health = self.link.wire.health
        candidates = [s for s in health.order(self.order) if s.root not in self.retired]
        state = _Round()
        if health.policy.enabled and self.method == "GET" and len(candidates) > 1:
            done = self.raced(candidates, timeout, health, state)
        else:
            done = None
            for service in candidates:
                done = self.consider(service, self.attempt(service, timeout), state)
                if done is not None:
                    break
        if done is not None:
            return done
        if all(classify(self.last.get(s.root, _Attempt()).status or 0) is Status.NOT_FOUND for s in self.order):
            # 403 and 410 count as "not here" too; what those servers said is worth showing.
            said = "; ".join(f"{root}: {a.note}" for root, a in self.last.items() if a.status != 404)
            raise BlockNotFound(f"[{self.request_id}] {self.loc} not found on {len(self.order)} service(s)"
                                + (f" ({said})" if said else ""),
                                locator=str(self.loc), request_id=self.request_id, attempts=self.attempts())
        hopeful = not all(s.root in self.retired for s in self.order)
        return RoundResult(hopeful=hopeful, retry_after=state.retry_after, failures=state.failures)

    def consider(self, service: Service, result: _Attempt, state: _Round) -> RoundResult[bytes] | None:
        """What one attempt means for the round: its end (a value, or a cancel), or None to go on."""
        if result.unhealthy:
            self.link.wire.health.failed(service.root)
        if result.data is not None:
            return RoundResult(done=True, value=result.data)
        if result.cancelled:
            if self.link.rounds.cancel.is_set():
                return RoundResult(hopeful=False)  # the loop sees the cancel and says so
            return None  # a hedged request dropped for a faster replica: not an answer
        self.last[service.root] = result
        state.failures[service.root] = result.note
        if result.permanent:
            self.retired.add(service.root)
        if result.retry_after is not None:
            state.retry_after = max(state.retry_after or 0.0, result.retry_after)
        return None

    def raced(self, candidates: Sequence[Service], timeout: Timeout, health: ServiceHealth,
              state: _Round) -> RoundResult[bytes] | None:
        """The candidates in order through the transport's race: the next one is asked when the
        one running fails, or has had no first byte within the hedge delay (then two run, never
        more). A service that had no first byte within the delay by the time another answered
        scores a failure (one asked only just before the answer came does not)."""
        tries: dict[int, _Try] = {}  # made with their requests, when the race first needs them

        def make(index: int) -> Request:
            tried = tries[index] = _Try(candidates[index], health)
            return self.request(candidates[index], timeout, tried.answered)

        delay = health.hedge_delay()
        race = self.link.wire.race(candidates, _Built(len(candidates), make), delay,
                                   lambda index: tries[index].start())
        try:
            for index, outcome in race:
                if isinstance(outcome, TransportError) and outcome.cancelled:
                    tries[index].stopped = time.perf_counter()  # dropped (or cancelled): not an answer
                else:
                    tries[index].ended = True
                done = self.consider(candidates[index], self.judge(candidates[index], outcome), state)
                if done is not None:
                    return done
            return None
        finally:
            race.close()
            if len(tries) > 1 and not self.link.rounds.cancel.is_set():
                self.score_slow(tries.values(), delay, health)

    def score_slow(self, tries: Iterable[_Try], delay: float, health: ServiceHealth) -> None:
        """A failure for each request that had no first byte within *delay* before it was dropped."""
        now = time.perf_counter()
        for t in tries:
            if t.ended or t.first_byte is not None or t.started is None:
                continue
            if (t.stopped or now) - t.started >= delay:
                log.debug("GET %s: no first byte from %s within %.3f s; another service answered",
                          self.loc.bare(), t.service.root, delay)
                health.failed(t.service.root)

    def attempts(self) -> dict[str, str]:
        return {root: r.note for root, r in self.last.items()}

    def give_up(self, why: GiveUp, rounds: int) -> KeepError:
        attempts = self.attempts()
        detail = "; ".join(f"{root}: {note}" for root, note in attempts.items())
        if why is GiveUp.CLOSED:
            when = "(the client was closed)"
        elif why is GiveUp.DEADLINE:
            when = f"within the {self.link.rounds.retry.deadline or 0:g} s deadline ({rounds} round(s))"
        else:
            when = f"after {rounds} round(s)"
        return ReadError(f"[{self.request_id}] failed to read {self.loc} {when}: {detail}",
                         locator=str(self.loc), request_id=self.request_id, attempts=attempts)

    def request(self, service: Service, timeout: Timeout, on_first_byte: Callable[[int], None] | None = None
                ) -> Request:
        headers = self.link.wire.headers(self.request_id)
        headers["Accept"] = "application/octet-stream"
        headers.update(self.extra)
        return Request(self.method, service.root + str(self.loc), Headers(headers),
                       expected_size=self.loc.size if self.method == "GET" else None, timeout=timeout,
                       cancel=self.link.rounds.cancel, on_first_byte=on_first_byte)

    def attempt(self, service: Service, timeout: Timeout) -> _Attempt:
        try:
            outcome: Response | TransportError = self.link.wire.send(service, self.request(service, timeout))
        except TransportError as exc:
            outcome = exc
        return self.judge(service, outcome)

    def judge(self, service: Service, outcome: Response | TransportError) -> _Attempt:
        """What one service's answer (or failure) means for this read."""
        if isinstance(outcome, TransportError):
            return _Attempt(note=outcome.reason, cancelled=outcome.cancelled, unhealthy=not outcome.cancelled)
        response = outcome
        status = response.status
        kind = classify(status)
        if kind is Status.OK:
            if self.method == "HEAD":
                return self.returned_locator(response) if self.refreshing else _Attempt(data=b"", status=status)
            return self.verify(service, response)
        note = self.link.wire.describe(response)
        if kind is Status.TRANSIENT:
            return _Attempt(status=status, note=note, retry_after=response.retry_after(), unhealthy=True)
        return _Attempt(status=status, note=note, permanent=True)

    def returned_locator(self, response: Response) -> _Attempt:
        """The ``X-Keep-Locator`` of a refreshing HEAD, if it names the block asked about.

        Real keepstore answers one only for ``+R`` (remote) locators. Without one, a locator
        whose ``+A`` signature has not expired is returned as it is: the service has just
        accepted it, which is what the Arvados SDK's ``refresh_signature`` reports (it returns
        True there; this method returns the locator, so callers always get one).
        """
        loc, status = self.loc, response.status
        text = (response.headers.get("X-Keep-Locator") or "").strip()
        if not text:
            expires = loc.expires_at
            if loc.signature and expires is not None and (self.now is None or expires > self.now):
                return _Attempt(data=str(loc).encode("ascii"), status=status)
            return _Attempt(status=status, note=f"{status} without a valid X-Keep-Locator", permanent=True)
        try:
            returned = Locator.parse(text)
        except LocatorError:
            return _Attempt(status=status, note=f"{status} without a valid X-Keep-Locator", permanent=True)
        if returned.md5 != loc.md5 or returned.size != loc.size:
            return _Attempt(status=status, note=f"{status} with X-Keep-Locator for another block ({returned.bare()})",
                            permanent=True)
        return _Attempt(data=str(returned).encode("ascii"), status=status)

    def verify(self, service: Service, response: Response) -> _Attempt:
        body, loc, status = response.body, self.loc, response.status
        if len(body) != loc.size or response.truncated:
            self.link.wire.counters.fail(service.root)
            return _Attempt(status=status, note=f"{status} with {len(body)} of {loc.size} bytes", unhealthy=True)
        digest = response.body_md5 or hashlib.md5(body, usedforsecurity=False).hexdigest()
        if digest != loc.md5:
            self.link.wire.counters.fail(service.root)
            log.warning("checksum mismatch reading %s from %s", loc.bare(), service.root)
            return _Attempt(status=status, note=f"{status} with a checksum mismatch", unhealthy=True)
        return _Attempt(data=bytes(body), status=status)


def read_block(link: Link, loc: Locator, method: str, request_id: str, extra: Mapping[str, str] | None = None,
               *, now: datetime.datetime | None = None) -> bytes:
    """GET: the verified block. HEAD: b"", or with an ``X-Keep-Signature`` in *extra* the
    locator to use from now on (the ``X-Keep-Locator`` answered, checked to name the same
    block; or *loc* itself when it carries a ``+A`` signature still valid at *now*)."""
    return run_rounds(_Read(link, loc, method, request_id, extra, now), link.rounds)
