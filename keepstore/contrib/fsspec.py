"""`KeepFileSystem`: datasets as an fsspec filesystem, ``keep://<dataset locator>/path``."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from ..cache import MemoryBlockCache
from ..datasets import DatasetWriter
from ..datasets.manifest import ManifestError
from ..datasets.tree import DEFAULT_MEMORY_BYTES, DEFAULT_READAHEAD, ReadPath, normalize_path
from ..errors import BlockNotFound, KeepError, LocatorError
from ..locator import Locator
from ..store import BlockStore

__all__ = ["KeepBufferedFile", "KeepFileSystem"]

NEW = "new"  # keep://new/<path>: where put/pipe write; each call stores one new dataset
_MAX_OPEN_DATASETS = 64


class KeepFileSystem(AbstractFileSystem):
    """Read datasets by locator (``keep://<locator>/dir/file.csv``); write new ones with put/pipe.

    Storage options: ``services`` (URLs, list or space-separated) and ``token``; or
    ``local_store`` (a directory); or ``store`` (any `BlockStore`); with none of these,
    `KeepClient.from_env()`. ``retries``, ``timeout`` and ``copies`` go to the client;
    ``readahead`` (blocks) and ``memory_bytes`` size the shared block cache. The token is
    never shown in ``repr()`` or in errors.
    """

    protocol = "keep"
    root_marker = ""

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.store = store if store is not None else _make_store(services, token, local_store, retries, timeout)
        self.copies = copies
        self.readahead = readahead
        self._blocks = MemoryBlockCache(memory_bytes)
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
        if path.startswith("keep://"):
            path = path[len("keep://"):]
        elif path.startswith("keep:"):
            path = path[len("keep:"):]
        return path.strip("/")

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
            tree = ReadPath(self.store, loc, readahead=self.readahead, cache=self._blocks)
        except (LocatorError, BlockNotFound, ManifestError) as exc:
            raise FileNotFoundError(f"keep://{path}: no dataset {head!r} ({exc})") from exc
        with self._trees_lock:
            self._trees[head] = tree
            while len(self._trees) > _MAX_OPEN_DATASETS:
                self._trees.popitem(last=False)[1].close()
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
        tree, head, rel = self.open_tree(path)
        try:
            size = tree.lookup(rel).size
            begin, stop = _range(size, start, end)
            return tree.read(rel, begin, max(0, stop - begin))
        except FileNotFoundError:
            raise FileNotFoundError(f"keep://{head}/{rel}") from None

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> "KeepBufferedFile":
        if mode != "rb":
            raise PermissionError(f"keep://{path}: datasets are read-only; create one with "
                                  f"fs.pipe('keep://{NEW}/...', data) or fs.put(local, 'keep://{NEW}/')")
        info = self.info(path)
        if info["type"] == "directory":
            raise IsADirectoryError(f"keep://{path}")
        return KeepBufferedFile(self, path, mode, block_size=block_size or "default",
                                cache_options=cache_options, size=info["size"], **kwargs)

    def ukey(self, path: str) -> str:
        """A dataset never changes, so its locator and the path name a content version."""
        head, rel = self._split(path)
        return f"{Locator.parse(head).stripped()}/{rel}"

    # -- writing: each call stores one new dataset and returns its locator ------------------

    def pipe(self, path: str | Mapping[str, bytes], value: bytes | None = None, **kwargs: Any) -> str:
        """Store ``{keep://new/<path>: bytes}`` (or one path and *value*) as a new dataset."""
        files = {path: value} if isinstance(path, str) else dict(path)
        with self._writer() as writer:
            for target, data in files.items():
                if data is None:
                    raise ValueError(f"no data given for {target}")
                writer.add_bytes(self._new_path(target), data)
            return writer.finish().locator

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> str:
        return self.pipe(path, value)

    def put(self, lpath: str | os.PathLike[str], rpath: str = f"keep://{NEW}/", recursive: bool = False,
            callback: Any = None, maxdepth: int | None = None, **kwargs: Any) -> str:
        """Store a local file or (with ``recursive=True``) directory under ``keep://new/...``."""
        prefix = self._new_path(rpath, allow_root=True)
        lpath = os.fspath(lpath)
        with self._writer() as writer:
            if os.path.isdir(lpath):
                if not recursive:
                    raise IsADirectoryError(f"{lpath} is a directory; pass recursive=True")
                writer.add_tree(lpath, prefix=prefix)
            else:
                name = prefix if prefix and not str(rpath).endswith("/") else "/".join(
                    p for p in (prefix, os.path.basename(lpath)) if p)
                writer.add_file(lpath, name)
            return writer.finish().locator

    def put_file(self, lpath: str | os.PathLike[str], rpath: str, callback: Any = None,
                 mode: str = "overwrite", **kwargs: Any) -> str:
        return self.put(lpath, rpath)

    def _writer(self) -> DatasetWriter:
        return DatasetWriter(self.store, copies=self.copies)

    def _new_path(self, path: str | os.PathLike[str], *, allow_root: bool = False) -> str:
        head, rel = self._split(os.fspath(path))
        if head != NEW or not (rel or allow_root):
            raise PermissionError(f"keep://{head}/{rel}: datasets are immutable; write to "
                                  f"keep://{NEW}/<path> to store a new dataset")
        return rel

    # -- unsupported mutations -----------------------------------------------------------------

    def rm_file(self, path: str) -> None:
        raise PermissionError(f"keep://{path}: datasets are immutable")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise PermissionError(f"keep://{path}: datasets are immutable")

    def close(self) -> None:
        """Stop read-ahead; the store stays open (it may be shared)."""
        with self._trees_lock:
            trees, self._trees = list(self._trees.values()), OrderedDict()
        for tree in trees:
            tree.close()


class KeepBufferedFile(AbstractBufferedFile):
    """A seekable read-only file; fsspec's block cache over `ReadPath.read` (with its read-ahead)."""

    fs: KeepFileSystem

    def _fetch_range(self, start: int, end: int) -> bytes:
        tree, _head, rel = self.fs.open_tree(self.path)
        try:
            return tree.read(rel, start, max(0, end - start))
        except FileNotFoundError:
            raise FileNotFoundError(f"keep://{self.path}") from None


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
