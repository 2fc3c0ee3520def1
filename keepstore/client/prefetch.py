"""Prefetch: blocks fetched into the cache in the background, as a hint (bounded, never raising)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import BlockNotFound
from ..locator import EMPTY_BLOCK, Locator

__all__ = ["MAX_PREFETCH_PENDING", "Prefetcher"]

log = logging.getLogger("keepstore.client")

MAX_PREFETCH_PENDING = 256  # blocks waiting for prefetch at once; more are dropped (a hint, not a queue)


class Prefetcher:
    """Runs *get* for prefetched blocks on *threads* threads of its own (started on first use).

    A block already queued is skipped, and so are blocks beyond `MAX_PREFETCH_PENDING` waiting
    ones; failures are logged, never raised. Safe to call from many threads.
    """

    def __init__(self, get: Callable[[Locator], Any], threads: int) -> None:
        self._get = get
        self._threads = threads
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"Prefetcher(threads={self._threads}, pending={len(self._pending)})"

    def queue(self, locators: Iterable[Locator]) -> list[Future[None]]:
        """Queue *locators*' blocks; one future per block queued (it completes either way)."""
        queued: list[Future[None]] = []
        for loc in locators:
            key = str(loc.bare())
            with self._lock:
                if self._closed or key in self._pending or key == EMPTY_BLOCK:
                    continue
                if len(self._pending) >= MAX_PREFETCH_PENDING:
                    log.debug("prefetch queue full; not prefetching %s", key)
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="keepstore-prefetch")
                self._pending.add(key)
                queued.append(self._pool.submit(self._one, loc, key))
        return queued

    def _one(self, loc: Locator, key: str) -> None:
        try:
            self._get(loc)
        except BlockNotFound as exc:
            log.debug("prefetch of %s: %s", key, exc)
        except Exception:  # nobody waits on a prefetch: say what went wrong, don't lose it
            log.warning("prefetch of %s failed", key, exc_info=True)
        finally:
            with self._lock:
                self._pending.discard(key)

    def close(self, wait: bool) -> None:
        """Take no more; drop what waits; with *wait*, let the running ones end first."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
