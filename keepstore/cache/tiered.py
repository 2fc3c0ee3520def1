"""`TieredBlockCache`: a memory cache in front of a disk cache, promoting disk hits."""

from __future__ import annotations

import contextlib

from ..locator import Locator
from .base import BlockCache

__all__ = ["TieredBlockCache"]


class TieredBlockCache(BlockCache):
    """Looks in *memory* first, then *disk*; a disk hit is copied into *memory* (`get_view`
    still returns the disk tier's view of it).

    Puts go to both tiers. `stats()` counts this object's own hits and misses; each tier
    keeps its own counters too (``.memory.stats()``, ``.disk.stats()``). Closing closes both.

    Args:
        memory: The fast tier, asked first (typically a `MemoryBlockCache`).
        disk: The shared tier (typically a `DiskBlockCache`); its `fetch_lock` is the one used.
    """

    def __init__(self, memory: BlockCache, disk: BlockCache) -> None:
        super().__init__()
        self.memory = memory
        self.disk = disk

    def __repr__(self) -> str:
        return f"TieredBlockCache({self.memory!r}, {self.disk!r})"

    def _get(self, locator: Locator) -> bytes | None:
        data = self.memory.get(locator)
        if data is not None:
            return data
        data = self.disk.get(locator)
        if data is not None:
            self.memory.put(locator, data, verified=True)  # the disk tier has just verified it
        return data

    def _get_view(self, locator: Locator) -> memoryview | None:
        view = self.memory.get_view(locator)
        if view is not None:
            return view
        view = self.disk.get_view(locator)  # the disk tier's mapping, not the copy promoted
        if view is not None:
            self.memory.put(locator, view, verified=True)
        return view

    def _put(self, locator: Locator, data: memoryview) -> None:
        self.memory.put(locator, data, verified=True)
        self.disk.put(locator, data, verified=True)
        self._counters.add(bytes_written=data.nbytes)

    def _discard(self, locator: Locator) -> None:
        self.memory.discard(locator)
        self.disk.discard(locator)

    def _current_bytes(self) -> int:
        return self.memory.stats().current_bytes + self.disk.stats().current_bytes

    def fetch_lock(self, key: str) -> contextlib.AbstractContextManager[object]:
        return self.disk.fetch_lock(key)  # only the shared tier needs cross-process exclusion

    def close(self) -> None:
        try:
            self.memory.close()
        finally:
            self.disk.close()
