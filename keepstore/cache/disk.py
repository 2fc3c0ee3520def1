"""`DiskBlockCache`: an LRU of blocks in a directory (diskcache), shared safely between processes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import sqlite3
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import diskcache
import xxhash
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from ..errors import ConfigError
from ..locator import Locator
from .base import BlockCache, check_max_bytes
from .filelock import block_lock
from .index import BlockIndex
from .trust import file_is_private, is_private_directory

__all__ = ["DEFAULT_DISK_BYTES", "DiskBlockCache"]

log = logging.getLogger(__name__)

DEFAULT_DISK_BYTES = 4 * 1024**3
# Blocks below this size live inside the SQLite database; larger ones are files of their own.
INLINE_LIMIT = 64 * 1024
VERIFY_METHODS = ("auto", "xxh3", "crc32", "md5")


def _crc32_hex(data: bytes | memoryview) -> str:
    return f"{zlib.crc32(data):08x}"


# Checksums recorded with an entry when it is stored (the data was md5-verified then): XXH3-128
# (about 9 GB/s on the development machine) for new entries, CRC-32 (about 3 GB/s) for entries
# written before XXH3 and with verify="crc32".
_CHECKSUMS: dict[str, Callable[[bytes | memoryview], str]] = {
    "xxh3": xxhash.xxh3_128_hexdigest,
    "crc32": _crc32_hex,
}

# What a broken cache directory raises: SQLite errors (damaged or read-only database, disk
# full), OSError (files), and diskcache.Timeout (another process held the database too long).
_FAILURES = (sqlite3.Error, OSError, diskcache.Timeout)
# Write failures after which reading the entries already there still makes sense.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# diskcache's index and its SQLite companions: inline blocks live in them.
_INDEX_FILES = (diskcache.core.DBNAME, diskcache.core.DBNAME + "-wal", diskcache.core.DBNAME + "-shm")


def _mapped(file: BinaryIO, st: os.stat_result, size: int) -> memoryview:
    """*file* as a read-only view: mapped when only this user can change it, else read."""
    if st.st_size == size > 0 and st.st_nlink == 1 and file_is_private(st):
        try:
            # The view holds the only reference to the mapping: releasing it (or its garbage
            # collection) unmaps it and closes the mapping's own descriptor.
            return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
        except OSError:  # a filesystem that cannot map files: read it instead
            pass
    return memoryview(file.read())


class _BlockDisk(diskcache.Disk):
    """Writes a block file with one ``write`` from the caller's buffer, removing it if that fails.

    (diskcache's own `Disk.store` iterates a BytesIO by *lines*, which is slow for binary data,
    and leaves a partial file behind when the disk fills up.)
    """

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if not isinstance(value, memoryview):
            return super().store(value, read, key=key)  # type: ignore[no-any-return]
        if value.nbytes < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(value)
        filename, full_path = self.filename(key, value)
        try:
            for attempt in range(3):
                try:
                    os.makedirs(os.path.dirname(full_path), exist_ok=True)
                    with open(full_path, "xb") as writer:
                        writer.write(value)
                except FileNotFoundError:
                    # Another process's eviction removed a (then empty) directory on the way
                    # before we could use it: diskcache's Disk.remove prunes empty directories.
                    if attempt == 2:
                        raise
                    continue
                break
        except OSError:
            with contextlib.suppress(FileNotFoundError):  # open() itself failed
                os.remove(full_path)
            raise
        return value.nbytes, MODE_BINARY, filename, None


class DiskBlockCache(BlockCache):
    """Blocks cached in *path*, least recently used dropped first, within *max_bytes*.

    Several processes (and threads) may use one directory at once: the index is a SQLite
    database in WAL mode (diskcache), blocks of 64 KiB and more are files of their own, and a
    per-block lock file lets processes wait for one download of a block (*lock_timeout*).

    Every hit is verified before it is returned: *verify* ``"xxh3"`` checks an XXH3-128
    checksum recorded with the entry when it was stored (the data was md5-verified then)
    together with the entry's md5+size; ``"crc32"`` does the same with a CRC-32 (slower, kept
    for entries written before xxh3); ``"md5"`` re-hashes the block. A failed check drops the
    entry. A recorded checksum catches accidents, not forgery, so ``"auto"`` (default) trusts
    one (XXH3 for new entries, CRC-32 for old ones) only where nobody but this user could have
    written the entry: a `private` directory (see ``docs/cache.md``) and, for a block file, a
    file owned by this user that nobody else may write; md5 otherwise.

    Args:
        path: The cache directory (made if missing).
        max_bytes: Bound on what the directory holds; least recently used blocks go first.
        verify: ``"auto"``, ``"xxh3"``, ``"crc32"`` or ``"md5"``, as above.
        lock_timeout: Seconds to wait for another process's download of a block (0: never).
        db_timeout: Seconds to wait for the SQLite index when another process holds it.
        touch_delay: Seconds a hit's access time may wait to be written to the index, batched
            with other hits (this object's own evictions always see every hit first).

    `get_view` returns a hit without copying it: a block file owned by this user and writable
    by nobody else is memory-mapped and verified in place (see ``docs/cache.md``).

    A failing directory (read-only, full, damaged database) never raises from a get or put:
    the cache logs one warning and behaves as empty. Invalid arguments raise `ConfigError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_DISK_BYTES,
        *,
        verify: str = "auto",
        lock_timeout: float = 60.0,
        db_timeout: float = 10.0,
        touch_delay: float = 1.0,
    ) -> None:
        super().__init__()
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = check_max_bytes(max_bytes)
        if verify not in VERIFY_METHODS:
            raise ConfigError(f"cache verify must be one of {', '.join(VERIFY_METHODS)}, got {verify!r}")
        if not lock_timeout >= 0 or not db_timeout > 0 or not touch_delay >= 0:
            raise ConfigError(f"cache timeouts must be positive, got {lock_timeout!r}, {db_timeout!r} "
                              f"and {touch_delay!r}")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigError(f"cache path {self.path} exists and is not a directory")
        self.verify = verify
        self.lock_timeout = float(lock_timeout)
        self._state_lock = threading.Lock()
        self._warned = False
        self._readable = self._writable = False
        self._locks_dir = os.path.join(self.path, "locks")
        self._db_timeout = float(db_timeout)
        self._cache: diskcache.Cache | None = None
        # Hit lookups, batched access-time updates and eviction, on a connection of its own.
        self._index = BlockIndex(self.path, self._db_timeout, touch_delay=touch_delay)
        # Hits remembered but not yet written reach the index when this object is closed or
        # collected, or at interpreter exit (the finalizer holds the index, not this object).
        self._finalizer = weakref.finalize(self, self._index.close)
        try:
            self._cache = diskcache.Cache(
                self.path,
                timeout=db_timeout,
                disk=_BlockDisk,
                eviction_policy="least-recently-used",
                size_limit=self.max_bytes,
                # We evict ourselves, one entry at a time, after each put (see _evict): diskcache's
                # own cull drops cull_limit entries at once, and would hide the eviction count.
                cull_limit=0,
                disk_min_file_size=INLINE_LIMIT,
                # Keep the write-ahead log small: it is not counted in max_bytes.
                sqlite_journal_size_limit=2**20,
            )
            os.makedirs(self._locks_dir, exist_ok=True)
        except _FAILURES as exc:
            self._failed(exc, "opening")
        else:
            self._readable = self._writable = True
        #: Nobody but this user (or root) could have written the directory, its index, or
        #: swapped it: with verify="auto", hits are then checked by XXH3 (else md5).
        self.private = is_private_directory(self.path, _INDEX_FILES)
        if verify == "auto" and not self.private:
            log.info("block cache %s may be written by other users: every hit is checked by md5", self.path)

    def __repr__(self) -> str:
        return f"DiskBlockCache({self.path!r}, max_bytes={self.max_bytes})"

    @property
    def usable(self) -> bool:
        """False once a failure has turned this cache into a no-op."""
        return self._readable

    def _failed(self, exc: BaseException, action: str) -> None:
        """Count a failure, warn about the first one, and stop using what failed."""
        self._counters.add(errors=1)
        if isinstance(exc, diskcache.Timeout):
            log.debug("block cache %s: database busy while %s; treated as a miss", self.path, action)
            return  # contention, not damage: the next call may well succeed
        with self._state_lock:
            first = not self._warned
            self._warned = True
            if action != "locking":  # without a lock file we merely risk a duplicate download
                self._writable = False
                if action != "writing" or not isinstance(exc, OSError) or exc.errno not in _FULL:
                    self._readable = False
        if first:
            log.warning(
                "block cache %s failed while %s (%s: %s); continuing without %s",
                self.path, action, type(exc).__name__, exc,
                "the cache" if not self._readable else "storing new blocks" if not self._writable else "locks",
            )

    # -- verification -----------------------------------------------------------------------

    def _tag(self, locator: Locator, data: memoryview) -> str:
        method = self.verify if self.verify in ("md5", "crc32") else "xxh3"
        checksum = _CHECKSUMS[method](data) if method in _CHECKSUMS else ""
        return f"{method}:{checksum}:{locator}"

    def _check(self, locator: Locator, data: bytes | memoryview, tag: object, trusted: bool) -> bool:
        if not isinstance(tag, str) or len(data) != locator.size:
            return False
        method, _, rest = tag.partition(":")
        checksum, _, ident = rest.partition(":")
        if ident != str(locator):
            return False
        # The tag is written by whoever filled the entry (another process, maybe another
        # setting): with verify="md5" every hit is checked by md5, whatever the tag says, and
        # so is a hit whose entry someone else could have forged (XXH3 or CRC-32 is no defence then).
        if method == "md5" or self.verify == "md5" or (self.verify == "auto" and not trusted):
            return hashlib.md5(data, usedforsecurity=False).hexdigest() == locator.md5
        compute = _CHECKSUMS.get(method)
        return compute is not None and checksum == compute(data)

    # -- BlockCache -------------------------------------------------------------------------

    def _lookup(self, locator: Locator) -> tuple[object, bytes | BinaryIO] | None:
        """The entry's tag and its inline bytes or open block file; None when there is none."""
        if self._cache is None or not self._readable:
            return None
        key = str(locator)
        entry = self._index.find(key)
        if entry is None:
            return None
        tag, inline, path = entry
        if inline is not None:
            found: bytes | BinaryIO = inline
        else:
            assert path is not None
            try:
                found = open(path, "rb")  # noqa: SIM115 - the caller closes it
            except FileNotFoundError:
                return None  # evicted by another process between the lookup and the open
        if self._index.touch(key):
            try:
                self._index.flush()
            except _FAILURES as exc:
                self._failed(exc, "recording hits")
        return tag, found

    def _get(self, locator: Locator) -> bytes | None:
        try:
            found = self._lookup(locator)
            if found is None:
                return None
            tag, value = found
            if isinstance(value, bytes):
                data, trusted = value, self.private
            else:
                with value:  # the file stays readable even if another process evicts it now
                    # The file read is the one judged: another user may have replaced it.
                    trusted = self.private and file_is_private(os.fstat(value.fileno()))
                    data = value.read()
        except _FAILURES as exc:
            self._failed(exc, "reading")
            return None
        return data if self._verified(locator, data, tag, trusted) else None

    def _get_view(self, locator: Locator) -> memoryview | None:
        """A verified hit without a copy: a read-only view of the block file mapped in memory.

        Only a file that nobody but this user (or root) can change is mapped: owned by us,
        writable by nobody else, one link. Nothing of keepstore or diskcache writes an existing
        block file (each is created once, under a new random name, before its index row
        commits; a replaced or evicted entry's file is unlinked, which leaves a mapping intact),
        so the bytes verified here are the bytes the view shows for as long as it lives. Any
        other file is read into memory as `get` does.
        """
        try:
            found = self._lookup(locator)
            if found is None:
                return None
            tag, value = found
            if isinstance(value, bytes):
                view, trusted = memoryview(value), self.private
            else:
                with value:
                    st = os.fstat(value.fileno())
                    trusted = self.private and file_is_private(st)
                    view = _mapped(value, st, locator.size)
        except _FAILURES as exc:
            self._failed(exc, "reading")
            return None
        if self._verified(locator, view, tag, trusted):
            return view
        view.release()  # unmaps it (the view holds the only reference to the mapping)
        return None

    def _verified(self, locator: Locator, data: bytes | memoryview, tag: object, trusted: bool) -> bool:
        """Check a hit; drop (and count) an entry that fails."""
        if self._check(locator, data, tag, trusted):
            return True
        log.warning("block cache %s: entry for %s failed verification; dropped", self.path, locator)
        self._counters.add(corrupt=1)
        self._discard(locator)
        return False

    def _put(self, locator: Locator, data: memoryview) -> None:
        cache = self._cache
        if cache is None or not self._writable or data.nbytes > self.max_bytes:
            return
        key = str(locator)
        try:
            if key in cache:
                return  # blocks never change: rewriting one would only cost I/O
            cache.set(key, data, tag=self._tag(locator, data))
        except _FAILURES as exc:
            self._failed(exc, "writing")
            return
        self._counters.add(bytes_written=data.nbytes)
        self._evict()

    def _evict(self) -> None:
        """Drop least-recently-used entries until the directory is within max_bytes."""
        cache = self._cache
        assert cache is not None
        evicted = 0
        try:
            while cache.volume() > self.max_bytes and self._evict_one(cache):
                evicted += 1
        except _FAILURES as exc:
            self._failed(exc, "evicting")
        finally:
            self._counters.add(evictions=evicted)

    def _evict_one(self, cache: diskcache.Cache) -> bool:
        """Delete the least recently used entry and its file; False when the cache is empty.

        diskcache has no public call for this (its ``cull()`` drops ten entries at a time: 640
        MiB of 64 MiB blocks when one would do, and an eviction count we could not report), so
        `BlockIndex` deletes the row from diskcache's documented SQLite table ``Cache`` (its
        triggers keep diskcache's size and count right) and the file goes by the public
        ``Disk.remove``.
        """
        deleted, filename = self._index.remove_oldest()
        if filename:
            cache.disk.remove(filename)  # after the commit, as diskcache does: a reader may still hold it open
        return deleted

    def _discard(self, locator: Locator) -> None:
        cache = self._cache
        if cache is None or not self._readable:
            return
        try:
            # By our index, not diskcache's delete: a forged row's filename could name a file
            # outside the directory, which diskcache would remove.
            _, filename = self._index.remove(str(locator))
            if filename:
                cache.disk.remove(filename)
        except _FAILURES as exc:
            self._failed(exc, "discarding")

    def locators(self) -> Iterator[Locator]:
        """The bare locators of the entries now in the directory (nothing when the cache failed)."""
        cache = self._cache
        if cache is None or not self._readable:
            return
        try:
            keys = list(cache.iterkeys())
        except _FAILURES as exc:
            self._failed(exc, "listing")
            return
        for key in keys:
            with contextlib.suppress(ValueError):  # a foreign key in a shared directory: not ours
                yield Locator.parse(key)

    def _current_bytes(self) -> int:
        cache = self._cache
        if cache is None or not self._readable:
            return 0
        try:
            return int(cache.volume())
        except _FAILURES as exc:
            self._failed(exc, "measuring")
            return 0

    @contextlib.contextmanager
    def fetch_lock(self, key: str) -> Iterator[bool]:
        if not self._writable or self.lock_timeout == 0:
            yield False
            return
        stack = contextlib.ExitStack()
        try:
            os.makedirs(self._locks_dir, exist_ok=True)  # in case a clean-up removed it
            acquired = stack.enter_context(block_lock(os.path.join(self._locks_dir, key + ".lock"), self.lock_timeout))
        except OSError as exc:  # cannot even make a lock file: fetch without one
            self._failed(exc, "locking")
            yield False
            return
        with stack:
            if not acquired:
                log.info("block cache %s: gave up waiting %.0fs for another fetch of %s",
                         self.path, self.lock_timeout, key)
            yield acquired

    def close(self) -> None:
        with self._state_lock:
            self._readable = self._writable = False
        self._finalizer()  # writes the hits not yet recorded, closes the index connection
        if self._cache is not None:
            self._cache.close()
