"""Block caches: in memory, in a shared directory, and the two combined; every hit verified."""

from __future__ import annotations

from .base import BlockCache, CacheStats, cache_key
from .disk import DEFAULT_DISK_BYTES, DiskBlockCache
from .foreign import BlockCacheLike, ForeignCache, as_block_cache
from .memory import DEFAULT_MEMORY_BYTES, MemoryBlockCache
from .tiered import TieredBlockCache

__all__ = [
    "DEFAULT_DISK_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "BlockCache",
    "BlockCacheLike",
    "CacheStats",
    "DiskBlockCache",
    "ForeignCache",
    "MemoryBlockCache",
    "TieredBlockCache",
    "as_block_cache",
    "cache_key",
]
