"""Replicated block writes: PUT fan-out to the top-ranked writable services, round by round."""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from ..config import Timeout
from ..errors import KeepError, LocatorError, NoServicesError, WriteError
from ..locator import Locator
from ..services import Service, probe_order
from ..store import PutResult
from ..transport import Headers, Request, Response, TransportError
from .rounds import GiveUp, RoundResult, run_rounds
from .wire import Link, Status, classify

__all__ = ["BlockWrite", "FanRound", "ReplicaMemory", "Verdict", "parse_classes_confirmed", "write_block"]

log = logging.getLogger(__name__)

#: Runs one PUT on the client's replica pool: ``submit(fn, *args) -> Future``.
Submit = Callable[..., "Future[Any]"]

# Bytes of a PUT answer read: it is one locator (under 200 bytes, even with a signature).
PUT_ANSWER_LIMIT = 4096
# Bodies up to this size are written by the calling thread (all copies on one multi handle, or
# one copy itself beside the pool's): there the per-request costs are what counts. Larger ones go
# to the replica pool, one thread per copy, so the copies' bytes move on both cores at once
# (64 MiB to two servers: 297 against 261 MB/s in one thread), and no copy waits for the caller.
CALLER_WRITES_MAX = 1 << 20

_CLASS_SPLIT = re.compile(r"[,;]")


def parse_classes_confirmed(value: str) -> dict[str, int]:
    """``X-Keep-Storage-Classes-Confirmed: a=1, b=2`` (``;`` accepted too) as a dict."""
    result: dict[str, int] = collections.defaultdict(int)
    for item in _CLASS_SPLIT.split(value):
        name, sep, count = item.strip().partition("=")
        if name and sep:
            try:
                result[name.strip()] += int(count.strip())
            except ValueError:
                log.debug("ignoring malformed storage class confirmation %r", item)
    return dict(result)


class Verdict(enum.Enum):
    """What one PUT to one service achieved."""

    OK = "ok"
    TRANSIENT = "transient"  # try this service again next round
    PERMANENT = "permanent"  # this service will not take the block
    FULL = "full"  # 507: this service has no room


class ReplicaMemory:
    """What a client's puts have learnt about services that store one replica per PUT.

    A disk service always does; a proxy (or a URL whose type is unknown) is seen doing it when
    asked for several replicas and it stores one. Safe to share between threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: set[str] = set()
        self._url_list = False

    def learn(self, service: Service) -> None:
        """*service* stored a single replica when asked for several."""
        with self._lock:
            self._roots.add(service.root)
            if service.from_url_list:
                # A list of plain URLs is a set of keepstores or one proxy: once one of them
                # stores a single replica when asked for several, they are keepstores, and a
                # short-lived process (`keep put`) need not learn that of every root in turn.
                # Were one a proxy after all, a parallel PUT to it may store spare replicas;
                # each PUT still counts only the replicas its service reports.
                self._url_list = True

    def takes_one(self, service: Service) -> bool:
        """Whether one PUT to *service* stores one replica (so copies can go out in parallel)."""
        with self._lock:
            return (service.is_disk or service.root in self._roots
                    or (self._url_list and service.from_url_list))


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What one PUT to one service achieved."""

    service: Service
    kind: Verdict
    note: str
    replicas: int = 0
    classes: dict[str, int] | None = None
    locator: Locator | None = None
    retry_after: float | None = None
    asked_several: bool = False


class BlockWrite:
    """The state of one block's write, round by round (`write_block`, or the client's put loop)."""

    def __init__(self, link: Link, submit: Submit, memory: ReplicaMemory, view: memoryview, loc: Locator,
                 copies: int, classes: Sequence[str], request_id: str) -> None:
        self.link = link
        self.submit = submit
        self.memory = memory
        self.view = view
        self.loc = loc
        self.copies = copies
        self.wanted_classes = sorted(set(classes))
        self.track_classes = bool(self.wanted_classes)
        self.request_id = request_id
        self.done = 0
        self.confirmed_classes: dict[str, int] = collections.defaultdict(int)
        self.confirmed: list[str] = []
        self.retired: set[str] = set()
        self.attempts: dict[str, list[str]] = collections.defaultdict(list)
        self.locator: Locator | None = None
        self.failures: dict[str, str] = {}  # this round's: root -> what went wrong
        self.operation = "PUT"
        self.subject = str(loc)

    def pending_classes(self) -> list[str]:
        if not self.track_classes:
            return []
        return [c for c in self.wanted_classes if self.confirmed_classes.get(c, 0) < self.copies]

    def satisfied(self) -> bool:
        return self.done >= self.copies and not self.pending_classes()

    def request_for(self, service: Service, timeout: Timeout) -> Request:
        headers = self.link.wire.headers(self.request_id)
        headers["X-Keep-Desired-Replicas"] = str(self.copies)
        pending = self.pending_classes()
        if pending:
            headers["X-Keep-Storage-Classes"] = ", ".join(pending)
        return Request("PUT", service.root + self.loc.md5, Headers(headers), self.view,
                       timeout=timeout, body_limit=PUT_ANSWER_LIMIT, cancel=self.link.rounds.cancel)

    def attempt(self, service: Service, timeout: Timeout) -> _Outcome:
        """One PUT (runs in the client's pool)."""
        try:
            response = self.link.wire.send(service, self.request_for(service, timeout))
        except TransportError as exc:
            return self.outcome(service, exc)
        return self.judge(service, response)

    def need(self) -> int:
        """PUTs still wanted: replicas missing, or one more for a storage class not confirmed."""
        return max(self.copies - self.done, 1 if self.pending_classes() else 0)

    def fan_out(self, services: list[Service], queue: collections.deque[Service], timeout: Timeout) -> float | None:
        """One PUT to each of *services* (which take one replica each) at once through the
        transport's `fan_out` (see `FanRound`). The longest ``Retry-After`` among them (-1:
        none), or None when the transport cannot overlap requests (nothing was sent)."""
        fan = FanRound(self, queue, timeout, parallel=True)
        started = fan.start(services)
        race = self.link.wire.fan_out([s for s, _ in started], [r for _, r in started])
        if race is None:
            return None
        services = [s for s, _ in started]
        try:
            for index, result in race:
                for service, request in fan.ended(services[index], result):
                    services.append(service)
                    race.add(service, request)
        finally:
            race.close()
        return fan.retry_after

    def outcome(self, service: Service, result: Response | TransportError) -> _Outcome:
        """What *result* (an answer or a failed transfer) to a PUT to *service* achieved."""
        if isinstance(result, TransportError):
            return _Outcome(service, Verdict.TRANSIENT, result.reason)
        return self.judge(service, result)

    def judge(self, service: Service, response: Response) -> _Outcome:
        status = response.status
        kind = classify(status)
        if kind is Status.OK:  # any 2xx with a valid locator, as the Arvados SDK has it
            return self.accepted(service, response)
        note = self.link.wire.describe(response)
        if kind is Status.FULL:
            return _Outcome(service, Verdict.FULL, note if note != "507" else "507 full")
        if kind is Status.TRANSIENT:
            return _Outcome(service, Verdict.TRANSIENT, note, retry_after=response.retry_after())
        return _Outcome(service, Verdict.PERMANENT, note)

    def accepted(self, service: Service, response: Response) -> _Outcome:
        status = response.status
        if response.truncated:  # a locator is under 200 bytes: this is no answer to a PUT
            return _Outcome(service, Verdict.PERMANENT, f"{status} with an oversized body")
        text = response.body.decode("ascii", "replace").strip()
        try:
            returned = Locator.parse(text)
        except LocatorError:
            return _Outcome(service, Verdict.PERMANENT, f"{status} with an invalid locator")
        if returned.md5 != self.loc.md5 or returned.size != self.loc.size:
            return _Outcome(service, Verdict.PERMANENT, f"{status} for another block ({returned.bare()})")
        try:
            replicas = max(0, int(response.headers.get("X-Keep-Replicas-Stored", "1")))
        except ValueError:
            replicas = 1
        if service.is_disk:
            replicas = min(replicas, 1)  # one disk service holds one replica, whatever it says
        header = response.headers.get("X-Keep-Storage-Classes-Confirmed")
        classes = parse_classes_confirmed(header) if header is not None else None
        return _Outcome(service, Verdict.OK, f"{status} ({replicas} stored)", replicas, classes, returned,
                        asked_several=self.copies - self.done > 1)

    def record(self, outcome: _Outcome) -> None:
        root = outcome.service.root
        self.attempts[root].append(outcome.note)
        if outcome.kind is not Verdict.OK:
            self.failures[root] = outcome.note
            if outcome.kind in (Verdict.PERMANENT, Verdict.FULL):
                self.retired.add(root)
            return
        self.confirmed.append(root)
        self.done += outcome.replicas
        if outcome.asked_several and outcome.replicas == 1:
            self.memory.learn(outcome.service)
        if outcome.classes is None:
            if self.track_classes:
                log.warning("%s does not confirm storage classes; counting replicas only", root)
            self.track_classes = False
        else:
            for name, count in outcome.classes.items():
                self.confirmed_classes[name] += count
        if self.locator is None or (outcome.locator and outcome.locator.signature and not self.locator.signature):
            self.locator = outcome.locator

    def run_round(self, round_number: int, timeout: Timeout) -> RoundResult[PutResult]:
        """Write to candidates in probe order until satisfied or out of candidates."""
        cancel = self.link.rounds.cancel
        writable, queue, parallel = self.candidates()
        inflight: dict[Future[_Outcome], Service] = {}
        retry_after: float | None = None
        while not cancel.is_set():  # cancelled: PUTs in flight abort on their own; the loop says so
            need = self.need()
            limit = need if parallel else min(need, 1)
            launch: list[Service] = []
            while queue and len(inflight) + len(launch) < limit:
                launch.append(queue.popleft())
            small = self.view.nbytes <= CALLER_WRITES_MAX
            if len(launch) > 1 and not inflight and small:
                # Several copies at once: on one multi handle in the caller's thread, when the
                # transport has one (no thread hand-offs, no two threads taking turns with the
                # interpreter lock for every callback); else on the replica pool.
                fanned = self.fan_out(launch, queue, timeout)
                if fanned is not None:
                    if fanned >= 0:
                        retry_after = max(retry_after or 0.0, fanned)
                    continue
            # When the caller would only wait, it makes one of the PUTs itself: one thread
            # hand-off fewer per put, which is most of a small block's cost beyond the wire.
            inline = launch.pop() if launch and not inflight and small else None
            for service in launch:
                inflight[self.submit(self.attempt, service, timeout)] = service
            if inline is not None:
                outcome = self.attempt(inline, timeout)
                self.record(outcome)
                if outcome.retry_after is not None:
                    retry_after = max(retry_after or 0.0, outcome.retry_after)
                continue
            if not inflight:
                break
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in finished:
                del inflight[future]
                outcome = future.result()
                self.record(outcome)
                if outcome.retry_after is not None:
                    retry_after = max(retry_after or 0.0, outcome.retry_after)
        return self.round_result(writable, retry_after)

    def candidates(self) -> tuple[list[Service], collections.deque[Service], bool]:
        """A new round's writable services, those to try in probe order, and whether they may
        be written at once. Raises `NoServicesError` when no service is writable."""
        self.failures = {}
        writable = [s for s in self.link.wire.services() if not s.read_only and not s.is_gateway]
        if not writable:
            raise NoServicesError(f"[{self.request_id}] no writable Keep services for {self.loc}")
        order = [s for s in probe_order(self.loc.md5, writable)
                 if s.root not in self.retired and s.root not in self.confirmed]
        # A disk service (or one seen storing a single replica) takes one replica per PUT, so
        # we can write `need` at once; a proxy might store them all, so go one at a time there.
        return writable, collections.deque(order), all(self.memory.takes_one(s) for s in order)

    def round_result(self, writable: list[Service], retry_after: float | None) -> RoundResult[PutResult]:
        """What the round that wrote to *writable* gave: done, or whether another could help."""
        left = [s for s in writable if s.root not in self.retired and s.root not in self.confirmed]
        # A later round helps only if what is left can still hold the replicas missing: one each
        # for disk services (and those seen storing one), possibly all of them for a proxy.
        if self.satisfied():
            assert self.locator is not None
            return RoundResult(done=True, value=PutResult(self.locator, self.done, tuple(self.confirmed),
                                                          dict(self.confirmed_classes)))
        room = sum(1 if self.memory.takes_one(s) else self.copies for s in left)
        hopeful = bool(left) and self.done + room >= self.copies
        return RoundResult(hopeful=hopeful, retry_after=retry_after, failures=dict(self.failures))

    def give_up(self, why: GiveUp, rounds: int) -> KeepError:
        if why is GiveUp.HOPELESS:
            return self.error("no service left that could store the rest")
        if why is GiveUp.EXHAUSTED:
            return self.error(f"gave up after {rounds} rounds")
        if why is GiveUp.DEADLINE:
            deadline = self.link.rounds.retry.deadline or 0
            return self.error(f"gave up at the {deadline:g} s deadline after {rounds} rounds")
        return self.error("the client was closed")

    def error(self, why: str) -> WriteError:
        # `attempts` keeps every round's note; the message gives each service's last one, once.
        attempts = {root: ", ".join(notes) for root, notes in self.attempts.items()}
        detail = "; ".join(f"{root}: {notes[-1]}" + (f" ({len(notes)} attempts)" if len(notes) > 1 else "")
                           for root, notes in self.attempts.items()) or "no service tried"
        wanted = f"{self.copies} replicas"
        stored = f"stored {self.done}"
        if self.wanted_classes:
            wanted += f" in classes {', '.join(self.wanted_classes)}"
            confirmed = ", ".join(f"{name}={count}" for name, count in sorted(self.confirmed_classes.items()))
            stored += f", classes confirmed: {confirmed or 'none'}"
        return WriteError(
            f"[{self.request_id}] failed to write {self.loc}: wanted {wanted}, {stored} ({why}); {detail}",
            wanted=self.copies, done=self.done, locator=str(self.loc), request_id=self.request_id,
            attempts=attempts)


class FanRound:
    """One round of a put's PUTs to services that take one replica each, all at once, each
    recorded as it ends; while replicas are still missing, a PUT that failed is replaced at once
    by one to the next service of *queue* (one at a time when not *parallel*: a proxy may store
    them all). Driven by `BlockWrite.fan_out` on a race of its own, or by the client's put loop
    beside other puts' PUTs (`QueuedPut`).

    ``running`` counts the PUTs started and not yet ended; ``retry_after`` is the longest
    ``Retry-After`` among the answers (-1: none).
    """

    def __init__(self, put: BlockWrite, queue: collections.deque[Service], timeout: Timeout, *,
                 parallel: bool) -> None:
        self.put = put
        self.queue = queue
        self.timeout = timeout
        self.parallel = parallel
        self.running = 0
        self.retry_after = -1.0

    def want(self) -> int:
        need = self.put.need()
        return need if self.parallel else min(need, 1)

    def start(self, services: Sequence[Service]) -> list[tuple[Service, Request]]:
        """The PUTs to *services*, counted as running."""
        self.running += len(services)
        return [(s, self.put.request_for(s, self.timeout)) for s in services]

    def opening(self) -> list[tuple[Service, Request]]:
        """The round's first PUTs: as many as are wanted, from the front of the queue."""
        launch = [self.queue.popleft() for _ in range(min(self.want(), len(self.queue)))]
        return self.start(launch)

    def ended(self, service: Service, result: Response | TransportError) -> list[tuple[Service, Request]]:
        """Record the end of the PUT to *service*; the PUTs to start in its place."""
        self.running -= 1
        outcome = self.put.outcome(service, result)
        self.put.record(outcome)
        if outcome.retry_after is not None:
            self.retry_after = max(self.retry_after, outcome.retry_after)
        launch: list[Service] = []
        while self.queue and self.running + len(launch) < self.want() and not self.put.link.rounds.cancel.is_set():
            launch.append(self.queue.popleft())
        return self.start(launch)


def write_block(link: Link, submit: Submit, memory: ReplicaMemory, view: memoryview, loc: Locator, *,
                copies: int, classes: Sequence[str], request_id: str) -> PutResult:
    """Store *view* (whose locator is *loc*) on enough services; raise `WriteError` if not.

    *submit* runs the parallel PUTs on the client's replica pool; *memory* is what the client's
    earlier puts learnt about which services store one replica per PUT.
    """
    return run_rounds(BlockWrite(link, submit, memory, view, loc, copies, classes, request_id), link.rounds)
