"""`ForeignCache`: any object with ``get``/``put`` (a third-party cache) behind the `BlockCache` interface."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ..locator import Locator
from .base import BlockCache, check_block

__all__ = ["BlockCacheLike", "ForeignCache", "as_block_cache"]

log = logging.getLogger(__name__)


class BlockCacheLike(Protocol):
    """What `KeepClient(cache=...)` needs from a block cache that is not a keepstore `BlockCache`."""

    def get(self, locator: Locator) -> bytes | None: ...

    def put(self, locator: Locator, data: bytes) -> None: ...


class ForeignCache(BlockCache):
    """Wraps a cache of unknown make so the client treats it as a keepstore `BlockCache`.

    Its hits are checked by size and md5 like a network read (a wrong one is logged and read
    from the network instead). Its failures never fail a read or a write the network served:
    the first is logged as a warning, later ones at debug level. Concurrent readers of one
    block share one download, as with keepstore's own caches.

    Args:
        cache: The object to wrap: ``get(locator) -> bytes | None`` and ``put(locator, data)``.
    """

    def __init__(self, cache: BlockCacheLike) -> None:
        super().__init__()
        self.cache = cache
        self._lock = threading.Lock()
        self._warned = False

    def __repr__(self) -> str:
        return f"ForeignCache({self.cache!r})"

    def _get(self, locator: Locator) -> bytes | None:
        try:
            data = self.cache.get(locator)
        except Exception as exc:  # a foreign cache's exception types cannot be known: see _failed
            self._failed(exc, "reading")
            return None
        if data is None:
            return None
        if not check_block(locator, memoryview(data)):
            log.warning("block cache %r returned wrong bytes for %s; reading from the network", self.cache, locator)
            self._counters.add(corrupt=1)
            return None
        return bytes(data)

    def _put(self, locator: Locator, data: memoryview) -> None:
        block = data.obj if isinstance(data.obj, bytes) and len(data.obj) == data.nbytes else bytes(data)
        try:
            self.cache.put(locator, block)
        except Exception as exc:  # as in _get
            self._failed(exc, "storing")
            return
        self._counters.add(bytes_written=data.nbytes)

    def _discard(self, locator: Locator) -> None:
        """Nothing to do: the protocol has no delete, and a bad entry is never returned anyway."""

    def _failed(self, exc: Exception, action: str) -> None:
        # A cache is an optimisation: its failure is logged, counted and survived, never raised.
        self._counters.add(errors=1)
        with self._lock:
            first, self._warned = not self._warned, True
        (log.warning if first else log.debug)("block cache %r failed while %s (%s: %s); carrying on without it",
                                              self.cache, action, type(exc).__name__, exc)

    def close(self) -> None:
        """Close the wrapped cache when it has a ``close()``."""
        close = getattr(self.cache, "close", None)
        if callable(close):
            close()


def as_block_cache(cache: BlockCache | BlockCacheLike) -> BlockCache:
    """*cache* itself when it is a keepstore `BlockCache`, else wrapped once in a `ForeignCache`."""
    return cache if isinstance(cache, BlockCache) else ForeignCache(cache)
