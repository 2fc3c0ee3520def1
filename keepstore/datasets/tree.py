"""`ReadPath`: a dataset as a read-only tree (lookup, getattr, readdir, read) for FUSE and fsspec."""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import dataclasses
import logging
import stat
import threading
import time
from collections import OrderedDict

from ..cache import BlockCache, MemoryBlockCache
from ..errors import KeepError
from ..locator import Locator, LocatorLike
from ..store import BlockStore
from .manifest import ManifestFile, Segment
from .reader import DatasetReader

__all__ = ["Attr", "ReadPath", "normalize_path"]

log = logging.getLogger(__name__)

DEFAULT_READAHEAD = 2  # blocks fetched ahead of a sequential reader
DEFAULT_MEMORY_BYTES = 320 << 20  # five 64 MiB blocks: the one being read, read-ahead, and a spare
_SEQUENTIAL_SLACK = 1 << 20  # the kernel issues reads slightly out of order; still "sequential"
_MAX_TRACKED_FILES = 1024


def normalize_path(path: str) -> str:
    """``"/a//b/"`` -> ``"a/b"``; the root is ``""``. Rejects ``..`` (a dataset has no parent)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FileNotFoundError(path)
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class Attr:
    """What ``stat`` says about a path in the dataset (read-only: files 0444, directories 0555)."""

    path: str
    is_dir: bool
    size: int
    mtime: float

    @property
    def mode(self) -> int:
        return (stat.S_IFDIR | 0o555) if self.is_dir else (stat.S_IFREG | 0o444)

    @property
    def nlink(self) -> int:
        return 2 if self.is_dir else 1

    def as_stat(self) -> dict[str, float | int]:
        """The ``st_*`` mapping FUSE bindings expect."""
        return {"st_mode": self.mode, "st_nlink": self.nlink, "st_size": self.size,
                "st_mtime": self.mtime, "st_ctime": self.mtime, "st_atime": self.mtime,
                "st_blocks": (self.size + 511) // 512}


class _FileIndex:
    """A manifest file's segments with their start offsets, for bisecting a byte range."""

    def __init__(self, file: ManifestFile) -> None:
        self.file = file
        self.starts: list[int] = []
        offset = 0
        for seg in file.segments:
            self.starts.append(offset)
            offset += seg.length
        self.size = offset

    def segments_for(self, offset: int, length: int) -> list[tuple[int, Segment, int, int]]:
        """``(index, segment, start within segment, bytes)`` covering ``[offset, offset+length)``."""
        end = min(self.size, offset + length)
        out: list[tuple[int, Segment, int, int]] = []
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        pos = offset
        while pos < end and i < len(self.file.segments):
            seg = self.file.segments[i]
            within = pos - self.starts[i]
            take = min(end - pos, seg.length - within)
            if take > 0:
                out.append((i, seg, within, take))
                pos += take
            i += 1
        return out


class ReadPath:
    """A dataset opened read-only as a tree of paths (``""`` is the root, ``"a/b.csv"`` a file).

    Blocks go through *cache* (default: the cache of *dataset* when that is a `DatasetReader`,
    else an in-memory LRU of *memory_bytes* that the reader made here shares), so concurrent
    readers of one block share one download; a store with its own disk cache (a `KeepClient`
    built with ``cache=``) is used through it as well. Reads that continue where the previous
    read of a file ended count as sequential and fetch the next *readahead* blocks in the
    background (*sequential_slack* bytes either way still count: the kernel sends read-ahead
    requests slightly out of order); random reads fetch only what they need. Store errors (`KeepError`) are raised
    from `read`, never swallowed; background read-ahead failures are only logged.
    """

    def __init__(
        self,
        store: BlockStore,
        dataset: LocatorLike | DatasetReader,
        *,
        readahead: int = DEFAULT_READAHEAD,
        cache: BlockCache | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        mtime: float | None = None,
        sequential_slack: int = _SEQUENTIAL_SLACK,
    ) -> None:
        if readahead < 0:
            raise ValueError(f"readahead must be at least 0, got {readahead}")
        self.store = store
        if isinstance(dataset, DatasetReader):
            self.reader = dataset
            self.cache = cache if cache is not None else dataset.cache
        else:
            self.cache = cache if cache is not None else MemoryBlockCache(memory_bytes)
            self.reader = DatasetReader(store, dataset, cache=self.cache)
        self.manifest = self.reader.manifest
        self.locator: Locator = self.reader.locator
        self.readahead = readahead
        self.sequential_slack = sequential_slack
        self.mtime = time.time() if mtime is None else mtime
        self._indexes: dict[str, _FileIndex] = {}
        self._last_end: OrderedDict[str, int] = OrderedDict()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._executor: cf.ThreadPoolExecutor | None = None  # started on first use (after a FUSE fork)
        self._closed = False

    def __repr__(self) -> str:
        return f"ReadPath({self.locator.stripped()}, {len(self.manifest.files)} files)"

    # -- tree --------------------------------------------------------------------------------

    def lookup(self, path: str) -> Attr:
        """The attributes of *path*; `FileNotFoundError` when the dataset has no such path."""
        name = normalize_path(path)
        if self.manifest.is_dir(name):
            return Attr(name, True, 0, self.mtime)
        return Attr(name, False, self._index(name).size, self.mtime)

    getattr = lookup

    def readdir(self, path: str = "") -> list[str]:
        """Names directly inside directory *path*, sorted (no ``.``/``..``)."""
        return self.manifest.listdir(normalize_path(path))

    def _index(self, name: str) -> _FileIndex:
        index = self._indexes.get(name)
        if index is None:
            index = self._indexes[name] = _FileIndex(self.manifest.file(name))
        return index

    # -- data --------------------------------------------------------------------------------

    def read(self, path: str, offset: int, length: int) -> bytes:
        """Up to *length* bytes of file *path* from *offset* (short only at end of file)."""
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must not be negative, got {offset} and {length}")
        name = normalize_path(path)
        index = self._index(name)
        pieces = index.segments_for(offset, length)
        if not pieces:
            return b""
        sequential = self._note_read(name, offset, offset + sum(p[3] for p in pieces))
        if sequential:
            self._prefetch(index, pieces[-1][0] + 1)
        parts = [self.block(seg.locator)[seg.offset + within:seg.offset + within + take]
                 for _i, seg, within, take in pieces]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def block(self, locator: Locator) -> bytes:
        """One block, through the cache (one download however many readers want it)."""
        return self.cache.get_or_fetch(locator, lambda: self.store.get(locator), verified=True)

    def _note_read(self, name: str, start: int, end: int) -> bool:
        """Record where this read of *name* ended; True when it continued the previous one."""
        with self._lock:
            last = self._last_end.pop(name, None)
            self._last_end[name] = end
            while len(self._last_end) > _MAX_TRACKED_FILES:
                self._last_end.popitem(last=False)
        if start == 0:
            return True  # a reader starting at the top usually goes on to read the whole file
        return last is not None and abs(start - last) <= self.sequential_slack

    def _prefetch(self, index: _FileIndex, first: int) -> None:
        if self.readahead == 0 or self._closed:
            return
        segments = index.file.segments[first:first + self.readahead]
        for seg in segments:
            loc = seg.locator.bare()
            key = str(loc)
            if self.cache.get(loc) is not None:  # outside the lock: a disk lookup may be slow
                continue
            with self._lock:
                if key in self._pending or self._closed:
                    continue
                self._pending.add(key)
                # submitted under the lock, so close() cannot shut the executor down in between
                self._executor_locked().submit(self._fetch_ahead, seg.locator, key)

    def _executor_locked(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(max_workers=max(1, self.readahead),
                                                   thread_name_prefix="keep-readahead")
        return self._executor

    def _fetch_ahead(self, locator: Locator, key: str) -> None:
        try:
            self.block(locator)
        except KeepError as exc:  # the reader's own read will retry and report it
            log.debug("read-ahead of %s failed: %s", locator.stripped(), exc)
        finally:
            with self._lock:
                self._pending.discard(key)

    def close(self) -> None:
        """Stop read-ahead (waiting for fetches under way); the store is the caller's to close."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ReadPath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
