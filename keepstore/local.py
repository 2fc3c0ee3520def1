"""LocalStore: blocks in a directory, in the keepstore unix-volume layout, written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

from .errors import BlockNotFound, KeepError, LocatorError, ReadError, WriteError
from .locator import MAX_BLOCK_SIZE, Locator, LocatorLike
from .locator import md5 as new_md5
from .store import BlockStore, Data, as_view

__all__ = ["BlockWriter", "FileSystem", "LocalStore", "ReplicationWarning", "StrPath"]

StrPath: TypeAlias = "str | os.PathLike[str]"  # what the `FileSystem` calls take

log = logging.getLogger(__name__)


class ReplicationWarning(UserWarning):
    """A `LocalStore` was asked for more than one copy, or for storage classes, which it cannot keep."""

_BLOCK_NAME = re.compile(r"[0-9a-f]{32}\Z")
_CHUNK = 1 << 20
TEMP_PREFIX = ".tmp-"  # never matches the block-name pattern, so an index skips it


class FileSystem:
    """The file-system calls a `LocalStore` makes to write durably: a seam for fault-injecting tests.

    A block is made durable in this order: write the temp file, `fsync` it, `replace` it onto
    the block name, `fsync_dir` the directory (and, when `mkdir` made that directory, its
    parent first). A subclass may record the calls or drop what was never synced.
    """

    def mkdir(self, path: StrPath) -> bool:
        """Create directory *path*; True when it was made now (False when it existed)."""
        try:
            os.mkdir(path)
        except FileExistsError:
            return False
        return True

    def mkstemp(self, directory: StrPath, prefix: str) -> tuple[int, str]:
        """A new temp file in *directory*: ``(fd, path)``."""
        return tempfile.mkstemp(prefix=prefix, dir=directory)

    def fsync(self, fd: int) -> None:
        """Flush a file's data to stable storage."""
        os.fsync(fd)

    def replace(self, source: StrPath, target: StrPath) -> None:
        """Rename *source* onto *target* atomically."""
        os.replace(source, target)

    def fsync_dir(self, path: StrPath) -> None:
        """Flush a directory's entries (a rename or a new name in it) to stable storage."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(fd: int) -> bool:
    """Take an exclusive, non-blocking flock on *fd*; False when another open file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live writer owns it
        return False
    return True


class BlockWriter:
    """Stream one block into a temp file beside its final name; `commit()` checks and renames.

    Leaving the ``with`` block without a commit (or on an error) removes the temp file, so
    nothing partial is ever visible under a block name. The writer holds an exclusive flock on
    its temp file while it lives, so `LocalStore.reclaim` never removes it; the kernel drops
    the lock when the writer's process dies (kill -9 included).

    Args:
        store: The store the block goes to.
        md5: The block's md5 (its name); `commit` checks the data against it.
        fsync: Make the block durable (fsync the file and its directory) before `commit` returns.
    """

    def __init__(self, store: "LocalStore", md5: str, *, fsync: bool = True) -> None:
        self.store = store
        self.md5 = md5
        self.final = store.path_for(md5)
        self._fsync = fsync
        self._fs = store.fs
        self._hash = new_md5()
        self.size = 0
        if self._fs.mkdir(self.final.parent) and fsync:
            self._fs.fsync_dir(self.final.parent.parent)  # the new directory's name is durable too
        fd, name = self._fs.mkstemp(self.final.parent, TEMP_PREFIX)
        self.temp = Path(name)
        _lock(fd)  # a fresh file: nobody else can hold its lock yet
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
            self._fs.fsync(f.fileno())  # type: ignore[attr-defined]
        # Renamed while still open (and so locked): reclaim can never take a finished block's temp.
        self._fs.replace(self.temp, self.final)
        f.close()  # type: ignore[attr-defined]
        self._file = None
        if self._fsync:
            self._fs.fsync_dir(self.final.parent)
        return Locator(self.md5, self.size)

    def abort(self) -> None:
        """Drop the temp file (nothing when already committed)."""
        if self._file is None:
            return
        with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
            self.temp.unlink()  # while still locked, so no reclaim races with us
        self._file.close()  # type: ignore[attr-defined]
        self._file = None

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

    Args:
        root: The directory holding the blocks.
        fsync: Make every block durable before `put` returns (file, then rename, then directory).
        create: Create *root* when missing (else a missing root is a `KeepError`).
        fs: The file-system calls used for durable writes (a test seam; default: the real ones).
        reclaim_after: When set, `reclaim` temp files of killed writers older than this many
            seconds now, at open (a scan of every sub-directory; None skips it).

    Raises:
        KeepError: *root* cannot be created, or does not exist and *create* is false.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, create: bool = True,
                 fs: FileSystem | None = None, reclaim_after: float | None = None) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.fs = fs or FileSystem()
        self._warned_replication = False  # copies/classes are not honoured here: said once per store
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KeepError(f"cannot create local store directory {self.root}: {exc.strerror}") from exc
        elif not self.root.is_dir():
            raise KeepError(f"local store directory {self.root} does not exist")
        if reclaim_after is not None:
            self.reclaim(reclaim_after)

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
        """The file holding block *md5* in either layout, or None (a directory is not a block)."""
        for path in self._candidates(md5):
            if self._stat_file(path, md5) is not None:
                return path
        return None

    def _stat_file(self, path: Path, name: str, request_id: str | None = None) -> os.stat_result | None:
        """*path*'s stat when it is a regular file; None when absent or not a file.

        Raises `ReadError` (not a bare `PermissionError`) when it cannot be looked at.
        """
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:  # EACCES on an unreadable directory, EIO, ELOOP...
            raise ReadError(f"cannot look up block {name} at {path}: {exc.strerror or exc}", locator=name,
                            request_id=request_id) from exc
        return st if stat.S_ISREG(st.st_mode) else None

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
        if ((copies is not None and copies > 1) or storage_classes) and not self._warned_replication:
            self._warned_replication = True
            warnings.warn(f"{self!r} keeps one copy of each block and has no storage classes: "
                          f"copies={copies} and storage classes {list(storage_classes or [])} are not applied",
                          ReplicationWarning, stacklevel=2)
        view = as_view(data)
        loc = Locator.for_data(view)
        if loc.size == 0:
            return loc  # the empty block is always present; nothing to write
        try:
            existing = self.find(loc.md5)
        except ReadError:  # cannot look: write it (a failure there is a WriteError saying why)
            existing = None
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
        if loc.is_empty:
            return b""
        damage: ReadError | None = None
        for path in self._candidates(loc.md5):
            try:
                if self._stat_file(path, str(loc), request_id) is None:
                    continue
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
                # Read what the locator names, plus one byte to see a longer file: a buffer of the
                # block's size, not of the largest possible block.
                data = f.read(min(loc.size, MAX_BLOCK_SIZE) + 1)
                found = len(data) if len(data) <= loc.size else os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise BlockNotFound(f"block {loc} vanished from {path}", locator=str(loc),
                                request_id=request_id) from None
        except OSError as exc:
            raise ReadError(f"cannot read block {loc} from {path}: {exc.strerror}", locator=str(loc),
                            request_id=request_id) from exc
        if found != loc.size:
            raise ReadError(f"block {loc} at {path} is damaged: {found} bytes, want {loc.size}",
                            locator=str(loc), request_id=request_id)
        if new_md5(data).hexdigest() != loc.md5:
            raise ReadError(f"block {loc} at {path} is damaged: md5 mismatch", locator=str(loc),
                            request_id=request_id)
        return data

    def head(self, locator: LocatorLike, *, request_id: str | None = None) -> bool:
        loc = self._locator(locator)
        if loc.is_empty:
            return True
        damage: ReadError | None = None
        for path in self._candidates(loc.md5):  # both layouts, as get() reads them
            try:
                st = self._stat_file(path, str(loc), request_id)
            except ReadError as exc:  # unreadable here; the other layout may still hold it
                damage = damage or exc
                continue
            if st is None:
                continue
            size = st.st_size
            if size == loc.size:
                return True
            damage = damage or ReadError(f"block {loc} at {path} is damaged: {size} bytes, want {loc.size}",
                                         locator=str(loc), request_id=request_id)
        if damage is not None:
            raise damage
        raise BlockNotFound(f"block {loc} not found in {self.root}", locator=str(loc), request_id=request_id)

    def index(self, prefix: str = "") -> Iterator[tuple[str, int, int]]:
        """Yield ``(md5, size, mtime_ns)`` for every stored block whose md5 starts with *prefix*.

        Only regular files count (a directory under a block name is not a block). Raises
        `ReadError` when a directory of the store cannot be listed.
        """
        seen: set[str] = set()
        for entry in self._scan(self.root):
            if entry.is_dir(follow_symlinks=False) and len(entry.name) == 3 and entry.name.startswith(prefix[:3]):
                for block in self._scan(Path(entry.path)):
                    found = self._index_entry(block, prefix, seen)
                    if found is not None:
                        yield found
            else:
                found = self._index_entry(entry, prefix, seen)
                if found is not None:
                    yield found

    def _scan(self, path: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return sorted(entries, key=lambda e: e.name)
        except FileNotFoundError:  # removed while listing (or no root yet): nothing stored there
            return []
        except OSError as exc:  # EACCES: an unreadable directory
            raise ReadError(f"cannot list {path}: {exc.strerror or exc}") from exc

    @staticmethod
    def _index_entry(entry: os.DirEntry[str], prefix: str, seen: set[str]) -> tuple[str, int, int] | None:
        if not (_BLOCK_NAME.match(entry.name) and entry.name.startswith(prefix)) or entry.name in seen:
            return None
        try:
            st = entry.stat()
        except FileNotFoundError:  # removed while listing
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        seen.add(entry.name)
        return entry.name, st.st_size, st.st_mtime_ns

    def delete(self, locator: LocatorLike) -> bool:
        """Remove a block (both layouts); True when something was removed."""
        loc = self._locator(locator)
        removed = False
        for path in self._candidates(loc.md5):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed = True
        return removed

    def reclaim(self, older_than: float = 60.0, *, now: float | None = None) -> int:
        """Remove temp files left by killed writers; return how many were removed.

        A temp file is removed only when no live writer holds its lock (a writer locks its temp
        file for its whole life; the kernel releases the lock when the process dies, kill -9
        included) and it was last written more than *older_than* seconds before *now* (default:
        the current time), which covers the instant between a writer creating its file and
        locking it. Symlinks are never followed: only temp files directly in the store's own
        sub-directories are looked at.
        """
        cutoff = (time.time() if now is None else now) - older_than
        count = 0
        for entry in self._scan(self.root):
            if not entry.is_dir(follow_symlinks=False):
                continue
            for temp in self._scan(Path(entry.path)):
                if temp.name.startswith(TEMP_PREFIX) and self._reclaim_one(Path(temp.path), cutoff):
                    count += 1
        return count

    @staticmethod
    def _reclaim_one(path: Path, cutoff: float) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone, a symlink (ELOOP), or not ours to open: leave it
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff or not _lock(fd):
                return False
            with contextlib.suppress(FileNotFoundError):  # another reclaim took it first
                os.unlink(path)
                return True
            return False
        finally:
            os.close(fd)  # releases our lock

    def remove_stale_temp_files(self, older_than: float = 3600.0) -> int:
        """The older name of `reclaim` (``keep serve`` calls it): unlocked temp files older than *older_than*."""
        return self.reclaim(older_than)
