"""LocalStore: blocks in a directory, in the keepstore unix-volume layout, written atomically."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from .errors import BlockNotFound, KeepError, LocatorError, ReadError, WriteError
from .locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from .store import BlockStore, Data, as_view

__all__ = ["BlockWriter", "LocalStore"]

log = logging.getLogger(__name__)

_BLOCK_NAME = re.compile(r"[0-9a-f]{32}\Z")
_EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
_CHUNK = 1 << 20
TEMP_PREFIX = ".tmp-"  # never matches the block-name pattern, so an index skips it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlockWriter:
    """Stream one block into a temp file beside its final name; `commit()` checks and renames.

    Leaving the ``with`` block without a commit (or on an error) removes the temp file, so
    nothing partial is ever visible under a block name.
    """

    def __init__(self, store: "LocalStore", md5: str, *, fsync: bool = True) -> None:
        self.store = store
        self.md5 = md5
        self.final = store.path_for(md5)
        self._fsync = fsync
        self._hash = hashlib.md5()
        self.size = 0
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.final.parent)
        self.temp = Path(name)
        self._file: object | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.size + len(chunk) > MAX_BLOCK_SIZE:
            raise WriteError(f"block {self.md5} exceeds the 64 MiB maximum", locator=self.md5)
        self._hash.update(chunk)
        self._file.write(chunk)  # type: ignore[union-attr]
        self.size += len(chunk)

    def commit(self) -> Locator:
        """Verify the md5, fsync, and rename into place; return the block's locator."""
        actual = self._hash.hexdigest()
        if actual != self.md5:
            raise WriteError(f"data md5 {actual} does not match block name {self.md5}", locator=self.md5)
        f = self._file
        assert f is not None
        f.flush()  # type: ignore[attr-defined]
        if self._fsync:
            os.fsync(f.fileno())  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]
        self._file = None
        os.replace(self.temp, self.final)
        if self._fsync:
            _fsync_dir(self.final.parent)
        return Locator(self.md5, self.size)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
        with contextlib.suppress(FileNotFoundError):  # already renamed or never created
            self.temp.unlink()

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class LocalStore(BlockStore):
    """Blocks under *root* as ``<root>/<md5[0:3]>/<md5>``, the keepstore unix-volume layout.

    Also reads the flat ``<root>/<md5>`` layout of the Arvados SDK's ``local_store``. Writes go
    to a unique temp file in the target directory, are fsynced and renamed into place, so
    concurrent writers (threads or processes) of one block are safe. Every read is verified.
    ``copies`` and ``storage_classes`` are accepted for interface compatibility and mean
    nothing here: a directory is one replica in one class.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, create: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KeepError(f"cannot create local store directory {self.root}: {exc.strerror}") from exc
        elif not self.root.is_dir():
            raise KeepError(f"local store directory {self.root} does not exist")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path_for(self, md5: str) -> Path:
        """Where a block is written (the layered layout).

        Raises `LocatorError` unless *md5* is 32 lowercase hex digits, so no caller (the
        server passes names taken from URLs) can name a path outside the root.
        """
        if not isinstance(md5, str) or not _BLOCK_NAME.match(md5):
            raise LocatorError(f"invalid block name {md5!r}: need 32 lowercase hex digits")
        return self.root / md5[:3] / md5

    def _candidates(self, md5: str) -> tuple[Path, Path]:
        layered = self.path_for(md5)
        return layered, self.root / md5

    def find(self, md5: str) -> Path | None:
        """The file holding block *md5* in either layout, or None."""
        for path in self._candidates(md5):
            if path.is_file():
                return path
        return None

    def writer(self, md5: str) -> BlockWriter:
        """A `BlockWriter` for streaming a block of known md5 (used by ``keep serve``)."""
        return BlockWriter(self, md5, fsync=self.fsync)

    def put(
        self,
        data: Data,
        *,
        copies: int | None = None,
        storage_classes: Iterable[str] | None = None,
        request_id: str | None = None,
    ) -> Locator:
        view = as_view(data)
        loc = Locator.for_data(view)
        if loc.size == 0:
            return loc  # the empty block is always present; nothing to write
        existing = self.find(loc.md5)
        if existing is not None and self._holds(existing, loc):
            with contextlib.suppress(OSError):  # a touch is only a hint for trash/GC policies
                os.utime(existing)
            return loc
        try:
            with self.writer(loc.md5) as w:
                for start in range(0, loc.size, 16 * _CHUNK):
                    w.write(view[start:start + 16 * _CHUNK])
                return w.commit()
        except OSError as exc:
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
            raise WriteError(f"cannot write block {loc} to {self.root}: {reason}",
                             wanted=1, done=0, locator=str(loc), request_id=request_id) from exc

    def _holds(self, path: Path, loc: Locator) -> bool:
        try:
            return path.stat().st_size == loc.size and self._read_verified(path, loc) is not None
        except (OSError, ReadError):
            return False

    def get(self, locator: LocatorLike, *, request_id: str | None = None) -> bytes:
        loc = self._locator(locator)
        if loc.md5 == _EMPTY_MD5 and loc.size == 0:
            return b""
        damage: ReadError | None = None
        for path in self._candidates(loc.md5):
            if not path.is_file():
                continue
            try:
                data = self._read_verified(path, loc, request_id)
            except BlockNotFound:  # removed since is_file(); the other layout may still hold it
                continue
            except ReadError as exc:  # a damaged copy in one layout must not hide a good one in the other
                damage = damage or exc
                continue
            assert data is not None
            return data
        if damage is not None:
            raise damage
        raise BlockNotFound(f"block {loc} not found in {self.root}", locator=str(loc), request_id=request_id)

    def _read_verified(self, path: Path, loc: Locator, request_id: str | None = None) -> bytes | None:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            raise BlockNotFound(f"block {loc} vanished from {path}", locator=str(loc),
                                request_id=request_id) from None
        except OSError as exc:
            raise ReadError(f"cannot read block {loc} from {path}: {exc.strerror}", locator=str(loc),
                            request_id=request_id) from exc
        if len(data) != loc.size:
            raise ReadError(f"block {loc} at {path} is damaged: {len(data)} bytes, want {loc.size}",
                            locator=str(loc), request_id=request_id)
        if hashlib.md5(data).hexdigest() != loc.md5:
            raise ReadError(f"block {loc} at {path} is damaged: md5 mismatch", locator=str(loc),
                            request_id=request_id)
        return data

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        loc = self._locator(locator)
        if loc.md5 == _EMPTY_MD5 and loc.size == 0:
            return True
        damage: ReadError | None = None
        for path in self._candidates(loc.md5):  # both layouts, as get() reads them
            try:
                size = path.stat().st_size if path.is_file() else None
            except FileNotFoundError:  # deleted while we looked
                size = None
            if size is None:
                continue
            if size == loc.size:
                return True
            damage = damage or ReadError(f"block {loc} at {path} is damaged: {size} bytes, want {loc.size}",
                                         locator=str(loc), request_id=request_id)
        if damage is not None:
            raise damage
        raise BlockNotFound(f"block {loc} not found in {self.root}", locator=str(loc), request_id=request_id)

    def index(self, prefix: str = "") -> Iterator[tuple[str, int, int]]:
        """Yield ``(md5, size, mtime_ns)`` for every stored block whose md5 starts with *prefix*."""
        seen: set[str] = set()
        try:
            top = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in top:
            if entry.is_dir() and len(entry.name) == 3 and entry.name.startswith(prefix[:3]):
                with os.scandir(entry.path) as inner:
                    for block in sorted(inner, key=lambda e: e.name):
                        if _BLOCK_NAME.match(block.name) and block.name.startswith(prefix) and block.name not in seen:
                            with contextlib.suppress(FileNotFoundError):  # removed while listing
                                st = block.stat()
                                seen.add(block.name)
                                yield block.name, st.st_size, st.st_mtime_ns
            elif (_BLOCK_NAME.match(entry.name) and entry.name.startswith(prefix) and entry.is_file()
                  and entry.name not in seen):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    seen.add(entry.name)
                    yield entry.name, st.st_size, st.st_mtime_ns

    def delete(self, locator: LocatorLike) -> bool:
        """Remove a block (both layouts); True when something was removed."""
        loc = self._locator(locator)
        removed = False
        for path in self._candidates(loc.md5):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        return removed

    def remove_stale_temp_files(self, older_than: float = 3600.0) -> int:
        """Delete temp files left by killed writers that are older than *older_than* seconds."""
        import time

        cutoff = time.time() - older_than
        count = 0
        for path in self.root.glob(f"*/{TEMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    count += 1
        return count
