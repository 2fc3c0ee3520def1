"""`MemoryBlockCache`: a thread-safe in-process LRU of blocks, bounded by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..locator import Locator
from .base import BlockCache, check_max_bytes

__all__ = ["DEFAULT_MEMORY_BYTES", "MemoryBlockCache"]

DEFAULT_MEMORY_BYTES = 256 * 1024 * 1024


class MemoryBlockCache(BlockCache):
    """Least-recently-used blocks held as immutable ``bytes``, at most *max_bytes* in total.

    Entries are verified when they go in and cannot change afterwards, so hits are not
    re-checked. A block larger than *max_bytes* is not cached.

    Args:
        max_bytes: Bound on the bytes held (default 256 MiB); least recently used go first.

    Raises:
        ConfigError: *max_bytes* is not a non-negative integer.
    """

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        super().__init__()
        self.max_bytes = check_max_bytes(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __repr__(self) -> str:
        return f"MemoryBlockCache(max_bytes={self.max_bytes})"

    def _get(self, locator: Locator) -> bytes | None:
        key = str(locator)
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def _put(self, locator: Locator, data: memoryview) -> None:
        if data.nbytes > self.max_bytes:
            return
        # bytes(view) copies only when the caller handed us something mutable.
        block = data.obj if isinstance(data.obj, bytes) and len(data.obj) == data.nbytes else bytes(data)
        key = str(locator)
        evicted = 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = block
            self._bytes += len(block)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
                evicted += 1
        self._counters.add(bytes_written=len(block), evictions=evicted)

    def _discard(self, locator: Locator) -> None:
        with self._lock:
            old = self._entries.pop(str(locator), None)
            if old is not None:
                self._bytes -= len(old)

    def _current_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
