"""`ReadPath`: a dataset as a read-only tree (lookup, getattr, readdir, read) for FUSE and fsspec."""

from __future__ import annotations

import dataclasses
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

from ..cache import BlockCache, MemoryBlockCache
from ..errors import ConfigError, KeepError
from ..locator import Locator, LocatorLike
from ..store import BlockStore
from .manifest import ManifestFile, Segment
from .reader import BlockSource, DatasetReader

__all__ = ["Attr", "ReadPath", "normalize_path"]

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
    """What ``stat`` says about a path in the dataset (read-only: files 0444, directories 0555).

    Args:
        path: The path in the dataset (``""`` is the root).
        is_dir: True for a directory.
        size: The file's size in bytes (0 for a directory).
        mtime: The modification time shown, in seconds since the epoch.
    """

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


class ReadPath:
    """A dataset opened read-only as a tree of paths (``""`` is the root, ``"a/b.csv"`` a file).

    Blocks come through one `BlockSource` (the reader's own when *dataset* is a `DatasetReader`;
    else *blocks*, or a new one over *cache* or an in-memory LRU of *memory_bytes*), so
    concurrent readers of one block share one download, and a read spanning several blocks
    fetches them in parallel; a store with its own disk cache (a `KeepClient` built with
    ``cache=``) is used through it as well. Reads that continue where the previous read of a
    file ended count as sequential and have the next *readahead* blocks fetched in the
    background (*sequential_slack* bytes either way still count: the kernel sends read-ahead
    requests slightly out of order); random reads fetch only what they need, and
    `read_ranges` reads many ranges at once with no read-ahead. Store errors (`KeepError`)
    are raised from `read`, never swallowed; background read-ahead failures are only logged.

    Args:
        store: The store the blocks are read from.
        dataset: The dataset's locator, or a `DatasetReader` already open.
        readahead: Blocks fetched ahead of a sequential reader (0: none).
        cache: The `BlockCache` to read through.
        memory_bytes: The size of the memory LRU made when there is no *cache*.
        blocks: A `BlockSource` to read through (shared with other trees or readers).
        mtime: The modification time every path shows (default: now).
        sequential_slack: Bytes a read may start before or after the last read's end and still count as
            sequential.
    """

    def __init__(
        self,
        store: BlockStore,
        dataset: LocatorLike | DatasetReader,
        *,
        readahead: int = DEFAULT_READAHEAD,
        cache: BlockCache | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        blocks: BlockSource | None = None,
        mtime: float | None = None,
        sequential_slack: int = _SEQUENTIAL_SLACK,
    ) -> None:
        if readahead < 0:
            raise ConfigError(f"readahead must be at least 0, got {readahead}")
        if blocks is not None and cache is not None:
            raise ConfigError("give ReadPath cache= or blocks=, not both")
        self.store = store
        if isinstance(dataset, DatasetReader):
            if blocks is not None or cache is not None:
                raise ConfigError("a ReadPath over a DatasetReader reads through that reader's blocks; "
                                  "pass cache= or blocks= to the reader instead")
            self.reader = dataset
            self._own_blocks = False
        else:
            self._own_blocks = blocks is None
            if blocks is None:
                blocks = BlockSource(store, cache=cache if cache is not None else MemoryBlockCache(memory_bytes))
            self.reader = DatasetReader(store, dataset, blocks=blocks)
        self.blocks: BlockSource = self.reader.blocks
        self.manifest = self.reader.manifest
        self.locator: Locator = self.reader.locator
        self.readahead = readahead
        self.sequential_slack = sequential_slack
        self.mtime = time.time() if mtime is None else mtime
        self._files: dict[str, ManifestFile] = {}
        self._last_end: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"ReadPath({self.locator.stripped()}, {len(self.manifest.files)} files)"

    @property
    def cache(self) -> BlockCache:
        """The block cache every read goes through (the `BlockSource`'s)."""
        return self.blocks.cache

    # -- tree --------------------------------------------------------------------------------

    def lookup(self, path: str) -> Attr:
        """The attributes of *path*; `FileNotFoundError` when the dataset has no such path."""
        name = normalize_path(path)
        if self.manifest.is_dir(name):
            return Attr(name, True, 0, self.mtime)
        return Attr(name, False, self._file(name).size, self.mtime)

    getattr = lookup

    def readdir(self, path: str = "") -> list[str]:
        """Names directly inside directory *path*, sorted (no ``.``/``..``)."""
        return self.manifest.listdir(normalize_path(path))

    def _file(self, name: str) -> ManifestFile:
        """The manifest file *name*, its segments loaded (once: loading is not thread-safe)."""
        with self._lock:
            file = self._files.get(name)
            if file is None:
                file = self.manifest.file(name)
                len(file.segments)
                self._files[name] = file
            return file

    # -- data --------------------------------------------------------------------------------

    def read(self, path: str, offset: int, length: int, *, sequential: bool | None = None) -> bytes:
        """Up to *length* bytes of file *path* from *offset* (short only at end of file).

        *sequential* says whether to fetch the next blocks ahead; by default a read that
        starts a file or continues the previous read of it counts as sequential.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must not be negative, got {offset} and {length}")
        name = normalize_path(path)
        file = self._file(name)
        pieces = file.segments_in(offset, length)
        if not pieces:
            return b""
        _i, at, seg = pieces[-1]
        if self._note_read(name, offset, at + seg.length) if sequential is None else sequential:
            self._prefetch(file, pieces[-1][0] + 1)
        held = dict(self._fetch(seg.locator for _i, _at, seg in pieces))
        return _join([held[_key(seg.locator)][seg.offset:seg.offset + seg.length] for _i, _at, seg in pieces])

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes | Exception]:
        """``(path, offset, length)`` ranges read together, with no read-ahead: every block they
        touch is fetched once (ranges in one block share it), up to ``blocks.threads`` at once.

        Each range's bytes, or in its place the error that range met (`FileNotFoundError`,
        `IsADirectoryError`, a `KeepError` for a block that could not be had).
        """
        plans: list[list[Segment] | Exception] = []
        order: list[Locator] = []
        last_use: dict[str, int] = {}
        for n, (path, offset, length) in enumerate(ranges):
            try:
                if offset < 0 or length < 0:
                    raise ValueError(f"offset and length must not be negative, got {offset} and {length}")
                segs = [seg for _i, _at, seg in self._file(normalize_path(path)).segments_in(offset, length)]
            except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
                plans.append(exc)
                continue
            for seg in segs:
                key = _key(seg.locator)
                if key not in last_use:
                    order.append(seg.locator)
                last_use[key] = n
            plans.append(segs)
        out: list[bytes | Exception] = []
        held: dict[str, bytes | KeepError] = {}
        arriving = self.blocks.fetch_many(order)
        for n, plan in enumerate(plans):
            if isinstance(plan, Exception):
                out.append(plan)
                continue
            for seg in plan:  # blocks arrive in first-use order: a range's blocks come by its turn
                while _key(seg.locator) not in held:
                    loc, data = next(arriving)
                    held[_key(loc)] = data
            parts = [held[_key(seg.locator)] for seg in plan]
            blocks = [data for data in parts if not isinstance(data, KeepError)]
            failed = [data for data in parts if isinstance(data, KeepError)]
            out.append(failed[0] if failed else _join([data[seg.offset:seg.offset + seg.length]
                                                       for seg, data in zip(plan, blocks, strict=True)]))
            for seg in plan:
                if last_use[_key(seg.locator)] == n:
                    held.pop(_key(seg.locator), None)  # nothing later needs it: let it go
        return out

    def _fetch(self, locators: Iterable[Locator]) -> Iterator[tuple[str, bytes]]:
        """``(key, block)`` in order, fetched in parallel; raises the first `KeepError`."""
        for loc, data in self.blocks.fetch_many(locators):
            if isinstance(data, KeepError):
                raise data
            yield _key(loc), data

    def block(self, locator: Locator) -> bytes:
        """One block, through the `BlockSource` (one download however many readers want it)."""
        return self.blocks.block(locator)

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

    def _prefetch(self, file: ManifestFile, first: int) -> None:
        if self.readahead == 0 or self._closed:
            return
        self.blocks.prefetch(seg.locator for seg in file.segments[first:first + self.readahead])

    def close(self) -> None:
        """Stop read-ahead (waiting for fetches under way, when the `BlockSource` is this tree's
        own); reads still work afterwards. The store is the caller's to close."""
        self._closed = True
        if self._own_blocks:
            self.blocks.close()

    def __enter__(self) -> "ReadPath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(locator: Locator) -> str:
    return f"{locator.md5}+{locator.size}"


def _join(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)
