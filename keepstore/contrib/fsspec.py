"""`KeepFileSystem`: datasets as an fsspec filesystem, ``keep://<dataset locator>/path``."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from ..cache import MemoryBlockCache
from ..datasets import DatasetError, DatasetWriter, Manifest, Segment
from ..datasets.manifest import ManifestError
from ..datasets.reader import DEFAULT_FETCH_THREADS, BlockSource
from ..datasets.tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, ReadPath, normalize_path
from ..errors import BlockNotFound, KeepError, LocatorError
from ..locator import MAX_BLOCK_SIZE, Locator
from ..store import BlockStore
from .fsspec_write import KeepTransaction, KeepWriteFile

__all__ = ["KeepBufferedFile", "KeepFileSystem", "KeepTransaction", "KeepWriteFile"]

NEW = "new"  # keep://new/<path>: where writes go; each stores one new dataset (or joins fs.transaction's)
_MAX_OPEN_DATASETS = 64


class KeepFileSystem(AbstractFileSystem):
    """Read datasets by locator (``keep://<locator>/dir/file.csv``); write new ones under ``keep://new/``.

    Writes (``open(..., "wb")``, ``pipe``, ``put``) each store one new dataset and return (or
    keep, as `last_dataset`) its locator; inside ``with fs.transaction as tx:`` they all go
    into one dataset, ``tx.locator``. `combine` makes one dataset of several without copying.

    Storage options: ``services`` (URLs, list or space-separated) and ``token``; or
    ``local_store`` (a directory); or ``store`` (any `BlockStore`); with none of these,
    `KeepClient.from_env()`. ``retries``, ``timeout`` and ``copies`` go to the client.
    Every dataset opened through one filesystem reads through one `BlockSource`: a shared
    LRU of ``memory_bytes``, at most ``threads`` block downloads at once, ``readahead`` blocks
    fetched ahead of a file read from its start. The token is never shown in ``repr()`` or
    in errors.
    """

    protocol = "keep"
    root_marker = ""
    transaction_type = KeepTransaction

    def __init__(
        self,
        *,
        services: str | Iterable[str] | None = None,
        token: str | None = None,
        local_store: str | os.PathLike[str] | None = None,
        store: BlockStore | None = None,
        retries: int | None = None,
        timeout: Any = None,
        copies: int | None = None,
        readahead: int = DEFAULT_READAHEAD,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        threads: int = DEFAULT_FETCH_THREADS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.store = store if store is not None else _make_store(services, token, local_store, retries, timeout)
        self.copies = copies
        self.readahead = readahead
        self.blocks = BlockSource(self.store, cache=MemoryBlockCache(memory_bytes), threads=threads)
        self.last_dataset: str | None = None  # the locator of the last dataset a write here stored
        self._trees: OrderedDict[str, ReadPath] = OrderedDict()
        self._trees_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeepFileSystem({self.store!r})"

    # -- paths -------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        while path.startswith("keep:"):  # also "keep://keep://..." as some callers build it
            path = path[len("keep:"):].lstrip("/")
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"keep://{self._strip_protocol(name)}"

    def _split(self, path: str) -> tuple[str, str]:
        """``"<locator>/a/b"`` -> (locator text, ``"a/b"``)."""
        head, _, rest = self._strip_protocol(path).partition("/")
        return head, normalize_path(rest)

    def open_tree(self, path: str) -> tuple[ReadPath, str, str]:
        """The open dataset for *path*, the locator text it was named by, and the path inside."""
        head, rel = self._split(path)
        with self._trees_lock:
            tree = self._trees.get(head)
            if tree is not None:
                self._trees.move_to_end(head)
                return tree, head, rel
        try:
            loc = Locator.parse(head)
            tree = ReadPath(self.store, loc, readahead=self.readahead, blocks=self.blocks)
        except (LocatorError, BlockNotFound, ManifestError) as exc:
            raise FileNotFoundError(f"{self.unstrip_protocol(path)}: no dataset {head!r} ({exc})") from exc
        with self._trees_lock:
            self._trees[head] = tree
            while len(self._trees) > _MAX_OPEN_DATASETS:
                self._trees.popitem(last=False)  # the blocks are the filesystem's: nothing to close
        return tree, head, rel

    # -- reading -----------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        tree, head, rel = self.open_tree(path)
        try:
            attr = tree.lookup(rel)
        except FileNotFoundError:
            raise FileNotFoundError(f"keep://{head}/{rel}") from None
        name = f"{head}/{rel}" if rel else head
        return {"name": name, "size": attr.size, "type": "directory" if attr.is_dir else "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        tree, head, rel = self.open_tree(path)
        try:
            names = tree.readdir(rel)
        except NotADirectoryError:
            entries = [self.info(path)]
        except FileNotFoundError:
            raise FileNotFoundError(f"keep://{head}/{rel}") from None
        else:
            prefix = f"{head}/{rel}" if rel else head
            entries = [self.info(f"{prefix}/{name}") for name in names]
        return entries if detail else [e["name"] for e in entries]

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        out = self.cat_ranges([path], [start], [end], on_error="raise")[0]
        assert isinstance(out, bytes)  # on_error="raise" returns bytes or raises
        return out

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, max_gap: int | None = None,
                   on_error: str = "return", **kwargs: Any) -> list[bytes | Exception]:
        """Byte ranges ``[start, end)`` of files, read together: the blocks they touch are fetched
        concurrently (``threads`` at once), each once, ranges in one block sharing it.

        ``start``/``end`` as for `cat_file` (``None`` and negative values count from the ends);
        *max_gap* is accepted and not needed (a block is fetched whole anyway). With
        ``on_error="return"`` a failed range's exception takes its place in the list.
        """
        if not isinstance(paths, list):
            raise TypeError(f"paths must be a list, got {type(paths).__name__}")
        starts = starts if isinstance(starts, list) else [starts] * len(paths)
        ends = ends if isinstance(ends, list) else [ends] * len(paths)
        if not len(starts) == len(ends) == len(paths):
            raise ValueError(f"{len(paths)} paths, {len(starts)} starts and {len(ends)} ends: give one of each")
        out: list[bytes | Exception | None] = [None] * len(paths)
        by_tree: dict[str, tuple[ReadPath, list[int], list[tuple[str, int, int]]]] = {}
        for n, (path, start, end) in enumerate(zip(paths, starts, ends, strict=True)):
            try:
                tree, head, rel = self.open_tree(path)
                begin, stop = _range(tree.lookup(rel).size, start, end)
            except FileNotFoundError:
                out[n] = FileNotFoundError(self.unstrip_protocol(path))
                continue
            entry = by_tree.setdefault(head, (tree, [], []))
            entry[1].append(n)
            entry[2].append((rel, begin, stop - begin))
        for tree, slots, ranges in by_tree.values():
            for n, data in zip(slots, tree.read_ranges(ranges), strict=True):
                missing = isinstance(data, FileNotFoundError)
                out[n] = FileNotFoundError(self.unstrip_protocol(paths[n])) if missing else data
        done = [data for data in out if data is not None]
        if on_error != "return":
            for failed in done:
                if isinstance(failed, Exception):
                    raise failed
        return done

    def cat(self, path: str | list[str], recursive: bool = False, on_error: str = "raise", **kwargs: Any) -> Any:
        """fsspec's `cat`, with many paths read together through `cat_ranges`."""
        paths = self.expand_path(path, recursive=recursive)
        if len(paths) == 1 and not isinstance(path, list) and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0])
        files = [p for p in paths if not (recursive and self.isdir(p))]  # a recursive cat gives files only
        out: dict[str, bytes | Exception] = {}
        for p, data in zip(files, self.cat_ranges(files, None, None, on_error="return"), strict=True):
            if isinstance(data, Exception) and on_error == "raise":
                raise data
            if not (isinstance(data, Exception) and on_error == "omit"):
                out[p] = data
        return out

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> AbstractBufferedFile:
        if mode in ("wb", "xb"):
            return KeepWriteFile(self, path, mode, target=self._new_path(path), block_size=block_size or "default",
                                 autocommit=autocommit, **kwargs)
        if mode != "rb":
            raise PermissionError(f"{self.unstrip_protocol(path)}: mode {mode!r}: datasets are immutable; write "
                                  f"a new one with open('keep://{NEW}/<path>', 'wb'), fs.pipe or fs.put")
        info = self.info(path)
        if info["type"] == "directory":
            raise IsADirectoryError(self.unstrip_protocol(path))
        kwargs.setdefault("cache_type", "none")  # keepstore's block cache is the cache
        return KeepBufferedFile(self, path, mode, block_size=block_size or "default",
                                cache_options=cache_options, size=info["size"], **kwargs)

    def ukey(self, path: str) -> str:
        """A dataset never changes, so its locator and the path name a content version."""
        head, rel = self._split(path)
        return f"{Locator.parse(head).stripped()}/{rel}"

    # -- writing: each call stores one new dataset (or joins the open transaction's) ----------

    def store_files(self, fill: Callable[[DatasetWriter], Any]) -> str | None:
        """Run *fill* on a `DatasetWriter`: inside ``fs.transaction`` the transaction's (returns
        None: the dataset is stored when the transaction ends), else a new dataset's, stored now
        (returns its locator, also kept as `last_dataset`)."""
        if self._intrans:
            self.transaction.add(fill)
            return None
        with DatasetWriter(self.store, copies=self.copies) as writer:
            fill(writer)
            locator = writer.finish().locator
        self.last_dataset = locator
        return locator

    def pipe(self, path: str | Mapping[str, bytes], value: bytes | None = None, **kwargs: Any) -> str | None:
        """Store ``{keep://new/<path>: bytes}`` (or one path and *value*) as a new dataset."""
        files = {path: value} if isinstance(path, str) else dict(path)
        staged: list[tuple[str, bytes]] = []
        for target, data in files.items():
            if data is None:
                raise ValueError(f"no data given for {target}")
            staged.append((self._new_path(target), data))
        return self.store_files(lambda writer: [writer.add_bytes(name, data) for name, data in staged])

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> str | None:
        return self.pipe(path, value)

    def put(self, lpath: str | os.PathLike[str], rpath: str = f"keep://{NEW}/", recursive: bool = False,
            callback: Any = None, maxdepth: int | None = None, **kwargs: Any) -> str | None:
        """Store a local file or (with ``recursive=True``) directory under ``keep://new/...``."""
        prefix = self._new_path(rpath, allow_root=True)
        lpath = os.fspath(lpath)
        if os.path.isdir(lpath):
            if not recursive:
                raise IsADirectoryError(f"{lpath} is a directory; pass recursive=True")
            return self.store_files(lambda writer: writer.add_tree(lpath, prefix=prefix))
        name = prefix if prefix and not str(rpath).endswith("/") else "/".join(
            p for p in (prefix, os.path.basename(lpath)) if p)
        return self.store_files(lambda writer: writer.add_file(lpath, name))

    def put_file(self, lpath: str | os.PathLike[str], rpath: str, callback: Any = None,
                 mode: str = "overwrite", **kwargs: Any) -> str | None:
        return self.put(lpath, rpath)

    def combine(self, datasets: Iterable[str]) -> str:
        """One new dataset holding the files and directories of *datasets* (locators, or
        ``keep://<locator>[/dir]`` for a directory's contents), without copying data: the new
        manifest names the same blocks. A path found in two of them is an error (`DatasetError`)."""
        files: dict[str, list[Segment]] = {}
        dirs: set[str] = set()
        for item in datasets:
            tree, _head, rel = self.open_tree(item)
            reader = tree.reader.subtree(rel) if rel else tree.reader
            for file in reader.files():
                if file.path in files:
                    raise DatasetError(f"{file.path!r} is in more than one of the datasets combined")
                files[file.path] = list(file.segments)
            dirs |= set(reader.manifest.directories)
        text = Manifest.from_files(files, dirs).text.encode("utf-8")
        if len(text) > MAX_BLOCK_SIZE:
            raise DatasetError(f"the combined manifest ({len(text)} bytes) does not fit one block")
        locator = str(self.store.put(text, copies=self.copies))
        self.last_dataset = locator
        return locator

    def _new_path(self, path: str | os.PathLike[str], *, allow_root: bool = False) -> str:
        head, rel = self._split(os.fspath(path))
        if head != NEW or not (rel or allow_root):
            raise PermissionError(f"keep://{head}/{rel}: datasets are immutable; write to "
                                  f"keep://{NEW}/<path> to store a new dataset")
        return rel

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to do under ``keep://new/`` (directories come with the files written into them)."""
        self._new_path(path, allow_root=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._new_path(path, allow_root=True)

    def rm_file(self, path: str) -> None:
        raise PermissionError(f"{self.unstrip_protocol(path)}: datasets are immutable")

    def close(self) -> None:
        """Stop read-ahead; the store stays open (it may be shared). Reads still work after."""
        with self._trees_lock:
            self._trees = OrderedDict()
        self.blocks.close()


class KeepBufferedFile(AbstractBufferedFile):
    """A seekable read-only file over `ReadPath.read`, fit for columnar readers.

    Blocks come from the filesystem's shared cache; the next ones are fetched ahead only
    while this handle streams the file from its start (``pandas.read_csv``). A reader that
    seeks (Parquet: the footer first, then column chunks) fetches just the blocks it reads.
    fsspec's own cache is off by default (``cache_type="none"``): the block cache serves
    small reads.
    """

    fs: KeepFileSystem

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streamed_to: int | None = 0  # where a run of reads from offset 0 has reached; None once broken

    def _fetch_range(self, start: int, end: int) -> bytes:
        tree, _head, rel = self.fs.open_tree(self.path)
        streaming = start == 0 or start == self._streamed_to
        self._streamed_to = end if streaming else None
        try:
            return tree.read(rel, start, max(0, end - start), sequential=streaming)
        except FileNotFoundError:
            raise FileNotFoundError(self.fs.unstrip_protocol(self.path)) from None


def _range(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's ``start``/``end`` (negative counts from the end) as ``[begin, stop)`` within *size*."""
    begin = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    stop = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return begin, max(begin, stop)


def _make_store(services: str | Iterable[str] | None, token: str | None,
                local_store: str | os.PathLike[str] | None, retries: int | None, timeout: Any) -> BlockStore:
    from ..client import KeepClient
    from ..local import LocalStore

    if services is not None and local_store is not None:
        raise KeepError("give services= or local_store=, not both")
    options: dict[str, Any] = {k: v for k, v in (("retries", retries), ("timeout", timeout)) if v is not None}
    if services is not None:
        return KeepClient(services=services if isinstance(services, str) else list(services), token=token,
                          **options)
    if local_store is not None:
        return LocalStore(local_store)
    if token is not None:
        options["token"] = token
    return KeepClient.from_env(**options)
