"""`ByIdTree`: a directory in which any dataset locator resolves on lookup (``<locator>/path``)."""

from __future__ import annotations

import logging
import threading
import time

from ..cache import BlockCache, MemoryBlockCache
from ..errors import BlockNotFound, LocatorError
from ..locator import Locator
from ..store import BlockStore
from .manifest import ManifestError
from .reader import BlockSource
from .tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, Attr, ReadPath, normalize_path

__all__ = ["ByIdTree"]

log = logging.getLogger(__name__)


class ByIdTree:
    """The datasets of *store*, each under its locator: ``lookup("<locator>/a.csv")`` opens the
    dataset the first time its name is looked up; ``readdir("")`` lists the datasets opened so far.

    A name that is not a locator, or names no block, or a block that is not a manifest, is
    `FileNotFoundError` (the kernel's ENOENT); other store failures are raised as they are.
    Every opened dataset reads through one `BlockSource` (one *cache*, one pool of fetch
    threads), so the mount's memory and threads stay bounded however many datasets are opened.

    Args:
        store: The store the datasets are read from.
        cache: The block cache every opened dataset shares.
        memory_bytes: The size of the memory LRU made when there is no *cache*.
        readahead: Blocks fetched ahead of a sequential reader.
        mtime: The modification time every path shows (default: now).
    """

    def __init__(self, store: BlockStore, *, cache: BlockCache | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, readahead: int = DEFAULT_READAHEAD,
                 mtime: float | None = None) -> None:
        self.store = store
        self.cache = cache if cache is not None else MemoryBlockCache(memory_bytes)
        self.blocks = BlockSource(store, cache=self.cache)
        self.readahead = readahead
        self.mtime = time.time() if mtime is None else mtime
        self._trees: dict[str, ReadPath] = {}
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"ByIdTree({self.store!r}, {len(self._trees)} datasets opened)"

    def dataset(self, name: str) -> ReadPath:
        """The dataset named *name* (a locator's text), opened on first use."""
        with self._lock:
            tree = self._trees.get(name)
        if tree is not None:
            return tree
        try:
            locator = Locator.parse(name)
        except LocatorError:
            raise FileNotFoundError(name) from None
        with self._lock:
            gate = self._opening.setdefault(name, threading.Lock())
        try:
            with gate:  # one manifest fetch however many lookups of a new name arrive at once
                with self._lock:
                    tree = self._trees.get(name)
                if tree is None:
                    tree = self._open(name, locator)
                    with self._lock:
                        self._trees[name] = tree
                return tree
        finally:
            with self._lock:  # failed names leave nothing behind (lookups of junk cost no memory)
                self._opening.pop(name, None)

    def _open(self, name: str, locator: Locator) -> ReadPath:
        try:
            return ReadPath(self.store, locator, blocks=self.blocks, readahead=self.readahead, mtime=self.mtime)
        except BlockNotFound:
            raise FileNotFoundError(name) from None
        except ManifestError as exc:  # a block, but not a dataset's manifest
            log.info("%s is not a dataset: %s", name, exc)
            raise FileNotFoundError(name) from None

    def _split(self, path: str) -> tuple[str, str]:
        name, _, rest = normalize_path(path).partition("/")
        return name, rest

    def lookup(self, path: str) -> Attr:
        """The attributes of ``<locator>[/path]``; the root is a directory."""
        name, rest = self._split(path)
        if not name:
            return Attr("", True, 0, self.mtime)
        return self.dataset(name).lookup(rest)

    def readdir(self, path: str = "") -> list[str]:
        """The root lists the datasets opened so far; below it, a dataset's own directories."""
        name, rest = self._split(path)
        if not name:
            with self._lock:
                return sorted(self._trees)
        return self.dataset(name).readdir(rest)

    def read(self, path: str, offset: int, length: int) -> bytes:
        name, rest = self._split(path)
        if not name:
            raise IsADirectoryError(path)
        return self.dataset(name).read(rest, offset, length)

    def close(self) -> None:
        """Close every opened dataset (their read-ahead); the store is the caller's."""
        with self._lock:
            trees, self._trees = list(self._trees.values()), {}
        for tree in trees:
            tree.close()
        self.blocks.close()

    def __enter__(self) -> "ByIdTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
