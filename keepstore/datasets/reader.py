"""`DatasetReader` and `KeepFile`: a dataset's files read through one shared, bounded block cache."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..cache import BlockCache, MemoryBlockCache
from ..client.stream import Spread
from ..errors import ConfigError, KeepError
from ..locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from ..store import BlockStore
from .extract import DEFAULT_MAX_OPEN, extract
from .manifest import Manifest, ManifestError, ManifestFile

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_FETCH_THREADS", "BlockSource", "DatasetReader", "KeepFile",
           "open_dataset"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 << 20  # four 64 MiB blocks
DEFAULT_FETCH_THREADS = 4  # blocks fetched at once by extract and read-ahead


class BlockSource:
    """Blocks of one store, each fetched once: a bounded, single-flight cache in front of ``store.get``.

    *cache* (default: a `MemoryBlockCache` of *cache_bytes*) is consulted first; concurrent
    askers for one block share one download (`BlockCache.get_or_fetch`). A `KeepClient` with
    its own disk cache still uses it underneath, so a block missing here may come from disk.
    `fetch_many` fetches a list of blocks in order with at most *threads* downloads at once;
    `prefetch` fills the cache in the background through the same pool. Every reader in
    keepstore (`DatasetReader`, `KeepFile`, `ReadPath`, the fsspec layer) fetches through one.
    """

    def __init__(self, store: BlockStore, *, cache: BlockCache | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, threads: int = DEFAULT_FETCH_THREADS) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.store = store
        self.cache = cache if cache is not None else MemoryBlockCache(cache_bytes)
        self.threads = threads
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last read-ahead ends
        self._pending: set[str] = set()
        self._executor: cf.ThreadPoolExecutor | None = None
        self._closed = False
        self._spread = Spread()  # this source's streams start at the least busy replica

    def __repr__(self) -> str:
        return f"BlockSource({self.cache!r}, threads={self.threads})"

    @property
    def closed(self) -> bool:
        """True after `close`: blocks are still fetched, but one at a time and none ahead."""
        return self._closed

    def block(self, locator: Locator) -> bytes:
        """The block *locator* names: from the cache, or fetched (once, however many ask)."""
        return self.cache.get_or_fetch(locator, lambda: self.store.get(locator), verified=True)

    def stream(self, locator: Locator, write: Callable[[int, bytes], object]) -> None:
        """Hand the block's verified bytes to ``write(offset, piece)``: from the cache when it
        holds the block; else, from a store that can (`KeepClient.get_into`) and has no cache
        of its own, streamed as they arrive and not cached (after a failed replica the next
        one is written again from offset 0; the bytes are verified once `stream` returns);
        else fetched through `block` and handed over whole."""
        if locator.size == 0:
            return
        cached = self.cache.get(locator)
        if cached is not None:
            write(0, cached)
            return
        get_into = getattr(self.store, "get_into", None)
        if get_into is None or getattr(self.store, "cache", None) is not None:
            write(0, self.block(locator))  # a disk cache under the store is read (and filled) as usual
            return
        get_into(locator, write, spread=self._spread)

    def executor(self) -> cf.ThreadPoolExecutor:
        """The pool fetching this source's blocks (started on first use, so after a fork)."""
        with self._lock:
            return self._executor_locked()

    def _executor_locked(self) -> cf.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="keep-read")
        return self._executor

    def fetch_many(self, locators: Iterable[Locator]) -> Iterator[tuple[Locator, bytes | KeepError]]:
        """``(locator, block)`` for each of *locators*, in order, with up to `threads` fetches in
        flight; a block that could not be had comes as its `KeepError` (the others still come).

        Each block goes through `block` (cache, single flight), so a locator listed twice, or
        wanted by another reader at the same time, is downloaded once. After `close`, blocks
        are fetched one at a time in the calling thread.
        """
        wanted = list(locators)
        if len(wanted) == 1:  # most reads (a FUSE read, a small range) want one block: no pool hop
            yield wanted[0], _fetched(self.block, wanted[0])
            return
        queue = iter(wanted)
        window: collections.deque[tuple[Locator, cf.Future[bytes]]] = collections.deque()

        def submit() -> None:
            loc = next(queue, None)
            if loc is None:
                return
            with self._lock:
                executor = None if self._closed else self._executor_locked()
                future = executor.submit(self.block, loc) if executor is not None else None
            if future is None:
                future = cf.Future()
                _settle(future, self.block, loc)
            window.append((loc, future))

        try:
            for _ in range(self.threads):
                submit()
            while window:
                loc, future = window.popleft()
                try:
                    data: bytes | KeepError = future.result()
                except KeepError as exc:
                    data = exc
                except cf.CancelledError:  # close() cancelled it: fetch it here instead
                    data = _fetched(self.block, loc)
                submit()
                yield loc, data
        finally:
            for _loc, future in window:
                future.cancel()

    def prefetch(self, locators: Iterable[Locator]) -> None:
        """Start fetching blocks not cached nor already on their way; failures are only logged
        (the reader's own read fetches again and reports)."""
        for loc in locators:
            key = str(loc.bare())
            if self._closed or key in self._pending or self.cache.get(loc) is not None:
                continue  # the cache lookup is outside the lock: a disk lookup may be slow
            with self._lock:
                if key in self._pending or self._closed:
                    continue
                self._pending.add(key)
                # submitted under the lock, so close() cannot shut the pool down in between
                self._executor_locked().submit(self._fetch_ahead, loc, key)

    def _fetch_ahead(self, loc: Locator, key: str) -> None:
        try:
            self.block(loc)
        except KeepError as exc:
            log.debug("read-ahead of %s failed: %s", loc.stripped(), exc)
        finally:
            with self._lock:
                self._pending.discard(key)
                if not self._pending:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no read-ahead is under way (True), or *timeout* seconds pass (False)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        """Stop read-ahead, waiting for fetches under way; the store and cache stay open."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._pending.clear()  # cancelled read-aheads never ran their own cleanup
            self._idle.notify_all()


def _fetched(fetch: Callable[[Locator], bytes], loc: Locator) -> bytes | KeepError:
    try:
        return fetch(loc)
    except KeepError as exc:
        return exc


def _settle(future: "cf.Future[bytes]", fetch: Callable[[Locator], bytes], loc: Locator) -> None:
    """Run *fetch* here and put its block (or `KeepError`) into *future*."""
    try:
        future.set_result(fetch(loc))
    except KeepError as exc:
        future.set_exception(exc)


class DatasetReader:
    """A dataset opened by its locator: list files, open them, or write the tree out.

    Every read of this reader (`open`, `read_bytes`, `extract`, and a `ReadPath` built on it)
    goes through one `BlockSource`, so a block holding many files is fetched once. Pass
    ``cache=`` (any `BlockCache`, e.g. one shared by several readers) or size the default
    memory LRU with ``cache_bytes=``; ``threads`` bounds blocks fetched at once; or pass
    ``blocks=`` (a `BlockSource`) to share another reader's, pool and all.

    Args:
        store: The store the blocks are read from.
        locator: The dataset's locator (its manifest block).
        readahead: Blocks fetched ahead of a sequential reader of one file.
        cache: A `BlockCache` to read through (e.g. one shared by several readers).
        cache_bytes: The size of the default memory LRU, when *cache* is not given.
        threads: Blocks fetched at once.
        blocks: A `BlockSource` to read through (shared with other readers).
    """

    def __init__(self, store: BlockStore, locator: LocatorLike, *, readahead: int = 2,
                 cache: BlockCache | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 threads: int = DEFAULT_FETCH_THREADS, blocks: BlockSource | None = None) -> None:
        self.store = store
        self.locator = Locator.parse(locator)
        self.readahead = readahead
        self.blocks = blocks if blocks is not None else BlockSource(store, cache=cache, cache_bytes=cache_bytes,
                                                                    threads=threads)
        self.owns_blocks = blocks is None  # close() closes only a BlockSource made here
        raw = self.blocks.block(self.locator)  # cached: `keep cat` of several files reads it once
        try:
            self.manifest = Manifest.parse(raw)
        except ManifestError as exc:
            raise ManifestError(f"block {self.locator} is not a dataset manifest: {exc}") from None

    @classmethod
    def from_manifest(cls, store: BlockStore, manifest: Manifest | str, *, readahead: int = 2,
                      cache: BlockCache | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                      threads: int = DEFAULT_FETCH_THREADS, blocks: BlockSource | None = None) -> "DatasetReader":
        """A reader over *manifest* (text or parsed) without fetching a manifest block; *blocks*
        shares another reader's `BlockSource`."""
        reader = cls.__new__(cls)
        reader.store = store
        reader.manifest = manifest if isinstance(manifest, Manifest) else Manifest.parse(manifest)
        reader.locator = Locator.for_data(str(reader.manifest).encode("utf-8"))
        reader.readahead = readahead
        reader.blocks = blocks if blocks is not None else BlockSource(store, cache=cache, cache_bytes=cache_bytes,
                                                                      threads=threads)
        reader.owns_blocks = blocks is None
        return reader

    @property
    def cache(self) -> BlockCache:
        """The block cache every read of this reader goes through."""
        return self.blocks.cache

    def subtree(self, path: str) -> "DatasetReader":
        """The directory *path* as a dataset of its own (paths relative to it), sharing this cache."""
        path = path.strip("/")
        if not path:
            return self
        if not self.manifest.is_dir(path):
            raise NotADirectoryError(path)
        prefix = path + "/"
        files: dict[str, ManifestFile] = {}
        for top, _dirs, names in self.manifest.walk(path):
            for name in names:
                full = f"{top}/{name}"
                files[full[len(prefix):]] = ManifestFile(full[len(prefix):], self.manifest.file(full).segments)
        dirs = [d[len(prefix):] for d in self.manifest.directories if d.startswith(prefix)]
        return DatasetReader.from_manifest(self.store, Manifest(files, dirs), readahead=self.readahead,
                                           blocks=self.blocks)

    def listdir(self, path: str = "") -> list[str]:
        return self.manifest.listdir(path)

    def files(self) -> list[ManifestFile]:
        return list(self.manifest.walk_files())

    def stat(self, path: str) -> ManifestFile:
        return self.manifest.file(path)

    def open(self, path: str, mode: str = "rb") -> "KeepFile":
        """A seekable, read-only binary file over the dataset file at *path*."""
        if mode not in ("r", "rb"):
            raise ValueError(f"datasets are read-only and binary; mode {mode!r} is not supported")
        return KeepFile(self.store, self.manifest.file(path), readahead=self.readahead, blocks=self.blocks)

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    def extract(self, dest: str | os.PathLike[str], *, progress: Callable[[int], Any] | None = None,
                max_open: int | None = None) -> int:
        """Write every file and directory under *dest*; return the bytes written.

        Blocks are fetched in manifest order, ``threads`` at once, each once, and streamed:
        every file (and part of a file) a block holds is written as its bytes arrive (see
        `BlockSource.stream`). Each file goes to a temp name and is renamed when every block
        it has bytes in has matched its md5 and a sync covering it returned; the renames are
        synced too before this returns. On failure no temp file is left behind, only finished
        files. Each block's writer holds at most *max_open* part-written temp files open.
        """
        return extract(self.manifest, self.blocks, dest, progress=progress,
                       max_open=DEFAULT_MAX_OPEN if max_open is None else max_open)

    def close(self) -> None:
        """Stop read-ahead; the store (and a cache or `BlockSource` passed in) are the caller's to close."""
        if self.owns_blocks:
            self.blocks.close()

    def __enter__(self) -> "DatasetReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(store: BlockStore, locator: LocatorLike, **options: Any) -> DatasetReader:
    """Open the dataset whose manifest block is *locator* (*options* as for `DatasetReader`)."""
    return DatasetReader(store, locator, **options)


class KeepFile(io.RawIOBase):
    """A read-only, seekable file over a manifest file's block segments.

    Reads across block boundaries through *blocks* (a `BlockSource`; by default a private one
    holding one block), and for sequential readers fetches the file's next *readahead* blocks
    in the background.

    Args:
        store: The store the blocks are read from.
        file: The manifest file to read.
        readahead: Blocks fetched ahead of a sequential reader.
        blocks: The `BlockSource` to read through (default: a private one holding one block).
    """

    def __init__(self, store: BlockStore, file: ManifestFile, *, readahead: int = 2,
                 blocks: BlockSource | None = None) -> None:
        super().__init__()
        self.store = store
        self.file = file
        self.name = file.path
        self._size = file.size
        len(file.segments)  # loads a parsed file's ranges: FileSegments.overlapping assumes they are loaded
        self._pos = 0
        self._blocks = blocks if blocks is not None else BlockSource(
            store, cache_bytes=(max(readahead, 0) + 1) * MAX_BLOCK_SIZE, threads=max(readahead, 1))
        self._own_blocks = blocks is None
        self._readahead = readahead
        self._prefetched = -1  # highest segment index read-ahead was asked for

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def close(self) -> None:
        if self._own_blocks and not self.closed:
            self._blocks.close()
            self._blocks.cache.close()
        super().close()

    @property
    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]  # io.IOBase's own check: ValueError
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _prefetch_after(self, index: int) -> None:
        if self._readahead <= 0:
            return
        segments = self.file.segments
        last = min(index + self._readahead, len(segments) - 1)
        if last > self._prefetched:
            first = max(index + 1, self._prefetched + 1)
            self._prefetched = last
            self._blocks.prefetch(segments[i].locator for i in range(first, last + 1))

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        if want <= 0:
            return 0
        done = 0
        pieces = self.file.segments_in(self._pos, want)
        self._prefetch_after(pieces[-1][0])
        fetched = self._blocks.fetch_many(seg.locator for _i, _at, seg in pieces)
        for (_i, _at, seg), (_loc, block) in zip(pieces, fetched, strict=True):
            if isinstance(block, KeepError):
                raise block
            view[done:done + seg.length] = block[seg.offset:seg.offset + seg.length]
            done += seg.length
        self._pos += done
        return done

    def readall(self) -> bytes:
        out = bytearray(max(0, self._size - self._pos))
        n = self.readinto(out)
        return bytes(out[:n])

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(0, self._size - self._pos)))
        n = self.readinto(out)
        return bytes(out[:n])
