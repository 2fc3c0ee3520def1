"""Block caches: in memory, in a shared directory, and the two combined; every hit verified."""

from __future__ import annotations

from .base import BlockCache, CacheStats, cache_key
from .disk import DEFAULT_DISK_BYTES, DiskBlockCache
from .memory import DEFAULT_MEMORY_BYTES, MemoryBlockCache
from .tiered import TieredBlockCache

__all__ = [
    "DEFAULT_DISK_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "BlockCache",
    "CacheStats",
    "DiskBlockCache",
    "MemoryBlockCache",
    "TieredBlockCache",
    "cache_key",
]
