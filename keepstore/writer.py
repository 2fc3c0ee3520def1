"""Replicated block writes: PUT fan-out to the top-ranked writable services, with retries."""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

from .errors import LocatorError, NoServicesError, WriteError
from .locator import Locator
from .services import Service, probe_order
from .store import PutResult
from .transport import Headers, Request, Response, TransportError

if TYPE_CHECKING:  # pragma: no cover
    from .client import KeepClient

__all__ = ["NOT_FOUND_STATUSES", "TRANSIENT_STATUSES", "parse_classes_confirmed", "write_block"]

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 409, 423, 429, 500, 502, 503, 504})
NOT_FOUND_STATUSES = frozenset({403, 404, 410})
FULL = 507

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


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What one PUT to one service achieved."""

    service: Service
    kind: str  # "ok", "transient", "permanent" or "full"
    note: str
    replicas: int = 0
    classes: dict[str, int] | None = None
    locator: Locator | None = None
    retry_after: float | None = None
    asked_several: bool = False


class _Put:
    """The state of one `write_block` call."""

    def __init__(self, client: "KeepClient", view: memoryview, loc: Locator, copies: int,
                 classes: Sequence[str], request_id: str) -> None:
        self.client = client
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

    def pending_classes(self) -> list[str]:
        if not self.track_classes:
            return []
        return [c for c in self.wanted_classes if self.confirmed_classes.get(c, 0) < self.copies]

    def satisfied(self) -> bool:
        return self.done >= self.copies and not self.pending_classes()

    def request_for(self, service: Service, round_number: int) -> Request:
        headers = self.client._headers(self.request_id)
        headers["X-Keep-Desired-Replicas"] = str(self.copies)
        pending = self.pending_classes()
        if pending:
            headers["X-Keep-Storage-Classes"] = ", ".join(pending)
        return Request("PUT", service.root + self.loc.md5, Headers(headers), self.view,
                       timeout=self.client.timeout.for_round(round_number))

    def attempt(self, service: Service, round_number: int) -> _Outcome:
        """One PUT (runs in the client's pool)."""
        try:
            response = self.client._send(service, self.request_for(service, round_number))
        except TransportError as exc:
            return _Outcome(service, "transient", exc.reason)
        return self.judge(service, response)

    def judge(self, service: Service, response: Response) -> _Outcome:
        status = response.status
        if status == 200:
            return self.accepted(service, response)
        if status == FULL:
            return _Outcome(service, "full", "507 full")
        if status in TRANSIENT_STATUSES:
            return _Outcome(service, "transient", str(status), retry_after=response.retry_after())
        return _Outcome(service, "permanent", str(status))

    def accepted(self, service: Service, response: Response) -> _Outcome:
        text = response.body.decode("ascii", "replace").strip()
        try:
            returned = Locator.parse(text)
        except LocatorError:
            return _Outcome(service, "permanent", "200 with an invalid locator")
        if returned.md5 != self.loc.md5 or returned.size != self.loc.size:
            return _Outcome(service, "permanent", f"200 for another block ({returned.bare()})")
        try:
            replicas = max(0, int(response.headers.get("X-Keep-Replicas-Stored", "1")))
        except ValueError:
            replicas = 1
        if service.is_disk:
            replicas = min(replicas, 1)  # one disk service holds one replica, whatever it says
        header = response.headers.get("X-Keep-Storage-Classes-Confirmed")
        classes = parse_classes_confirmed(header) if header is not None else None
        return _Outcome(service, "ok", f"200 ({replicas} stored)", replicas, classes, returned,
                        asked_several=self.copies - self.done > 1)

    def record(self, outcome: _Outcome) -> None:
        root = outcome.service.root
        self.attempts[root].append(outcome.note)
        if outcome.kind != "ok":
            if outcome.kind in ("permanent", "full"):
                self.retired.add(root)
            return
        self.confirmed.append(root)
        self.done += outcome.replicas
        if outcome.asked_several and outcome.replicas == 1:
            self.client._single_replica_roots.add(root)
            if outcome.service.from_url_list:
                # A list of plain URLs is a set of keepstores or one proxy: once one of them
                # stores a single replica when asked for several, they are keepstores, and a
                # short-lived process (`keep put`) need not learn that of every root in turn.
                # Were one a proxy after all, a parallel PUT to it may store spare replicas;
                # each PUT still counts only the replicas its service reports.
                self.client._url_list_single_replica = True
        if outcome.classes is None:
            if self.track_classes:
                log.warning("%s does not confirm storage classes; counting replicas only", root)
            self.track_classes = False
        else:
            for name, count in outcome.classes.items():
                self.confirmed_classes[name] += count
        if self.locator is None or (outcome.locator and outcome.locator.signature and not self.locator.signature):
            self.locator = outcome.locator

    def run_round(self, round_number: int) -> tuple[bool, float | None]:
        """Write to candidates in probe order until satisfied or out of candidates.

        Returns (whether a later round could help, the largest Retry-After seen).
        """
        writable = [s for s in self.client._directory.services() if not s.read_only and not s.is_gateway]
        if not writable:
            raise NoServicesError(f"[{self.request_id}] no writable Keep services for {self.loc}")
        order = [s for s in probe_order(self.loc.md5, writable)
                 if s.root not in self.retired and s.root not in self.confirmed]
        queue = collections.deque(order)
        # A disk service (or one seen storing a single replica) takes one replica per PUT, so
        # we can write `need` at once; a proxy might store them all, so go one at a time there.
        parallel = all(self.takes_one_replica(s) for s in order)
        inflight: dict[Future[_Outcome], Service] = {}
        retry_after: float | None = None
        while True:
            need = max(self.copies - self.done, 1 if self.pending_classes() else 0)
            limit = need if parallel else min(need, 1)
            launch: list[Service] = []
            while queue and len(inflight) + len(launch) < limit:
                launch.append(queue.popleft())
            # When the caller would only wait, it makes one of the PUTs itself: one thread
            # hand-off fewer per put, which is most of a small block's cost beyond the wire.
            inline = launch.pop() if launch and not inflight else None
            for service in launch:
                inflight[self.client._executor().submit(self.attempt, service, round_number)] = service
            if inline is not None:
                outcome = self.attempt(inline, round_number)
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
        left = [s for s in writable if s.root not in self.retired and s.root not in self.confirmed]
        # A later round helps only if what is left can still hold the replicas missing: one each
        # for disk services (and those seen storing one), possibly all of them for a proxy.
        room = sum(1 if self.takes_one_replica(s) else self.copies for s in left)
        hopeful = bool(left) and self.done + room >= self.copies
        return hopeful, retry_after

    def takes_one_replica(self, service: Service) -> bool:
        """Whether one PUT to *service* stores one replica (so copies can go out in parallel)."""
        client = self.client
        return (service.is_disk or service.root in client._single_replica_roots
                or (client._url_list_single_replica and service.from_url_list))

    def error(self, why: str) -> WriteError:
        attempts = {root: ", ".join(notes) for root, notes in self.attempts.items()}
        detail = "; ".join(f"{root}: {notes}" for root, notes in attempts.items()) or "no service tried"
        wanted = f"{self.copies} replicas" + (f" in classes {', '.join(self.wanted_classes)}"
                                              if self.wanted_classes else "")
        return WriteError(
            f"[{self.request_id}] failed to write {self.loc}: wanted {wanted}, stored {self.done} ({why}); {detail}",
            wanted=self.copies, done=self.done, locator=str(self.loc), request_id=self.request_id,
            attempts=attempts)


def write_block(client: "KeepClient", view: memoryview, loc: Locator, *, copies: int,
                classes: Sequence[str], request_id: str) -> PutResult:
    """Store *view* (whose locator is *loc*) on enough services; raise `WriteError` if not."""
    put = _Put(client, view, loc, copies, classes, request_id)
    retry = client.retry
    round_number = 0
    while True:
        hopeful, retry_after = put.run_round(round_number)
        if put.satisfied():
            assert put.locator is not None
            return PutResult(put.locator, put.done, tuple(put.confirmed), dict(put.confirmed_classes))
        if not hopeful:
            raise put.error("no service left that could store the rest")
        if retry.remaining <= 0:
            raise put.error(f"gave up after {round_number + 1} rounds")
        if client._closed:  # closed under us: its transport refuses every request now
            raise put.error("the client was closed")
        retry = retry.increment(retry_after=retry_after)
        client._note_retry()
        retry.sleep(client._sleep)
        round_number += 1
