"""The `BlockCache` interface: verified gets, puts, statistics and single-flight fetching."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import TypeVar

from ..errors import ConfigError, LocatorError, ReadError
from ..locator import Locator, LocatorLike
from ..store import Data, as_view

__all__ = ["BlockCache", "CacheStats", "cache_key", "check_block"]

_C = TypeVar("_C", bound="BlockCache")


def cache_key(locator: LocatorLike) -> str:
    """The cache key of *locator*: bare ``md5+size``, so signatures and hints never split entries."""
    loc = _parse(locator)
    return f"{loc.md5}+{loc.size}"


def check_block(locator: Locator, data: memoryview) -> bool:
    """True when *data* has the locator's size and md5."""
    return data.nbytes == locator.size and hashlib.md5(data, usedforsecurity=False).hexdigest() == locator.md5


def _parse(locator: LocatorLike) -> Locator:
    if isinstance(locator, Locator):
        return locator
    if isinstance(locator, str):
        return Locator.parse(locator)
    raise LocatorError(f"expected a Locator or locator text, got {type(locator).__name__}")


def check_max_bytes(max_bytes: int) -> int:
    """Return *max_bytes* when it is a usable cache bound; raise `ConfigError` when it is not."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"cache max_bytes must be a non-negative integer, got {max_bytes!r}")
    return max_bytes


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """Counters of one cache object in this process (other processes sharing a directory keep their own).

    Args:
        hits: Lookups served from the cache.
        misses: Lookups the cache could not serve (corrupt entries included).
        bytes_read: Bytes served from the cache.
        bytes_written: Bytes stored into it.
        evictions: Entries dropped to respect ``max_bytes``.
        corrupt: Entries that failed verification (dropped, and counted as misses).
        errors: Cache failures survived.
        current_bytes: What the cache holds now (for a directory, as diskcache measures it).
        joined: Calls of `get_or_fetch` that waited for another caller's fetch of the same block
            in this process instead of fetching it themselves (downloads saved, at most).
    """

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evictions: int = 0
    corrupt: int = 0
    errors: int = 0
    current_bytes: int = 0
    joined: int = 0


class _Counters:
    """Thread-safe counters behind `CacheStats`."""

    _FIELDS = ("hits", "misses", "bytes_read", "bytes_written", "evictions", "corrupt", "errors", "joined")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self._FIELDS, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def snapshot(self, current_bytes: int) -> CacheStats:
        with self._lock:
            return CacheStats(**self._values, current_bytes=current_bytes)


class BlockCache(abc.ABC):
    """A bounded cache of blocks keyed by bare locator; every hit it returns is verified.

    Subclasses implement `_get`, `_put`, `_discard` and `_current_bytes`; this class does
    locator parsing, verification of what goes in, statistics, and single-flight fetching.
    A cache never raises for its own failures: it logs once and behaves as an empty cache.
    """

    def __init__(self) -> None:
        self._counters = _Counters()
        self._flights: dict[str, tuple[Future[bytes], tuple[str, object]]] = {}  # key -> (flight, asker)
        self._flights_lock = threading.Lock()
        self._leading = threading.local()  # keys whose fetch this thread leads

    # -- what implementations provide -------------------------------------------------------

    @abc.abstractmethod
    def _get(self, locator: Locator) -> bytes | None:
        """Return the verified block, or None (missing, unverifiable, or the cache failed)."""

    @abc.abstractmethod
    def _put(self, locator: Locator, data: memoryview) -> None:
        """Store *data*, already checked against *locator*; swallow (and count) cache failures."""

    @abc.abstractmethod
    def _discard(self, locator: Locator) -> None:
        """Drop the entry if present."""

    def _current_bytes(self) -> int:
        return 0

    def _get_view(self, locator: Locator) -> memoryview | None:
        """A verified hit as a read-only view (default: of what `_get` returns); caches that
        can hand out their storage without a copy override it."""
        data = self._get(locator)
        return None if data is None else memoryview(data)

    def fetch_lock(self, key: str) -> contextlib.AbstractContextManager[object]:
        """Held while fetching *key* (a `cache_key`), so other processes sharing the cache can
        wait for us; a cache of one process needs none (this default)."""
        return contextlib.nullcontext()

    # -- the public interface ---------------------------------------------------------------

    def get(self, locator: LocatorLike) -> bytes | None:
        """The cached block, verified against *locator*, or None."""
        loc = _parse(locator).bare()
        data = self._get(loc)
        if data is None:
            self._counters.add(misses=1)
        else:
            self._counters.add(hits=1, bytes_read=len(data))
        return data

    def get_view(self, locator: LocatorLike) -> memoryview | None:
        """The cached block as a read-only `memoryview`, verified against *locator*, or None.

        Verified as `get` verifies; a `DiskBlockCache` maps the block file instead of copying
        it (see ``docs/cache.md``), other caches return a view of the `bytes` `get` would.
        """
        loc = _parse(locator).bare()
        view = self._get_view(loc)
        if view is None:
            self._counters.add(misses=1)
        else:
            self._counters.add(hits=1, bytes_read=view.nbytes)
        return view

    def put(self, locator: LocatorLike, data: Data, *, verified: bool = False) -> None:
        """Cache *data* as the block *locator* names.

        The data is checked against the locator's size and md5 first (`LocatorError` when it
        does not match); pass ``verified=True`` only when the caller has just done that check.
        """
        loc = _parse(locator).bare()
        view = as_view(data)
        if view.nbytes != loc.size or (not verified and not check_block(loc, view)):
            raise LocatorError(f"refusing to cache {view.nbytes} bytes that do not match block {loc}")
        self._put(loc, view)

    def discard(self, locator: LocatorLike) -> None:
        """Drop the block from the cache if it is there."""
        self._discard(_parse(locator).bare())

    def stats(self) -> CacheStats:
        """A snapshot of this object's counters."""
        return self._counters.snapshot(self._current_bytes())

    def get_or_fetch(self, locator: LocatorLike, fetch: Callable[[], bytes], *, verified: bool = False,
                     origin: object = None) -> bytes:
        """The cached block, or else ``fetch()``'s result, cached on the way out.

        Concurrent callers for one block in this process share one ``fetch()`` call. When it
        fails, a waiter that asked with other locator text (another signature) or another
        *origin* (another client sharing this cache) makes its own ``fetch()``; the others get
        the leader's exception. A cache shared between
        processes also makes other processes wait, up to a timeout, for one fetch. ``fetch``'s
        result is checked against the locator (`ReadError` on mismatch) unless ``verified=True``
        says ``fetch`` already checks (as `KeepClient`'s does).
        """
        full = _parse(locator)
        data = self.get(full)
        return data if data is not None else self._fetch_shared(full, fetch, verified, origin)

    def get_or_fetch_view(self, locator: LocatorLike, fetch: Callable[[], bytes], *, verified: bool = False,
                          origin: object = None) -> memoryview:
        """Like `get_or_fetch`, as a read-only view: a hit from `get_view` (no copy where the
        cache can avoid one), a miss a view of what ``fetch()`` returned."""
        full = _parse(locator)
        view = self.get_view(full)
        return view if view is not None else memoryview(self._fetch_shared(full, fetch, verified, origin))

    def _fetch_shared(self, full: Locator, fetch: Callable[[], bytes], verified: bool, origin: object) -> bytes:
        """The single-flight miss path of `get_or_fetch`: one ``fetch()`` for concurrent callers."""
        loc = full.bare()
        key = f"{loc.md5}+{loc.size}"
        asker = (str(full), origin)
        mine: set[str] = self._leading.__dict__.setdefault("keys", set())
        if key in mine:
            # This thread leads this block's fetch further up its stack (a fetch that reads
            # through the same cache): waiting on that flight would wait on ourselves.
            return self._checked(loc, fetch(), verified)
        with self._flights_lock:
            found = self._flights.get(key)
            leader = found is None
            if found is None:
                found = self._flights[key] = (Future(), asker)
        flight, leaders_asker = found
        if not leader:
            self._counters.add(joined=1)
            try:
                return flight.result()
            except Exception:
                if leaders_asker == asker:
                    raise  # the same request would fail the same way
                # The leader asked with another locator (an unsigned or expired signature) or
                # for another client: its failure need not be ours.
                return self._fetch_once(loc, key, fetch, verified)
        mine.add(key)
        try:
            data = self._fetch_once(loc, key, fetch, verified)
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(data)
            return data
        finally:
            mine.discard(key)
            with self._flights_lock:
                del self._flights[key]

    def _fetch_once(self, loc: Locator, key: str, fetch: Callable[[], bytes], verified: bool) -> bytes:
        with self.fetch_lock(key):
            # Another process may have stored the block while we waited for its lock.
            data = self._get(loc)
            if data is not None:
                self._counters.add(hits=1, bytes_read=len(data))
                return data
            data = self._checked(loc, fetch(), verified)
            self._put(loc, memoryview(data))
            return data

    @staticmethod
    def _checked(loc: Locator, data: bytes, verified: bool) -> bytes:
        """*data* as bytes, after checking it is the block (size always, md5 unless *verified*)."""
        view = as_view(data)
        if view.nbytes != loc.size or (not verified and not check_block(loc, view)):
            raise ReadError(f"fetched data for block {loc} does not match its locator", locator=str(loc))
        return data if isinstance(data, bytes) else bytes(view)

    def close(self) -> None:  # noqa: B027 - optional hook: only caches holding resources override it
        """Release resources; a closed cache behaves as an empty one."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

