"""`StoredCheck`: is a block already stored with enough replicas? Parallel HEADs in probe order, before sending it."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import KeepError, ReadError
from ..locator import Locator
from ..services import Service, probe_order
from ..store import BlockStore, PutResult

__all__ = ["DEFAULT_EXPIRY_MARGIN", "StoredCheck"]

# A signed locator expiring sooner than this is not trusted to skip a block: a dataset made with
# it would soon be unreadable where signatures are required. The block is sent again instead.
DEFAULT_EXPIRY_MARGIN = dt.timedelta(days=1)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoredCheck:
    """Confirms blocks already stored, so that a writer need not send them.

    For a `KeepClient`-like store (one with ``services`` and ``head_on``), HEADs go to the
    services in the block's probe order, as many at once as replicas are still wanted, and
    stop as soon as *copies* replicas are confirmed (or too few services are left to confirm
    them). Each service that answers 2xx counts as one replica. Other stores are asked
    ``exists`` and count one replica, as their ``put_block`` does.

    A block is looked up with the best locator known for it: a signed one given in *signed*
    (e.g. from a resume state) while it is valid for longer than *margin*, else the bare
    locator. Once a service refuses an unsigned HEAD (400/401: it requires signatures), bare
    locators are not tried again: only still validly signed ones can skip a block (any other
    unexpected status to a bare HEAD counts as such a refusal). With
    storage classes wanted nothing is skipped (a HEAD does not confirm classes).

    Args:
        store: The store asked.
        copies: Replicas that must be confirmed (default: the store's).
        storage_classes: Storage classes wanted: with any, nothing is skipped.
        signed: Signed locators known for blocks (by md5).
        margin: A signature must stay valid at least this long to be used.
        threads: HEADs in flight at most.
        now: The clock signature expiries are compared with.
    """

    def __init__(self, store: BlockStore, *, copies: int | None = None,
                 storage_classes: Iterable[str] | None = None, signed: Mapping[str, Locator] | None = None,
                 margin: dt.timedelta = DEFAULT_EXPIRY_MARGIN, threads: int = 8,
                 now: Callable[[], dt.datetime] = _utcnow) -> None:
        self.store = store
        wanted = copies if copies is not None else getattr(store, "copies", 1)
        self.copies = max(int(wanted), 1)
        self.enabled = not list(storage_classes or ())
        self.margin = margin
        self.now = now
        self.refuses_unsigned = False
        self._signed: dict[str, Locator] = {}
        self._lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="keep-stored")
        for loc in (signed or {}).values():
            self.learn(loc)

    @property
    def wanted(self) -> int:
        """Replicas a block needs to count as stored: ``copies`` on Keep services; 1 on another
        store (a `LocalStore` holds one copy, and its ``put_block`` reports one)."""
        return self.copies if self._per_service else 1

    @property
    def _per_service(self) -> bool:
        return getattr(self.store, "services", None) is not None and hasattr(self.store, "head_on")

    def learn(self, loc: Locator) -> None:
        """Remember a signed locator for its block (ignored when unsigned)."""
        if loc.signature:
            with self._lock:
                self._signed[loc.md5] = loc

    def usable(self, loc: Locator) -> bool:
        """True for an unsigned locator, or a signed one valid for longer than the margin."""
        expiry = loc.expires_at
        return expiry is None or expiry > self.now() + self.margin

    def best(self, loc: Locator) -> Locator | None:
        """The locator to ask with: a usable signed one, else the bare one (None when bare ones
        are refused)."""
        if loc.signature and self.usable(loc):
            return loc
        with self._lock:
            known = self._signed.get(loc.md5)
        if known is not None and self.usable(known):
            return known
        return None if self.refuses_unsigned else loc.bare()

    def confirm(self, loc: Locator) -> PutResult | None:
        """A `PutResult` (locator asked with, replicas, services) when at least ``copies``
        replicas are confirmed; None when they are not (the block must be sent)."""
        if not self.enabled:
            return None
        ask = self.best(loc)
        if ask is None:
            return None
        services = getattr(self.store, "services", None)
        if services is None or not hasattr(self.store, "head_on"):
            try:
                there = self.store.exists(ask)
            except KeepError:  # cannot tell: sending is the honest answer
                return None
            return PutResult(ask, 1, (str(self.store),)) if there else None  # what its put_block reports
        found = self._count_on(ask, list(services), give_up=True)
        return found if found.replicas >= self.copies else None

    def count(self, loc: Locator) -> PutResult:
        """The replicas confirmed for *loc* (up to ``copies``; possibly 0), asking with `best`,
        whether or not storage classes are wanted: how a referenced block is reported."""
        ask = self.best(loc) or loc
        services = getattr(self.store, "services", None)
        if services is None or not hasattr(self.store, "head_on"):
            try:
                return PutResult(ask, 1, (str(self.store),)) if self.store.exists(ask) else PutResult(ask, 0)
            except KeepError:  # cannot tell: not confirmed
                return PutResult(ask, 0)
        return self._count_on(ask, list(services), give_up=False)

    def _count_on(self, loc: Locator, services: list[Service], *, give_up: bool) -> PutResult:
        queue = probe_order(loc.md5, services)
        confirmed: list[str] = []
        while queue and len(confirmed) < self.copies:
            need = self.copies - len(confirmed)
            if give_up and len(queue) < need:
                break  # too few left to confirm the replicas wanted
            batch, queue = queue[:need], queue[need:]
            futures = [self._pool.submit(self._head, s, loc) for s in batch]
            for service, future in zip(batch, futures, strict=True):
                if future.result():
                    confirmed.append(service.root)
        return PutResult(loc, len(confirmed), tuple(confirmed))

    def _head(self, service: Service, loc: Locator) -> bool:
        head: Any = self.store.head_on  # type: ignore[attr-defined]  # checked in confirm/count
        try:
            return bool(head(service, loc))
        except ReadError:  # a status other than 2xx/403/404/410: for a bare locator, "sign it" (400/401)
            if not loc.signature:
                self.refuses_unsigned = True
            return False
        except KeepError:  # the service cannot be reached (TransportError): not confirmed there
            return False

    def confirm_many(self, locators: Iterable[Locator]) -> list[PutResult | None]:
        """`confirm` for each locator, several blocks at once."""
        return self._many(self.confirm, list(locators))

    def count_many(self, locators: Iterable[Locator]) -> list[PutResult]:
        """`count` for each locator, several blocks at once."""
        return self._many(self.count, list(locators))

    @staticmethod
    def _many(fn: Callable[[Locator], Any], locs: list[Locator]) -> list[Any]:
        if not locs:
            return []
        with cf.ThreadPoolExecutor(max_workers=min(8, len(locs)), thread_name_prefix="keep-confirm") as pool:
            return list(pool.map(fn, locs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

